"""Prometheus metrics: live counters read from running egresses, kept after they end."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import generate_latest

from trackegress.ops.metrics import Metrics
from trackegress.room.transport import Reception


@dataclass
class Stats:
    reconnects: int = 0
    frames_lost: int = 0


@dataclass
class Job:
    egress_id: str
    reception: Reception = field(default_factory=Reception)
    bytes_out: int = 0
    stream_stats: Stats | None = None
    layer_switches: int = 0


@dataclass
class Manager:
    jobs: list[Job] = field(default_factory=list)
    room: dict[str, int] | None = None
    accepting: bool = True

    def running(self) -> list[Job]:
        return self.jobs

    def available(self) -> dict[str, int] | None:
        return self.room


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_counters_sum_running_egresses_and_survive_their_end() -> None:
    manager = Manager([
        Job("EG_a", Reception(packets_lost=3, packets_recovered=5), bytes_out=100, layer_switches=2),
        Job("EG_b", Reception(packets_lost=1), 50, Stats(2, 7)),
    ])
    metrics = Metrics()
    metrics.watch(manager)  # type: ignore[arg-type]
    text = scrape(metrics)
    assert "trackegress_egress_active 2.0" in text
    assert "trackegress_packets_lost_total 4.0" in text
    assert "trackegress_packets_recovered_total 5.0" in text
    assert "trackegress_websocket_reconnects_total 2.0" in text
    assert "trackegress_websocket_frames_lost_total 7.0" in text
    assert "trackegress_layer_switches_total 2.0" in text
    manager.jobs = []
    text = scrape(metrics)
    assert "trackegress_egress_active 0.0" in text and "trackegress_packets_lost_total 4.0" in text


def test_how_many_more_egresses_of_each_kind_and_upstreams_gauges() -> None:
    manager = Manager([Job("EG_a")], room={"audio_file": 265, "video_file": 159, "websocket": 0})
    metrics = Metrics()
    metrics.watch(manager)  # type: ignore[arg-type]
    text = scrape(metrics)
    assert 'trackegress_egress_available{kind="audio_file"} 265.0' in text
    assert 'trackegress_egress_available{kind="websocket"} 0.0' in text
    assert "livekit_egress_available 0.0" in text and "livekit_egress_can_accept_request 1.0" in text
    manager.jobs, manager.room = [], dict.fromkeys(("audio_file", "video_file", "websocket"), 0)
    text = scrape(metrics)
    assert "livekit_egress_available 1.0" in text and "livekit_egress_can_accept_request 0.0" in text
    manager.accepting = False  # shutting down: nothing more
    assert "livekit_egress_available 0.0" in scrape(metrics)


def test_websocket_delay_histogram() -> None:
    metrics = Metrics()
    for seconds in (0.004, 0.012, 0.2):
        metrics.observe_delay(seconds)
    text = scrape(metrics)
    assert 'trackegress_websocket_delay_seconds_bucket{le="0.005"} 1.0' in text
    assert 'trackegress_websocket_delay_seconds_bucket{le="0.02"} 2.0' in text
    assert "trackegress_websocket_delay_seconds_count 3.0" in text


def test_no_manager_yet() -> None:
    text = scrape(Metrics())
    assert "trackegress_egress_active 0.0" in text and "trackegress_packets_lost_total 0.0" in text


