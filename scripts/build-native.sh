#!/usr/bin/env bash
# Builds trackegress's native media core (native/: str0m 0.24.0 + PyO3 0.27 + libopus, packaged by maturin) and installs
# the wheel into .venv. The wheel is cached by a hash of native/'s sources, the Rust toolchain and the Python
# version in ~/.cache/trackegress/native-<hash>/ (built in a temporary directory, then moved there atomically:
# several clones may install at once), so another clone or worktree only runs `pip install`.
set -euo pipefail
cd "$(dirname "$0")/.."
maturin_version=1.16.0
py=.venv/bin/python
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  echo "build-native: cargo not found: install a Rust toolchain (rustup, Rust >= 1.85) first" >&2
  exit 1
fi
sources=$(cd native && sha256sum Cargo.toml Cargo.lock pyproject.toml trackegress_native.pyi src/*.rs)
hash=$(printf '%s\n%s\n%s\n' "$sources" "$(rustc --version)" "$("$py" -c 'import sys; print(sys.version)')" \
  | sha256sum | cut -c1-16)
stamp=.venv/.native-$hash
[ -f "$stamp" ] && exit 0
root="$HOME/.cache/trackegress"
cache="$root/native-$hash"
if ! compgen -G "$cache/*.whl" >/dev/null; then
  # openssl-sys links the system OpenSSL (str0m's DTLS): it needs the headers and pkg-config; audiopus_sys builds
  # the libopus it bundles with cmake.
  if ! dpkg -s libssl-dev >/dev/null 2>&1 || ! command -v pkg-config >/dev/null || ! command -v cmake >/dev/null; then
    echo "install: apt libssl-dev pkg-config cmake"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config cmake >/dev/null
  fi
  if [ "$(.venv/bin/maturin --version 2>/dev/null)" != "maturin $maturin_version" ]; then
    "$py" -m pip install -q "maturin==$maturin_version"
  fi
  echo "install: building the native media core (a few minutes the first time)"
  mkdir -p "$root"
  tmp=$(mktemp -d "$root/native-build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # One cargo target directory for every clone: compiled dependencies are reused (cargo locks it while building).
  # A wheel for this machine (plain `linux` tag): it links the system's libssl.so.3 instead of bundling it.
  CARGO_TARGET_DIR="$root/native-target" nice -n 10 .venv/bin/maturin build --release --locked \
    --compatibility linux --auditwheel skip \
    --manifest-path native/Cargo.toml --interpreter "$py" --out "$tmp/wheel" --quiet
  mv -T "$tmp/wheel" "$cache" 2>/dev/null || true  # another install may have finished first: keep that one
fi
"$py" -m pip install -q --force-reinstall --no-deps "$cache"/*.whl
rm -f .venv/.native-* && touch "$stamp"
