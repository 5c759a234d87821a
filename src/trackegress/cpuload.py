"""The CPU this process really uses (every thread: the event loop and the media core), measured in the
background: the measured half of admission, as upstream's egress monitor measures its handlers."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

SAMPLE_INTERVAL = 0.5
WINDOW = 2.0  # seconds the measurement averages over; an egress younger than this is not in it yet


class CpuMeter:
    """CPUs (1.0 = one core busy) this process used over the last ``window`` seconds, sampled every 0.5 s
    once ``start`` was called in a running loop."""

    def __init__(
        self, window: float = WINDOW, clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self._window = window
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._reserved: collections.deque[tuple[float, float]] = collections.deque()  # (when, CPUs)
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Sample from now on (idempotent)."""
        if self._timer is None:
            self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sample(self) -> None:
        """Take one (wall, CPU) sample; keep those covering the last ``window`` seconds."""
        now = self._clock()
        self._samples.append((now, self._cpu_clock()))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()

    @property
    def used(self) -> float:
        """CPUs used between the oldest and the newest sample; 0 before two samples."""
        if len(self._samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def reserve(self, cpus: float) -> None:
        """An egress started now: counted at ``cpus`` until the measurement covers it (one window)."""
        self._reserved.append((self._clock(), cpus))

    @property
    def measured(self) -> float:
        """``used`` plus the reservations of egresses too young to show in it."""
        horizon = self._clock() - self._window
        while self._reserved and self._reserved[0][0] <= horizon:
            self._reserved.popleft()
        return self.used + sum(cpus for _, cpus in self._reserved)

    def _tick(self) -> None:
        self.sample()
        self._timer = asyncio.get_running_loop().call_later(SAMPLE_INTERVAL, self._tick)
