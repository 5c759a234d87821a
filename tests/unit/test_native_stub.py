"""The native core's stub (native/trackegress_native.pyi) says what the compiled module has: the event kinds'
values, every function and method signature (mypy's stubtest against the built module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Stub-only type aliases (the tuples drain() and stats() return) and the compiled submodule the package re-exports.
ALLOWLIST = r"""trackegress_native\.(\w*Event|PeerState|StatsRow)
trackegress_native\.trackegress_native
"""


def test_the_stub_matches_the_built_module(tmp_path: Path) -> None:
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text(ALLOWLIST)
    run = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "trackegress_native", "--allowlist", str(allowlist)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr

