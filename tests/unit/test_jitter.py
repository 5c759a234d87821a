"""The WebSocket sink's adaptive jitter buffer, driven by synthetic arrival traces through ``PcmClock``."""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_pcm import BASE_TS, in_order, ramp, values

from trackegress.sinks.jitter import InterarrivalJitter, JitterBuffer
from trackegress.sinks.pcm import CHUNK_SAMPLES, PcmClock

FRAME = 0.020
TICK = 0.002  # how often the sink's real-time clock checks (it wakes at the clock's deadline; finer here)
NETWORK = 0.005  # transit time without jitter


def uniform_jitter(frames: int, spread: float, seed: int) -> list[float]:
    """Arrival times with ``spread`` of uniform jitter on top of the transit, order kept (as a real path)."""
    rng = random.Random(seed)
    arrivals, last = [], 0.0
    for k in range(frames):
        last = max(last, k * FRAME + NETWORK + rng.random() * spread)
        arrivals.append(last)
    return arrivals


def held_bursts(frames: int, every: int, hold: float) -> list[float]:
    """Every ``every``-th frame is ``hold`` late and those behind it wait for it (a retransmitted packet)."""
    arrivals, last = [], 0.0
    for k in range(frames):
        at = k * FRAME + NETWORK + (hold if k % every == every // 2 else 0.0)
        last = max(last, at)
        arrivals.append(last)
    return arrivals


class Run:
    """Plays an arrival trace into a clock; keeps what a receiver would get and when."""

    def __init__(self, arrivals: list[float], clock: PcmClock | None = None) -> None:
        self.clock = clock or PcmClock()
        self.chunks: list[bytes] = []
        self.delays: list[float] = []  # per chunk: sent minus when its audio left the SFU (no jitter)
        self.depths: list[float] = []
        now, frames = 0.0, iter(enumerate(arrivals))
        pending = next(frames, None)
        while pending is not None:
            k, at = pending
            if at <= now:
                self._out(self.clock.push(BASE_TS + k * 960, ramp(BASE_TS + k * 960), now), now)
                self.depths.append(self.clock.buffer.depth)
                pending = next(frames, None)
                continue
            now = min(now + TICK, at)
            self._out(self.clock.tick(now), now)

    def _out(self, chunks: list[bytes], now: float) -> None:
        for chunk in chunks:
            position = len(self.chunks) * CHUNK_SAMPLES / 48_000
            self.delays.append(now - position - NETWORK)
            self.chunks.append(chunk)

    @property
    def dropouts(self) -> int:
        """10 ms chunks with silence in them (the trace has no gaps: any zero is a dropout)."""
        return sum(bool((values([chunk]) == 0).any()) for chunk in self.chunks)

    def delay_p99(self) -> float:
        return float(np.percentile(self.delays, 99))


def test_rfc3550_jitter_estimate() -> None:
    steady = InterarrivalJitter()
    for k in range(100):
        steady.observe(k * 960, 1.0 + k * FRAME)
    assert steady.jitter == pytest.approx(0.0, abs=1e-12)
    alternating = InterarrivalJitter()
    for k in range(500):
        alternating.observe(k * 960, k * FRAME + (0.005 if k % 2 else 0.0))
    assert alternating.jitter == pytest.approx(0.005, rel=1e-6)  # |D| = 5 ms every time


def test_without_jitter_the_depth_stays_at_the_floor_and_audio_leaves_at_once() -> None:
    run = Run([k * FRAME + NETWORK for k in range(1500)])
    assert max(run.depths) == pytest.approx(0.060)
    assert run.dropouts == 0
    assert max(run.delays) <= FRAME + 1e-9  # a 20 ms frame's second 10 ms chunk waits for nothing but the frame
    assert in_order(values(run.chunks))


@pytest.mark.parametrize("seed", range(5))
def test_30ms_of_jitter_makes_no_dropouts_and_delay_stays_under_60ms(seed: int) -> None:
    run = Run(uniform_jitter(3000, 0.030, seed))  # a minute of audio
    assert run.dropouts == 0
    assert run.delay_p99() <= 0.060
    assert in_order(values(run.chunks))
    assert len(run.chunks) == 6000


def test_jitter_beyond_the_floor_widens_the_buffer_and_drops_out_less_than_a_fixed_one() -> None:
    fixed = adaptive = 0
    for seed in range(6):
        arrivals = uniform_jitter(3000, 0.120, seed)
        fixed_run, adaptive_run = Run(arrivals, _fixed_clock()), Run(arrivals)
        fixed += fixed_run.dropouts
        adaptive += adaptive_run.dropouts
        assert 0.100 < max(adaptive_run.depths) <= 0.250
        assert not any((values([c]) == 0).any() for c in adaptive_run.chunks[100:])  # none after the first second
    assert adaptive < fixed


def test_a_late_burst_is_learnt_from_once() -> None:
    run = Run(held_bursts(1500, every=100, hold=0.150))  # 150 ms hold every 2 s (a retransmission's wait)
    late = [i for i, c in enumerate(run.chunks) if (values([c]) == 0).any()]
    assert late and max(late) < 200  # only at the first burst (1 s in)
    assert max(run.depths) >= 0.150


def test_the_depth_shrinks_back_once_the_network_is_calm() -> None:
    arrivals = uniform_jitter(500, 0.060, seed=2)  # 10 s jittery
    arrivals += [max(arrivals[-1], k * FRAME + NETWORK) for k in range(500, 1500)]  # then 20 s calm
    run = Run(arrivals)
    assert max(run.depths[:500]) > 0.080
    assert run.depths[-1] == pytest.approx(0.060)


def test_a_discontinuity_is_not_taken_for_jitter() -> None:
    buffer = JitterBuffer()
    buffer.observe(0, 0.0, 0.0)
    buffer.observe(960, 5.0, 4.98)  # 5 s late: a mute or a stall, not jitter
    calm = [buffer.observe(960 * k, 5.0 + k * FRAME, 0.0) for k in range(2, 200)]
    assert calm[-1] == pytest.approx(0.060)


def _fixed_clock() -> PcmClock:
    """Today's clock: a fixed 60 ms."""
    clock = PcmClock()
    clock.buffer.ceiling = clock.buffer.floor
    return clock
