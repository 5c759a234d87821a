"""CPU admission: what an egress costs here, the CPU this process really uses, and whether one more fits.

``CpuAdmission`` (egress.yaml's ``cpu_cost``) prices an egress by kind and holds the budget; ``CpuMeter`` measures
the process (every thread: the event loop and the media core) in the background, as upstream's egress monitor
measures its handlers, but reads the join/handshake burst of new egresses as the short burst it is.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from livekit.protocol import egress, models

from trackegress.configfile import Section
from trackegress.info import is_ended

SAMPLE_INTERVAL = 0.5
WINDOW = 2.0  # seconds of steady (no egress joining) measurement that cover an egress
LOOKBACK = 30.0  # steady measurements older than this are forgotten

DEFAULT_TRACK_CPU_COST = 0.5  # upstream's (livekit/egress pkg/config/service.go), used when set explicitly
DEFAULT_MAX_CPU_UTILIZATION = 0.8
KINDS = ("audio_file", "video_file", "websocket")
# CPUs one egress of a kind keeps busy, measured with bench/file_egress.py and bench/websocket_egress.py on the
# slower (AMD EPYC) 2-vCPU machine at N=50 (audio 2.2, H.264 720p ~4, WebSocket 6-7.6 ms per track-second), plus
# a third for other machines and for what the measurement of one process misses.
DEFAULT_COSTS = {"audio_file": 0.003, "video_file": 0.005, "websocket": 0.010}
PROCESS_CPUS = 1.0  # one event loop: what one process records with, whatever the host has


def egress_kind(request: egress.TrackEgressRequest, track_type: int | None = None) -> str:
    """``websocket``, ``audio_file`` or ``video_file`` (a file of a track of unknown type counts as video)."""
    if request.WhichOneof("output") == "websocket_url":
        return "websocket"
    return "audio_file" if track_type == models.TrackType.AUDIO else "video_file"


@dataclass(frozen=True)
class CpuAdmission:
    """``cpu_cost`` of egress.yaml for one egress process: an egress is admitted while its cost fits in ``budget``
    twice over: next to what the running egresses are priced at, and next to what the process measurably uses.

    By default an egress costs what it was measured to cost here (``DEFAULT_COSTS``) and a process's budget is what
    one event loop records in real time: ``min(cpus / processes, PROCESS_CPUS) * max_cpu_utilization``. A
    ``track_cpu_cost`` set in the config prices every egress at it, with upstream's budget (the node's CPUs
    ``* max_cpu_utilization``, shared by its processes)."""

    budget: float
    audio_file: float = DEFAULT_COSTS["audio_file"]
    video_file: float = DEFAULT_COSTS["video_file"]
    websocket: float = DEFAULT_COSTS["websocket"]

    @classmethod
    def from_config(cls, raw: Section, cpu_count: int, processes: int = 1) -> CpuAdmission:
        """``cpu_cost: {track_cpu_cost, max_cpu_utilization}`` (upstream's rules for bad values); ``ConfigError``."""
        cpu = raw.section("cpu_cost")
        utilization = cpu.number("max_cpu_utilization")
        utilization = utilization if 0 < utilization <= 1 else DEFAULT_MAX_CPU_UTILIZATION
        track_cost = cpu.number("track_cpu_cost")
        share = cpu_count / max(processes, 1)
        if track_cost > 0:
            return cls(share * utilization, track_cost, track_cost, track_cost)
        return cls(min(share, PROCESS_CPUS) * utilization)

    @staticmethod
    def priced(raw: Section) -> bool:
        """Whether the config sets ``cpu_cost.track_cpu_cost`` (upstream's admission, per node)."""
        return raw.section("cpu_cost").number("track_cpu_cost") > 0

    def cost(self, kind: str) -> float:
        """CPUs an egress of ``kind`` (``KINDS``) is priced at."""
        return float(getattr(self, kind))

    def admits(self, reserved: float, measured: float, cost: float) -> bool:
        """Whether ``cost`` more fits next to ``reserved`` (the running egresses' prices) and next to ``measured``
        (``CpuMeter.measured``). With nothing reserved no egress runs: the process's own baseline does not count
        (upstream admits an idle handler on the whole budget too)."""
        return self._used(reserved, measured) + cost <= self.budget + 1e-9

    def available(self, reserved: float, measured: float) -> dict[str, int]:
        """How many more egresses of each kind would be admitted (each kind alone)."""
        free = self.budget + 1e-9 - self._used(reserved, measured)
        return {kind: max(0, math.floor(free / self.cost(kind))) for kind in KINDS}

    def share(self, reserved: float) -> float:
        """The share of the budget not ``reserved`` (a worker's claim affinity)."""
        return (self.budget - reserved) / self.budget if self.budget > 0 else 0.0

    @staticmethod
    def _used(reserved: float, measured: float) -> float:
        return max(reserved, measured) if reserved > 0 else 0.0


DEFAULT_ADMISSION = CpuAdmission(PROCESS_CPUS * DEFAULT_MAX_CPU_UTILIZATION)


class CpuMeter:
    """CPUs (1.0 = one core busy) this process uses steadily, sampled every 0.5 s once ``start`` was called.

    An interval during which an egress was joining (STARTING: signalling, ICE, DTLS) is a burst, not steady load:
    it is left out. A new egress counts at its price (``reserve``) until ``window`` seconds of steady measurement
    after its join cover it; ``observe`` (an ``EgressManager`` listener) learns when joins end."""

    def __init__(
        self, window: float = WINDOW, clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self._window = window
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._last: tuple[float, float] | None = None
        self._steady: collections.deque[tuple[float, float, float]] = collections.deque()  # (end, seconds, CPU s)
        self._reserved: dict[str, list[float]] = {}  # egress id -> [CPUs, steady seconds seen since]
        self._joining: set[str] = set()
        self._burst = False  # a join was in flight at some point of the current interval
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Sample from now on (idempotent)."""
        if self._timer is None:
            self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def reserve(self, egress_id: str, cpus: float) -> None:
        """Egress ``egress_id`` starts joining now: count it at ``cpus`` until steady measurement covers it."""
        self._reserved[egress_id] = [cpus, 0.0]
        self._joining.add(egress_id)
        self._burst = True

    def joined(self, egress_id: str) -> None:
        """Its join is over (ACTIVE, or ended)."""
        self._joining.discard(egress_id)

    def release(self, egress_id: str) -> None:
        """It ended (or never started): nothing of it is counted any more."""
        self.joined(egress_id)
        self._reserved.pop(egress_id, None)

    def observe(self, info: egress.EgressInfo) -> None:
        """An egress status change (an ``EgressManager`` listener)."""
        if is_ended(info):
            self.release(info.egress_id)
        elif info.status != egress.EgressStatus.EGRESS_STARTING:
            self.joined(info.egress_id)

    def sample(self) -> None:
        """Close the current interval: keep it if it was steady, credit it to the young egresses."""
        now, cpu = self._clock(), self._cpu_clock()
        if self._last is not None and now > self._last[0]:
            seconds, used = now - self._last[0], cpu - self._last[1]
            if not (self._burst or self._joining):
                self._steady.append((now, seconds, used))
                for egress_id, held in list(self._reserved.items()):
                    held[1] += seconds
                    if held[1] >= self._window - 1e-9:
                        del self._reserved[egress_id]
        self._last = (now, cpu)
        self._burst = bool(self._joining)
        while self._steady and (self._steady[0][0] <= now - LOOKBACK
                                or sum(s for _, s, _ in self._steady) - self._steady[0][1] >= self._window - 1e-9):
            self._steady.popleft()

    @property
    def used(self) -> float:
        """CPUs used over the latest ``window`` seconds of steady intervals (0 before any)."""
        seconds = sum(s for _, s, _ in self._steady)
        return sum(c for _, _, c in self._steady) / seconds if seconds > 0 else 0.0

    @property
    def measured(self) -> float:
        """``used`` plus the prices of egresses it does not cover yet."""
        return self.used + sum(cpus for cpus, _ in self._reserved.values())

    def _tick(self) -> None:
        self.sample()
        self._timer = asyncio.get_running_loop().call_later(SAMPLE_INTERVAL, self._tick)
