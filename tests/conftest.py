"""Checks on the suite's own layout."""

from __future__ import annotations

import pytest

LANES = {"cpu", "clock"}  # make test runs the timing tests in these two lanes side by side
# The cpu lane's first tests, while the clock lane runs beside it (about 35 s): these two files take about as long
# and bear the company; the rates compared against a browser come after, the test that spins every core last.
BESIDE_CLOCK_LANE = {"test_signal_resume.py", "test_worker.py"}


def _order(item: pytest.Item) -> int:
    if item.get_closest_marker("saturates_cpus") is not None:
        return 2
    return 0 if item.path.name in BESIDE_CLOCK_LANE else 1


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--lane", choices=sorted(LANES), help="run only the timing tests of this lane, one at a time")


def _lane(item: pytest.Item) -> str | None:
    group = item.get_closest_marker("xdist_group")
    return (group.args or [group.kwargs.get("name")])[0] if group else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every timing test names its lane: one without would land in either lane and break its isolation. Ordered
    for the lanes (``_order``); ``--lane`` keeps one lane's. (Each lane is a pytest process of its own: xdist 3.8's
    ``--dist loadgroup`` no longer groups under pytest 9, whose node ids ignore the ``@group`` suffix it appends.)"""
    items.sort(key=_order)
    for item in items:
        if item.get_closest_marker("timing") is not None and _lane(item) not in LANES:
            raise pytest.UsageError(f"{item.nodeid}: a timing test needs pytest.mark.xdist_group(one of {LANES})")
    lane = config.getoption("--lane")
    if lane is not None:
        other = [item for item in items if _lane(item) != lane]
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if _lane(item) == lane]
