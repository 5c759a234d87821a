#!/usr/bin/env bash
# The independent clients of the end-to-end tests: Debian's Chromium with LiveKit's JS client SDK (npm, pinned by
# tests/browser/package-lock.json; Playwright drives it from the venv), and tests/go, a small program on LiveKit's
# Go SDK (server-sdk-go, pinned by tests/go/go.sum), built once into ~/.cache/trackegress/. Fast when present.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/lib/chromium/chromium ]; then
  echo "install: apt chromium"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
browser_stamp=tests/browser/node_modules/.installed-$(sha256sum tests/browser/package-lock.json | cut -c1-16)
if [ ! -f "$browser_stamp" ]; then
  echo "install: livekit-client (npm)"
  npm ci --prefix tests/browser --no-audit --no-fund --silent
  touch "$browser_stamp"
fi
# Keyed by the program's sources and module pins; built into a temporary directory and moved into place, so
# worktrees installing at once never see a half-written binary.
go_hash=$(cat tests/go/go.mod tests/go/go.sum tests/go/*.go | sha256sum | cut -c1-16)
go_cache="$HOME/.cache/trackegress/lkclient-$go_hash"
if [ ! -x "$go_cache/lkclient" ]; then
  echo "install: building tests/go (LiveKit's Go SDK, a few minutes)"
  mkdir -p "$HOME/.cache/trackegress"
  tmp=$(mktemp -d "$HOME/.cache/trackegress/.lkclient-XXXXXX")
  (cd tests/go && CGO_ENABLED=0 nice -n 10 go build -o "$tmp/lkclient" .)
  mv -T "$tmp" "$go_cache" 2>/dev/null || rm -rf "$tmp"
fi
mkdir -p .bin && ln -sf "$go_cache/lkclient" .bin/lkclient
echo "install-clients: ok"
