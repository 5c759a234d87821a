"""Encoded frames as the media transport hands them over, and the codecs we record."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Codec(enum.Enum):
    """A track codec we can record, with its RTP clock (its output format: ``media/formats.py``)."""

    OPUS = ("audio/opus", "audio", 48_000)
    PCMU = ("audio/pcmu", "audio", 8_000)  # G.711 mu-law, mono
    PCMA = ("audio/pcma", "audio", 8_000)  # G.711 A-law, mono
    VP8 = ("video/vp8", "video", 90_000)
    VP9 = ("video/vp9", "video", 90_000)
    AV1 = ("video/av1", "video", 90_000)
    H264 = ("video/h264", "video", 90_000)
    H265 = ("video/h265", "video", 90_000)

    def __init__(self, mime: str, kind: str, clock_rate: int) -> None:
        self.mime = mime
        self.kind = kind
        self.clock_rate = clock_rate

    @property
    def is_video(self) -> bool:
        return self.kind == "video"

    @property
    def is_g711(self) -> bool:
        return self in (Codec.PCMU, Codec.PCMA)

    @classmethod
    def from_mime(cls, mime: str) -> Codec:
        """The codec for a MIME type such as ``video/H264``; ValueError if we cannot record it."""
        for codec in cls:
            if codec.mime == mime.lower():
                return codec
        raise ValueError(f"{mime.lower()} is not yet supported")


@dataclass(slots=True)
class EncodedFrame:
    """One complete encoded frame (an Annex B access unit for H.264 and H.265, a temporal unit for AV1, a picture
    for VP9: its spatial layers as a superframe).

    ``timestamp`` is the RTP timestamp extended to 64 bits across its 32-bit wraps (codec clock units, as sent);
    ``arrival`` is ``time.monotonic()`` when the datagram completing the frame was read. ``contiguous`` is False when
    media was lost since the previous frame (a delta frame after it may not decode until the next keyframe);
    ``spatial_layer`` / ``temporal_layer`` are the SVC / simulcast layer ids where the codec carries them
    (VP8 temporal, VP9 spatial and temporal), 0 otherwise. ``pcm`` is the Opus frame decoded to 48 kHz
    interleaved stereo s16le by the media core when asked to (``MediaTransport.decode_opus``; empty if
    libopus refused it), None otherwise. ``sender_report`` is the latest RTCP sender report received before the frame,
    (its NTP time in Unix ns, its RTP timestamp in 32 bits), None before the first one (``media/sync.py``).
    """

    data: bytes
    timestamp: int
    keyframe: bool
    arrival: float = 0.0
    contiguous: bool = True
    spatial_layer: int = 0
    temporal_layer: int = 0
    pcm: bytes | None = None
    sender_report: tuple[int, int] | None = None
