#!/usr/bin/env bash
# Installs what only the tests need, after what the demo needs (scripts/install.sh): redis-server, tinyproxy,
# MinIO, fake-gcs-server, Azurite, LiveKit's JS server SDK, and the browser / Go clients
# (scripts/install-clients.sh, if present). Fast when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if ! command -v redis-server >/dev/null; then
  echo "install-test: apt redis-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
# nftables: the faults on the links of the multi-host tests (tests/support/netns.py; iproute2 makes the namespaces).
if ! command -v nft >/dev/null; then
  echo "install-test: apt nftables"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null
fi
# tinyproxy, the HTTP forward proxy of the storage e2e tests (proxy_config); tinyproxy-bin is the executable only,
# without the package that starts a system-wide daemon.
if ! command -v tinyproxy >/dev/null; then
  echo "install-test: apt tinyproxy-bin"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tinyproxy-bin >/dev/null
fi
# lk (livekit-cli) is not installed: the Go module proxy refuses github.com/livekit/livekit-cli/v2 (HTTP 403).
# Storage emulators for the storage e2e tests (loopback only): MinIO and fake-gcs-server from their Go modules
# (cached outside the clone, keyed by version), Azurite from npm into .bin/node (3.35.0: the last one for Node 20).
minio_version=v0.0.0-20260212201848-7aac2a2c5b7c
fake_gcs_version=v1.56.1
azurite_version=3.35.0
minio_cache="$HOME/.cache/trackegress/minio-$minio_version"
if [ ! -x "$minio_cache/minio" ]; then
  echo "install-test: building minio $minio_version (a few minutes)"
  mkdir -p "$minio_cache"
  CGO_ENABLED=0 GOBIN="$minio_cache" go install "github.com/minio/minio@$minio_version"
fi
ln -sf "$minio_cache/minio" .bin/minio
gcs_cache="$HOME/.cache/trackegress/fake-gcs-server-$fake_gcs_version"
if [ ! -x "$gcs_cache/fake-gcs-server" ]; then
  echo "install-test: building fake-gcs-server $fake_gcs_version"
  mkdir -p "$gcs_cache"
  CGO_ENABLED=0 GOBIN="$gcs_cache" go install "github.com/fsouza/fake-gcs-server@$fake_gcs_version"
fi
ln -sf "$gcs_cache/fake-gcs-server" .bin/fake-gcs-server
if [ "$(cat .bin/node/azurite.version 2>/dev/null)" != "$azurite_version" ]; then
  echo "install-test: azurite $azurite_version"
  mkdir -p .bin/node
  npm install --prefix .bin/node --save-exact --no-audit --no-fund --silent "azurite@$azurite_version"
  echo "$azurite_version" > .bin/node/azurite.version
fi
# livekit-server-sdk (LiveKit's JS client) for the JS client e2e test, pinned by tests/js/package-lock.json.
js_stamp=tests/js/node_modules/.installed-$(sha256sum tests/js/package-lock.json | cut -c1-16)
if [ ! -f "$js_stamp" ]; then
  echo "install-test: livekit-server-sdk (npm)"
  npm ci --prefix tests/js --no-audit --no-fund --silent
  touch "$js_stamp"
fi
if [ -f scripts/install-clients.sh ]; then
  bash scripts/install-clients.sh
fi
echo "install-test: ok"
