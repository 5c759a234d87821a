#!/usr/bin/env bash
# Installs what `make demo` runs on a fresh Debian machine: ffmpeg, the .venv with the package, livekit-server
# and the native media core (scripts/build-native.sh). Test-only servers: scripts/install-test.sh.
# Fast when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v ffprobe >/dev/null; then
  echo "install: apt ffmpeg"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "install: venv"
  python3.11 -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "install: python packages"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi
# livekit-server v1.13.5 from its Go module, cached outside the clone.
cache="$HOME/.cache/trackegress/livekit-server-v1.13.5"
if [ ! -x "$cache/server" ]; then
  echo "install: building livekit-server v1.13.5 (a few minutes)"
  mkdir -p "$cache"
  CGO_ENABLED=0 GOBIN="$cache" go install github.com/livekit/livekit-server/cmd/server@v1.13.5
fi
mkdir -p .bin && ln -sf "$cache/server" .bin/livekit-server
# The native media core (native/, Rust: str0m + PyO3): built once per source hash, cached in ~/.cache/trackegress/.
bash scripts/build-native.sh
echo "install: ok"
