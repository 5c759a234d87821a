"""The output-format table: for each codec we record, its container, file extension, Content-Type and mux options.

A new container is one row here (plus the muxer's per-codec packet rules, if any).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath

from trackegress.media.frames import Codec


@dataclass(frozen=True)
class OutputFormat:
    """How one codec is written: FFmpeg muxer ``container``, ``extension`` (no dot), ``content_type``, the FFmpeg
    codec name of its stream (``ffmpeg_codec``), muxer options."""

    container: str
    extension: str
    content_type: str
    ffmpeg_codec: str
    mux_options: Mapping[str, str] = field(default_factory=dict)


# Fragment at every keyframe and at least every half second (the muxer holds a fragment in memory until it is
# written: 1 s cost 0.17 MB more per 720p egress); write the moov once the first packet gave avcC / hvcC.
_FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof+delay_moov", "frag_duration": "500000"}

FORMATS: Mapping[Codec, OutputFormat] = {
    Codec.OPUS: OutputFormat("ogg", "ogg", "audio/ogg", "libopus"),
    # G.711 as published (never transcoded): upstream re-encodes it to Opus in Ogg, which cannot hold G.711.
    Codec.PCMU: OutputFormat("wav", "wav", "audio/wav", "pcm_mulaw"),
    Codec.PCMA: OutputFormat("wav", "wav", "audio/wav", "pcm_alaw"),
    Codec.VP8: OutputFormat("webm", "webm", "video/webm", "vp8"),
    Codec.VP9: OutputFormat("webm", "webm", "video/webm", "vp9"),
    Codec.AV1: OutputFormat("webm", "webm", "video/webm", "av1"),  # upstream refuses AV1; WebM as Chromium's own
    Codec.H264: OutputFormat("mp4", "mp4", "video/mp4", "h264", _FRAGMENTED_MP4),
    Codec.H265: OutputFormat("mp4", "mp4", "video/mp4", "hevc", _FRAGMENTED_MP4),  # upstream refuses H.265
}
MANIFEST_CONTENT_TYPE = "application/json"
# Extensions upstream knows for any egress: a template ending in one of them gets ours instead.
KNOWN_EXTENSIONS = frozenset({".raw", ".ogg", ".mp3", ".ivf", ".mp4", ".ts", ".webm", ".m3u8", ".jpeg"}) | {
    f".{f.extension}" for f in FORMATS.values()
}
_CONTENT_TYPES = {f".{f.extension}": f.content_type for f in FORMATS.values()} | {".json": MANIFEST_CONTENT_TYPE}


def output_format(codec: Codec) -> OutputFormat:
    """The row for ``codec``."""
    return FORMATS[codec]


def content_type(path: PurePath) -> str:
    """The Content-Type a file is uploaded with, from its extension (upstream's)."""
    return _CONTENT_TYPES.get(path.suffix, "application/octet-stream")
