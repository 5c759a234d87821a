"""``trackegress --version``: the package's version and what its native core was built with."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

CARGO_LOCK = Path(__file__).resolve().parents[2] / "native" / "Cargo.lock"


def _locked(crate: str) -> str:
    return next(p["version"] for p in tomllib.loads(CARGO_LOCK.read_text())["package"] if p["name"] == crate)


def test_version_names_the_package_the_native_core_str0m_libopus_and_openssl() -> None:
    done = subprocess.run([sys.executable, "-m", "trackegress.cli", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert list(lines) == ["trackegress", "trackegress-native", "str0m", "libopus", "OpenSSL"]
    assert lines["trackegress"] == importlib.metadata.version("trackegress")
    assert lines["trackegress-native"] == importlib.metadata.version("trackegress-native")
    assert lines["str0m"] == _locked("str0m")
    assert lines["libopus"] == f"1.3 (audiopus_sys {_locked('audiopus_sys')})"
    # OpenSSL is built from openssl-src (`vendored`): its version is the one after '+' in the locked crate's.
    assert lines["OpenSSL"].split()[0] == _locked("openssl-src").split("+")[1]
