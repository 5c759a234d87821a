#!/usr/bin/env bash
# `make dist`: into dist/, the project's wheel (pure Python) and the native core's manylinux abi3 wheel (one wheel
# for CPython >= 3.11, OpenSSL and libopus linked in statically: built and checked by scripts/build-native.sh,
# cached by a hash of native/'s sources). Installing both needs neither a Rust toolchain nor cmake (README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-native.sh
native=$(cat .venv/.native-*)
rm -rf dist build  # setuptools would package whatever build/ still holds from an earlier build
mkdir dist
cp "$native" dist/
.venv/bin/pip wheel -q --disable-pip-version-check --no-deps -w dist .
rm -rf build
ls dist
