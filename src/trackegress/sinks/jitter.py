"""The WebSocket sink's adaptive jitter buffer: how late audio may be before silence stands in for it.

The sink sends PCM as soon as it is decoded, so jitter never delays audio that is on time. What jitter
can do is make audio late on the real-time timeline; silence then fills in (a dropout) once it is later
than the buffer's depth. The depth adapts: it is the largest of a floor (today's fixed 60 ms), four
times the RFC 3550 interarrival jitter, and the worst lateness seen in the last ``window`` seconds,
each plus a margin, capped at ``ceiling``. A late burst (a retransmission that held packets back, a
scheduling hiccup) widens it at once; it shrinks back to the floor once the network is calm again.
Pure logic: time is passed in.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

JITTER_GAIN = 1 / 16  # RFC 3550 §6.4.1
JITTER_FACTOR = 4.0


@dataclass(slots=True)
class InterarrivalJitter:
    """RFC 3550 §6.4.1 interarrival jitter ``J``, in seconds, from (RTP timestamp, arrival) pairs."""

    clock_rate: int = 48_000
    jitter: float = 0.0
    _last: tuple[int, float] | None = None

    def observe(self, timestamp: int, arrival: float) -> None:
        if self._last is not None:
            last_ts, last_arrival = self._last
            d = (arrival - last_arrival) - (timestamp - last_ts) / self.clock_rate
            self.jitter += (abs(d) - self.jitter) * JITTER_GAIN
        self._last = (timestamp, arrival)


class JitterBuffer:
    """The depth (seconds) by which audio may be late before it is replaced by silence."""

    def __init__(
        self, floor: float = 0.060, ceiling: float = 0.250, margin: float = 0.010, window: float = 10.0
    ) -> None:
        self.floor = floor
        self.ceiling = max(ceiling, floor)
        self.margin = margin
        self.window = window
        self.jitter = InterarrivalJitter()
        self.depth = floor
        self.max_depth = floor
        self._peaks: collections.deque[tuple[float, float]] = collections.deque()  # (second, worst lateness in it)

    def observe(self, timestamp: int, arrival: float, lateness: float) -> float:
        """One frame arrived ``lateness`` seconds after its place on the timeline fell due; the new depth.

        Lateness beyond the ceiling is a discontinuity (a pause, a mute, a stall), not jitter: not kept.
        """
        self.jitter.observe(timestamp, arrival)
        if lateness > self.ceiling:
            lateness = 0.0
        second = float(int(arrival))
        peaks = self._peaks
        while peaks and peaks[0][0] <= second - self.window:
            peaks.popleft()
        if peaks and peaks[-1][0] == second:
            peaks[-1] = (second, max(lateness, peaks[-1][1]))
        else:
            peaks.append((second, lateness))
        worst = max(peak for _, peak in peaks)
        wanted = max(JITTER_FACTOR * self.jitter.jitter, worst) + self.margin
        self.depth = min(self.ceiling, max(self.floor, wanted))
        self.max_depth = max(self.max_depth, self.depth)
        return self.depth
