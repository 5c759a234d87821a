"""The native core's stub (native/trackegress_native.pyi) says what the compiled module has: the event kinds'
values, every function and method signature (mypy's stubtest against the built module)."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

from trackegress.room.transport import TrackStats

STUB = Path(__file__).parents[2] / "native" / "trackegress_native.pyi"

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



def test_the_stats_row_is_the_track_stats_fields_in_order() -> None:
    """``TrackStats(*row)`` builds the transport's counters from the native row: same arity, same types in order."""
    alias = next(
        node.value for node in ast.parse(STUB.read_text()).body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "StatsRow"
    )
    assert isinstance(alias, ast.Subscript) and isinstance(alias.slice, ast.Tuple)
    row = [ast.unparse(element) for element in alias.slice.elts]
    fields = [hint.__name__ for hint in typing.get_type_hints(TrackStats).values()]
    assert row == fields
