#!/usr/bin/env bash
# Builds trackegress's native media core (native/: str0m 0.24.0 + PyO3 0.27 + libopus + OpenSSL, packaged by
# maturin: the manylinux abi3 wheel of `make dist`) and installs it into .venv. The wheel is cached by a hash of
# native/'s sources, the Rust toolchain and the Python version in ~/.cache/trackegress/native-<hash>/ (built in a
# temporary directory, then moved there atomically: several clones may install at once), so another clone or
# worktree only runs `pip install`.
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
  # openssl-sys builds OpenSSL from the openssl-src crate (`vendored`: perl and make) and audiopus_sys the libopus
  # it bundles (cmake); both are linked statically.
  if ! command -v perl >/dev/null || ! command -v make >/dev/null || ! command -v cmake >/dev/null; then
    echo "install: apt perl make cmake"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq perl make cmake >/dev/null
  fi
  if [ "$(.venv/bin/maturin --version 2>/dev/null)" != "maturin $maturin_version" ]; then
    "$py" -m pip install -q "maturin==$maturin_version"
  fi
  echo "install: building the native media core (a few minutes the first time)"
  mkdir -p "$root"
  tmp=$(mktemp -d "$root/native-build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # One cargo target directory for every clone: compiled dependencies are reused (cargo locks it while building).
  # The wheel `make dist` ships: manylinux, abi3 (one wheel for Python >= 3.11); maturin checks what it links
  # against the manylinux policy of its tag (the glibc symbol versions this machine's glibc gives it) and fails
  # the build if it links anything that policy does not allow.
  CARGO_TARGET_DIR="$root/native-target" nice -n 10 .venv/bin/maturin build --release --locked \
    --auditwheel check \
    --manifest-path native/Cargo.toml --interpreter "$py" --out "$tmp/wheel" --quiet
  mv -T "$tmp/wheel" "$cache" 2>/dev/null || true  # another install may have finished first: keep that one
fi
"$py" -m pip install -q --force-reinstall --no-deps "$cache"/*.whl
rm -f .venv/.native-* && echo "$cache"/*.whl > "$stamp"  # the stamp names the wheel (scripts/dist.sh copies it)
