#!/usr/bin/env bash
# Runs a command under Python 3.13 in a Debian trixie root (a chroot; the host's apt sources are not touched):
#   scripts/py313.sh WHEEL... -- COMMAND...
# The root is laid once by debootstrap into ~/.cache/trackegress/trixie-root-<hash>/ (hash of the suite and package
# list below); inside it, /opt/venv holds every pinned dependency of pyproject.toml (dev extra included), installed
# again only when pyproject.toml changes, and the given wheels (the project's and the native core's, from
# `make dist`), reinstalled when they change. COMMAND runs in the clone (bind-mounted at its own path) with the
# venv first on PATH, in a private mount namespace (the bind mounts vanish with it) on the host's network; the
# livekit-server the tests use is bind-mounted from the host (a static binary).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
suite=trixie
packages=python3,python3-venv,ffmpeg,ca-certificates
mirror=http://deb.debian.org/debian
cache="$HOME/.cache/trackegress"
root="$cache/$suite-root-$(printf '%s %s %s' "$suite" "$packages" "$mirror" | sha256sum | cut -c1-12)"
wheels=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do wheels+=("$(realpath "$1")"); shift; done
[ $# -gt 1 ] || { echo "usage: scripts/py313.sh WHEEL... -- COMMAND..." >&2; exit 2; }
shift

mkdir -p "$cache"
exec 9>"$root.lock"
flock 9  # one clone at a time lays the root or changes its venv

if [ ! -x "$root/usr/bin/python3.13" ]; then
  if ! command -v debootstrap >/dev/null; then
    echo "py313: apt debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  echo "py313: debootstrap $suite ($packages) into $root (a few minutes, once)"
  tmp=$(mktemp -d "$cache/$suite-root.XXXXXX")
  trap 'rm -rf --one-file-system "$tmp"' EXIT
  # In a mount namespace of its own: what debootstrap mounts in the new root (proc, sys) goes away with it.
  unshare --mount --propagation private debootstrap --variant=minbase --include="$packages" \
    "$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1 || { tail -20 "$tmp.log" >&2; exit 1; }
  rm -f "$tmp.log"
  mv -T "$tmp" "$root"
  trap - EXIT
fi

# Runs "$@" (a shell script and its arguments) as root inside the root, with the clone and livekit-server bound in.
in_root() {
  local server
  server=$(readlink -f .bin/livekit-server 2>/dev/null || true)
  cp /etc/resolv.conf /etc/hosts "$root/etc/"
  # The host's CA bundle: pip inside reaches the package registry the way the host's does (its CAs included).
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca-certificates.crt"
  unshare --mount --propagation private bash -euo pipefail -c '
    root=$1 repo=$2 server=$3; shift 3
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs tmpfs "$root/tmp"
    mkdir -p "$root$repo" && mount --bind "$repo" "$root$repo"
    if [ -x "$server" ]; then
      mkdir -p "$root$(dirname "$server")" && mount --bind -o ro "$(dirname "$server")" "$root$(dirname "$server")"
    fi
    exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/opt/venv/bin:/usr/bin:/bin \
      CI="${CI:-}" PYTHONDONTWRITEBYTECODE=1 SSL_CERT_FILE=/etc/ssl/certs/host-ca-certificates.crt \
      PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt bash -euo pipefail -c "cd \"$repo\" && $1" bash "${@:2}"
  ' bash "$root" "$repo" "$server" "$@"
}

deps_stamp=/opt/venv/.deps-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$root$deps_stamp" ]; then
  echo "py313: the pinned dependencies into /opt/venv (Python $(chroot "$root" python3 -V | cut -d' ' -f2))"
  in_root '
    [ -x /opt/venv/bin/python ] || python3 -m venv /opt/venv
    python - >/tmp/requirements.txt <<EOF
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["dev"]))
EOF
    python -m pip install -q --disable-pip-version-check -r /tmp/requirements.txt
    rm -f /opt/venv/.deps-* && touch "$1"' "$deps_stamp"
fi
if [ ${#wheels[@]} -gt 0 ]; then
  wheels_stamp=/opt/venv/.wheels-$(cat "${wheels[@]}" | sha256sum | cut -c1-16)
  if [ ! -f "$root$wheels_stamp" ]; then
    echo "py313: installing ${wheels[*]##*/}"
    in_root 'python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "${@:2}"
      rm -f /opt/venv/.wheels-* && touch "$1"' "$wheels_stamp" "${wheels[@]}"
  fi
fi
flock -s 9  # shared while COMMAND runs: no other clone changes the venv under it
in_root '"$@"' "$@"
