"""Checks on the suite's own layout."""

from __future__ import annotations

import pytest

LANES = {"cpu", "clock"}  # make test runs the timing tests in these two lanes side by side


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every timing test names its lane: one without would land in either lane and break its isolation. The tests
    that saturate the CPUs go last, after the clock lane's deadline tests (about 35 s) are done."""
    items.sort(key=lambda item: item.get_closest_marker("saturates_cpus") is not None)
    for item in items:
        if item.get_closest_marker("timing") is None:
            continue
        group = item.get_closest_marker("xdist_group")
        lane = (group.args or [group.kwargs.get("name")])[0] if group else None
        if lane not in LANES:
            raise pytest.UsageError(f"{item.nodeid}: a timing test needs pytest.mark.xdist_group(one of {LANES})")
