"""CPU admission: prices per kind, the budget, and the process CPU meter that reads a join burst as a burst."""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit.protocol import egress, models

from trackegress.config import load_service_config
from trackegress.configfile import Section
from trackegress.cpuload import DEFAULT_COSTS, CpuAdmission, CpuMeter, egress_kind

Status = egress.EgressStatus


class Clocks:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def advance(self, seconds: float, cpus: float) -> None:
        self.wall += seconds
        self.cpu += seconds * cpus


def meter_on(clocks: Clocks) -> CpuMeter:
    meter = CpuMeter(window=2.0, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    meter.sample()
    return meter


def run(meter: CpuMeter, clocks: Clocks, seconds: float, cpus: float) -> None:
    for _ in range(round(seconds / 0.5)):
        clocks.advance(0.5, cpus)
        meter.sample()


def status(egress_id: str, value: int) -> egress.EgressInfo:
    return egress.EgressInfo(egress_id=egress_id, status=value)  # type: ignore[arg-type]


def test_the_meter_averages_the_last_window() -> None:
    clocks = Clocks()
    meter = meter_on(clocks)
    assert meter.used == 0.0  # one sample: nothing measured yet
    run(meter, clocks, 4, 0.5)
    assert meter.used == pytest.approx(0.5)
    run(meter, clocks, 2, 1.5)  # the window forgets the quieter past
    assert meter.used == pytest.approx(1.5)


def test_a_join_burst_is_not_read_as_steady_load() -> None:
    """150 egresses join at once: 1.6 CPUs for the second of their handshakes, then 0.3 CPUs steadily."""
    clocks = Clocks()
    meter = meter_on(clocks)
    run(meter, clocks, 2, 0.01)
    for n in range(150):
        meter.reserve(f"EG_{n}", 0.003)
    run(meter, clocks, 1, 1.6)
    assert meter.used == pytest.approx(0.01)  # the burst is left out
    assert meter.measured == pytest.approx(0.01 + 150 * 0.003)  # the young egresses at their price
    for n in range(150):
        meter.observe(status(f"EG_{n}", Status.EGRESS_ACTIVE))
    run(meter, clocks, 0.5, 1.0)  # the interval in which the joins ended is still a burst
    run(meter, clocks, 1.5, 0.3)
    steady = (0.5 * 0.01 + 1.5 * 0.3) / 2  # the latest 2 s of steady intervals: before and after the burst
    assert meter.measured == pytest.approx(steady + 150 * 0.003)  # 1.5 s steady after the joins: not covered yet
    run(meter, clocks, 0.5, 0.3)
    assert meter.measured == pytest.approx(0.3)  # two steady seconds cover them: measured alone


def test_an_ended_egress_is_no_longer_counted() -> None:
    clocks = Clocks()
    meter = meter_on(clocks)
    meter.reserve("EG_a", 0.5)
    meter.observe(status("EG_a", Status.EGRESS_FAILED))
    assert meter.measured == 0.0


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


def test_default_admission_prices_each_kind_and_fills_one_event_loop() -> None:
    admission = CpuAdmission.from_config(Section({}), cpu_count=16, processes=1)
    assert admission.budget == pytest.approx(0.8)  # one process records on one core, whatever the host has
    assert admission.available(reserved=0.0, measured=0.0) == {
        kind: int(0.8 / cost + 1e-6) for kind, cost in DEFAULT_COSTS.items()}
    assert admission.available(0.0, 0.0)["audio_file"] >= 150
    assert CpuAdmission.from_config(Section({}), cpu_count=2, processes=4).budget == pytest.approx(0.4)


def test_an_explicit_track_cpu_cost_rules_with_upstreams_budget() -> None:
    raw = Section({"cpu_cost": {"track_cpu_cost": 0.5, "max_cpu_utilization": 0.8}})
    admission = CpuAdmission.from_config(raw, cpu_count=2)
    assert (admission.budget, admission.audio_file, admission.websocket) == (pytest.approx(1.6), 0.5, 0.5)
    assert admission.admits(reserved=1.0, measured=0.1, cost=0.5)
    assert not admission.admits(reserved=1.5, measured=0.1, cost=0.5)
    assert not admission.admits(reserved=0.5, measured=1.2, cost=0.5)  # a busy process takes nothing more
    assert admission.available(reserved=0.5, measured=0.1) == dict.fromkeys(DEFAULT_COSTS, 2)


def test_processes_default_to_one_per_core_or_one_with_an_explicit_price() -> None:
    base = "api_key: k\napi_secret: s\nws_url: ws://h\n"
    assert load_service_config(env={"EGRESS_CONFIG_BODY": base + "processes: 3\n"}).processes == 3
    priced = load_service_config(env={"EGRESS_CONFIG_BODY": base + "cpu_cost: {track_cpu_cost: 0.5}\n"})
    assert (priced.processes, priced.admission.audio_file) == (1, 0.5)


def test_an_idle_process_admits_on_the_whole_budget() -> None:
    admission = CpuAdmission(budget=1.0, audio_file=1.0, video_file=1.0, websocket=1.0)  # one egress fills it
    assert admission.admits(reserved=0.0, measured=0.003, cost=1.0)  # the process's own baseline is no egress's
    assert not admission.admits(reserved=1.0, measured=0.003, cost=1.0)


def test_the_kind_of_an_egress() -> None:
    websocket = egress.TrackEgressRequest(websocket_url="ws://x")
    file = egress.TrackEgressRequest(file=egress.DirectFileOutput(filepath="a"))
    assert egress_kind(websocket, models.TrackType.AUDIO) == "websocket"
    assert egress_kind(file, models.TrackType.AUDIO) == "audio_file"
    assert egress_kind(file, models.TrackType.VIDEO) == egress_kind(file) == "video_file"  # unknown: the dearer
