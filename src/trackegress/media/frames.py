"""Encoded frames as they leave the jitter buffer, and the codecs we record."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Codec(enum.Enum):
    """A track codec we can record, with its RTP clock (its output format: ``media/formats.py``)."""

    OPUS = ("audio/opus", "audio", 48_000)
    VP8 = ("video/vp8", "video", 90_000)
    H264 = ("video/h264", "video", 90_000)

    def __init__(self, mime: str, kind: str, clock_rate: int) -> None:
        self.mime = mime
        self.kind = kind
        self.clock_rate = clock_rate

    @property
    def is_video(self) -> bool:
        return self.kind == "video"

    @classmethod
    def from_mime(cls, mime: str) -> Codec:
        """The codec for a MIME type such as ``video/H264``; ValueError if we cannot record it."""
        for codec in cls:
            if codec.mime == mime.lower():
                return codec
        raise ValueError(f"{mime.lower()} is not yet supported")


@dataclass(slots=True)
class EncodedFrame:
    """One complete encoded frame (an Annex B access unit for H.264).

    ``timestamp`` is the RTP timestamp with 32-bit wraps unwrapped (monotonic in codec clock units);
    ``arrival`` is ``time.monotonic()`` when the frame left the jitter buffer. ``contiguous`` is False when
    media was lost since the previous frame (a delta frame after it may not decode until the next keyframe);
    ``spatial_layer`` / ``temporal_layer`` are the SVC / simulcast layer ids where the codec carries them
    (VP8 temporal, VP9 spatial and temporal), 0 otherwise.
    """

    data: bytes
    timestamp: int
    keyframe: bool
    arrival: float = 0.0
    contiguous: bool = True
    spatial_layer: int = 0
    temporal_layer: int = 0


class TimestampUnwrapper:
    """Turns 32-bit RTP timestamps into a monotonic 64-bit count (handles wrap and small reordering)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, ts: int) -> int:
        if self._last is None:
            self._last = ts
            return ts
        delta = (ts - self._last) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x1_0000_0000
        self._last += delta
        return self._last
