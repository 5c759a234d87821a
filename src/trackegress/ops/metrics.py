"""Prometheus metrics: ``trackegress_*`` counters and gauges, ``GET /metrics`` on ``prometheus_port``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aiohttp import web
from livekit.protocol import egress
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trackegress.info import is_ended
from trackegress.manager import EgressManager, Runner

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Capacity = Callable[[], "dict[str, int] | None"]  # how many more egresses of each kind would be admitted now


class Metrics(Collector):
    """``trackegress_*`` metrics in a registry of their own; ``observe`` is an EgressManager listener."""

    def __init__(self) -> None:
        self._manager: EgressManager | None = None
        self._capacity: Capacity | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self._started = Counter("trackegress_egress_started", "Egresses started", registry=self.registry)
        self._ended = Counter(
            "trackegress_egress_ended", "Egresses ended, by final status", ["status"], registry=self.registry
        )
        self._webhooks_dropped = Counter(
            "trackegress_webhooks_dropped", "Webhook events given up: undeliverable, failed, or out of a full queue",
            registry=self.registry,
        )
        self._delay = Histogram(
            "trackegress_websocket_delay_seconds", "From RTP arrival to the PCM message sent on the WebSocket",
            buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=self.registry,
        )
        self._ended_bytes = 0
        # per egress, last seen: packets lost, reconnects, frames lost, layer switches
        self._seen: dict[str, tuple[int, int, int, int, int]] = {}
        self.registry.register(self)

    def watch(self, manager: EgressManager, capacity: Capacity | None = None) -> None:
        """Read live values (active egresses, bytes, packets lost) from ``manager`` at scrape time, and the room left
        from ``capacity`` (default: ``manager.available``)."""
        self._manager = manager
        self._capacity = capacity or manager.available

    def webhook_dropped(self) -> None:
        """One webhook event given up (a ``WebhookSender`` ``on_drop`` callback)."""
        self._webhooks_dropped.inc()

    def observe_delay(self, seconds: float) -> None:
        """One PCM message's delay (an ``Egress`` ``on_delay`` callback)."""
        self._delay.observe(seconds)

    def observe(self, info: egress.EgressInfo) -> None:
        """Count a status change."""
        if info.status == egress.EgressStatus.EGRESS_STARTING:
            self._started.inc()
        elif is_ended(info):
            self._ended.labels(egress.EgressStatus.Name(info.status)).inc()
            self._ended_bytes += sum(f.size for f in info.file_results)

    def collect(self) -> Iterator[Metric]:
        """Live values read from the running egresses at scrape time."""
        running = self._manager.running() if self._manager is not None else []
        yield GaugeMetricFamily("trackegress_egress_active", "Egresses running now", value=len(running))
        yield from self._available(len(running))
        written = self._ended_bytes + sum(job.bytes_out for job in running)
        yield CounterMetricFamily("trackegress_bytes_written", "Bytes written to files and streams", value=written)
        self._seen.update((job.egress_id, _counts(job)) for job in running)
        totals = [sum(column) for column in zip(*self._seen.values(), strict=True)] or [0, 0, 0, 0, 0]
        packets_lost, packets_recovered, reconnects, frames_lost, layer_switches = totals
        yield CounterMetricFamily("trackegress_packets_lost", "RTP packets never received", value=packets_lost)
        yield CounterMetricFamily(
            "trackegress_packets_recovered", "RTP packets missing at first, then repaired by RTX or RED",
            value=packets_recovered,
        )
        yield CounterMetricFamily("trackegress_websocket_reconnects", "WebSocket receivers redialled", value=reconnects)
        yield CounterMetricFamily(
            "trackegress_websocket_frames_lost", "10 ms PCM messages the receiver did not confirm", value=frames_lost
        )
        yield CounterMetricFamily(
            "trackegress_layer_switches", "Picture size changes in recordings (simulcast/SVC layer switches)",
            value=layer_switches,
        )

    def _available(self, running: int) -> Iterator[Metric]:
        """How many more egresses of each kind would be admitted, and upstream's gauges for autoscalers."""
        available = self._capacity() if self._capacity is not None else None
        if available is None:
            return
        accepting = self._manager is None or self._manager.accepting
        gauge = GaugeMetricFamily("trackegress_egress_available", "More egresses of this kind that would be "
                                  "admitted now (each kind alone)", labels=["kind"])
        for kind, count in available.items():
            gauge.add_metric([kind], count if accepting else 0)
        yield gauge
        idle = accepting and running == 0
        yield GaugeMetricFamily("livekit_egress_available", "1 when idle (upstream's)", value=int(idle))
        can_accept = accepting and any(available.values())
        yield GaugeMetricFamily("livekit_egress_can_accept_request", "1 when one more egress would be admitted",
                                value=int(can_accept))

    def app(self) -> web.Application:
        """``GET /metrics`` in Prometheus' text format."""
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": METRICS_TYPE})


def _counts(job: Runner) -> tuple[int, int, int, int, int]:
    stats, reception = job.stream_stats, job.reception
    return (
        reception.packets_lost, reception.packets_recovered, stats.reconnects if stats else 0,
        stats.frames_lost if stats else 0, job.layer_switches,
    )
