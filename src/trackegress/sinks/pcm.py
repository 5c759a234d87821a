"""Continuous PCM timeline for the WebSocket sink: decoded audio placed by RTP timestamp, cut into 10 ms.

Pure logic (no I/O, time passed in): ``PcmClock`` fills gaps, keeps silence flowing in real time while
no media arrives, never emits a sample twice or out of order; ``PcmConverter`` turns its 48 kHz stereo
chunks into 10 ms messages of the requested rate/channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from trackegress.sinks.jitter import JitterBuffer

SAMPLE_RATE = 48_000  # Opus RTP clock: one timestamp unit per sample frame
CHANNELS = 2
FRAME_BYTES = 2 * CHANNELS  # one interleaved s16le stereo sample frame
CHUNK_SAMPLES = SAMPLE_RATE // 100  # 10 ms
CHUNK_BYTES = CHUNK_SAMPLES * FRAME_BYTES  # 1920
SAMPLE_RATES = (8_000, 16_000, 24_000, 48_000)


@dataclass(slots=True)
class ClockStats:
    """What the clock did, in frames pushed and 48 kHz samples."""

    frames: int = 0
    dropped_frames: int = 0  # entirely behind what was already placed
    trimmed_samples: int = 0  # head of a frame overlapping what was already placed
    gap_samples: int = 0  # zeros for timestamp gaps (lost packets, DTX)
    stall_samples: int = 0  # zeros emitted by the real-time clock (no media)
    resyncs: int = 0  # timestamp mapping moved (media resumed behind the silence, or a jump)


class PcmClock:
    """Places (RTP timestamp, PCM) on a gapless 48 kHz stereo timeline and emits whole 10 ms chunks.

    Position 0 is the first frame; its arrival anchors the wall clock. A frame ahead of the timeline
    gets zeros before it; one behind is trimmed or dropped. ``tick`` emits zeros when the timeline
    is late on the wall clock by more than the jitter buffer's depth (``late_allowance`` or more, adapted
    to the measured jitter: ``sinks/jitter.py``); media that resumes behind those zeros
    is re-anchored right after them. A jump further than ``max_lead`` ahead of the wall clock is
    treated as a discontinuity.
    """

    def __init__(self, *, late_allowance: float = 0.060, max_lead: float = 1.0) -> None:
        self.buffer = JitterBuffer(floor=late_allowance)
        self._allowance = round(late_allowance * SAMPLE_RATE)
        self._max_lead = round(max_lead * SAMPLE_RATE)
        self._pending = bytearray()  # placed but not yet a whole chunk
        self._end = 0  # samples placed on the timeline (emitted + pending)
        self._offset: int | None = None  # RTP timestamp of timeline position 0
        self._t0 = 0.0  # wall time of timeline position 0
        self._silence_since_frame = False
        self.frame_position = 0  # where the last placed frame's audio starts
        self.stats = ClockStats()

    @property
    def started(self) -> bool:
        return self._offset is not None

    @property
    def position(self) -> int:
        """Samples placed on the timeline so far."""
        return self._end

    @property
    def emitted(self) -> int:
        """Samples emitted as whole chunks so far: where the next chunk returned starts."""
        return self._end - len(self._pending) // FRAME_BYTES

    def push(self, timestamp: int, pcm: bytes, now: float) -> list[bytes]:
        """Place one decoded frame; returns the chunks that became complete."""
        if len(pcm) % FRAME_BYTES:
            raise ValueError(f"PCM length {len(pcm)} is not whole stereo s16 frames")
        if self._offset is None:
            self._offset, self._t0 = timestamp - self._end, now
        pos = timestamp - self._offset
        self._adapt(timestamp, pos, now)
        if pos < self._end:
            pcm = self._resolve_overlap(timestamp, pcm, pos)
            if not pcm:
                return []
            pos = self._end
        elif pos > self._end:
            pos = self._limit_gap(timestamp, pos, now)
            self.stats.gap_samples += pos - self._end
        self.stats.frames += 1
        self._silence_since_frame = False
        self.frame_position = pos
        self._place(pos - self._end, pcm)
        return self._cut()

    def tick(self, now: float) -> list[bytes]:
        """Zeros up to the wall clock (minus the allowance) if media is late; [] otherwise."""
        if self._offset is None:
            return []
        target = self._expected(now) - self._allowance
        if target <= self._end:
            return []
        fill = -(-target // CHUNK_SAMPLES) * CHUNK_SAMPLES
        self.stats.stall_samples += fill - self._end
        self._silence_since_frame = True
        self._place(fill - self._end, b"")
        return self._cut()

    def deadline(self) -> float | None:
        """Wall time after which ``tick`` emits zeros (None before the first frame)."""
        if self._offset is None:
            return None
        return self._t0 + (self._end + self._allowance) / SAMPLE_RATE

    def flush(self) -> list[bytes]:
        """The pending partial chunk padded with zeros (at the end of the stream)."""
        if not self._pending:
            return []
        pad = CHUNK_SAMPLES - len(self._pending) // FRAME_BYTES
        self._place(pad, b"")
        return self._cut()

    def _adapt(self, timestamp: int, pos: int, now: float) -> None:
        """Size the jitter buffer (how late media may be before zeros fill in) from this frame's arrival."""
        depth = self.buffer.observe(timestamp, now, now - self._t0 - pos / SAMPLE_RATE)
        self._allowance = round(depth * SAMPLE_RATE)

    def _expected(self, now: float) -> int:
        return int((now - self._t0) * SAMPLE_RATE)

    def _rebase(self, timestamp: int, pos: int) -> None:
        self._offset = timestamp - pos
        self.stats.resyncs += 1

    def _resolve_overlap(self, timestamp: int, pcm: bytes, pos: int) -> bytes:
        """A frame starting before the timeline end: resync after silence, else trim or drop it."""
        if self._silence_since_frame:
            self._rebase(timestamp, self._end)
            return pcm
        skip = (self._end - pos) * FRAME_BYTES
        if skip >= len(pcm):
            self.stats.dropped_frames += 1
            return b""
        self.stats.trimmed_samples += self._end - pos
        return pcm[skip:]

    def _limit_gap(self, timestamp: int, pos: int, now: float) -> int:
        """The frame's position, unless the gap runs too far ahead of the wall clock (a jump)."""
        if pos <= max(self._end, self._expected(now) + self._max_lead):
            return pos
        pos = max(self._end, self._expected(now))
        self._rebase(timestamp, pos)
        return pos

    def _place(self, zeros: int, pcm: bytes) -> None:
        self._pending += bytes(zeros * FRAME_BYTES)
        self._pending += pcm
        self._end += zeros + len(pcm) // FRAME_BYTES

    def _cut(self) -> list[bytes]:
        whole = len(self._pending) // CHUNK_BYTES * CHUNK_BYTES
        if not whole:
            return []
        data = bytes(self._pending[:whole])
        del self._pending[:whole]
        return [data[i : i + CHUNK_BYTES] for i in range(0, whole, CHUNK_BYTES)]


def validate_format(sample_rate: int, channels: int) -> None:
    """ValueError unless the output format is one we offer."""
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"invalid sample_rate {sample_rate}: expected one of {SAMPLE_RATES}")
    if channels not in (1, 2):
        raise ValueError(f"invalid channels {channels}: expected 1 or 2")


class PcmConverter:
    """Turns 48 kHz stereo 10 ms chunks into 10 ms s16le messages at ``sample_rate``/``channels``.

    Identity for 48 kHz stereo; otherwise libswresample (``av.AudioResampler``, which downmixes
    stereo to mono by averaging). The resampler's filter delay is pre-padded with zeros so that
    every input chunk yields exactly one message at once; its tail is dropped on flush.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, channels: int = CHANNELS) -> None:
        validate_format(sample_rate, channels)
        self.sample_rate = sample_rate
        self.channels = channels
        self.message_bytes = sample_rate // 100 * channels * 2
        self._resampler: av.AudioResampler | None = None
        if (sample_rate, channels) != (SAMPLE_RATE, CHANNELS):
            layout = "stereo" if channels == 2 else "mono"
            self._resampler = av.AudioResampler(format="s16", layout=layout, rate=sample_rate)
        self._buffer = bytearray()
        self._primed = False

    @property
    def bytes_per_second(self) -> int:
        return self.message_bytes * 100

    def convert(self, chunk: bytes) -> list[bytes]:
        """Messages for one 1920-byte chunk (exactly one once primed)."""
        if self._resampler is None:
            return [chunk]
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(chunk, dtype="<i2").reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = SAMPLE_RATE
        out = b"".join(f.to_ndarray().tobytes() for f in self._resampler.resample(frame))
        if not self._primed:
            self._primed = True
            self._buffer += bytes(max(0, self.message_bytes - len(out)))
        self._buffer += out
        return self._cut()

    def flush(self) -> list[bytes]:
        """What is left, padded to a whole message."""
        if not self._buffer:
            return []
        self._buffer += bytes(-len(self._buffer) % self.message_bytes)
        return self._cut()

    def _cut(self) -> list[bytes]:
        size = self.message_bytes
        whole = len(self._buffer) // size * size
        messages = [bytes(self._buffer[i : i + size]) for i in range(0, whole, size)]
        del self._buffer[:whole]
        return messages
