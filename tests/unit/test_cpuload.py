"""The process CPU meter behind measured admission."""

from __future__ import annotations

import asyncio
import time

import pytest

from trackegress.cluster.settings import CpuAdmission
from trackegress.cpuload import CpuMeter


class Clocks:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def advance(self, seconds: float, cpus: float) -> None:
        self.wall += seconds
        self.cpu += seconds * cpus


def test_the_meter_averages_the_last_window() -> None:
    clocks = Clocks()
    meter = CpuMeter(window=2.0, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    meter.sample()
    assert meter.used == 0.0  # one sample: nothing measured yet
    for _ in range(8):  # 4 s at half a core
        clocks.advance(0.5, 0.5)
        meter.sample()
    assert meter.used == pytest.approx(0.5)
    for _ in range(4):  # then 2 s at 1.5 cores: the window forgets the quieter past
        clocks.advance(0.5, 1.5)
        meter.sample()
    assert meter.used == pytest.approx(1.5)


async def test_the_meter_sees_a_busy_process() -> None:
    meter = CpuMeter(window=0.6)
    meter.start()
    began, cpu = time.monotonic(), time.process_time()
    deadline = began + 0.8
    while time.monotonic() < deadline:  # keep this thread busy, with short yields so the meter's timer runs
        sum(range(20_000))
        await asyncio.sleep(0)
    meter.stop()
    got = (time.process_time() - cpu) / (time.monotonic() - began)  # what the process got (other tests run too)
    assert got > 0.1 and meter.used == pytest.approx(got, rel=0.35), (meter.used, got)


def test_admission_needs_room_next_to_the_reserved_and_the_measured() -> None:
    admission = CpuAdmission(track_cpu_cost=0.5, max_cpu_utilization=0.8, cpu_count=2)  # budget 1.6
    assert admission.admits(running=2, measured=0.1)  # 1.0 reserved + 0.5
    assert not admission.admits(running=3, measured=0.1)  # 1.5 reserved + 0.5 > 1.6
    assert not admission.admits(running=1, measured=1.2)  # a busy process takes nothing more


def test_an_idle_process_admits_on_the_whole_budget() -> None:
    admission = CpuAdmission(track_cpu_cost=1.0, max_cpu_utilization=0.5, cpu_count=2)  # one egress fills it
    assert admission.admits(running=0, measured=0.003)  # the process's own baseline is not an egress's
    assert not admission.admits(running=1, measured=0.003)


def test_a_young_egress_counts_at_its_reservation_until_the_window_covers_it() -> None:
    clocks = Clocks()
    meter = CpuMeter(window=2.0, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    meter.sample()
    clocks.advance(0.5, 0.1)
    meter.sample()
    meter.reserve(0.5)
    assert meter.measured == pytest.approx(0.6)
    clocks.advance(2.0, 0.1)
    meter.sample()
    assert meter.measured == pytest.approx(0.1)  # the measurement holds it now
