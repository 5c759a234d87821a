"""The codec table: for each codec we record, one row of what the recording needs to know of it (its container,
file extension, Content-Type and mux options; its keyframes, picture size, parameter sets and reference checks; the
SFU's blank frames; how the muxer fills a gap). A new codec is a ``Codec`` member, its bitstream module and a row
here (plus ``mime()`` in ``native/src/peer.rs`` for the media core).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Protocol

from trackegress.media import av1, blank, g711, h264, h265, opus, vp8, vp9
from trackegress.media.frames import Codec

Size = tuple[int, int]


@dataclass(frozen=True)
class OutputFormat:
    """How one codec is written: FFmpeg muxer ``container``, ``extension`` (no dot), ``content_type``, the FFmpeg
    codec name of its stream (``ffmpeg_codec``), muxer options."""

    container: str
    extension: str
    content_type: str
    ffmpeg_codec: str
    mux_options: Mapping[str, str] = field(default_factory=dict)


class ReferenceCheck(Protocol):
    """One track's check that a unit's reference pictures were all received."""

    def follows(self, data: bytes) -> bool:
        """Record this unit; False if a picture it depends on is missing."""
        ...


def _always(data: bytes) -> bool:
    return True


def _never(data: bytes) -> bool:
    return False


def _no_size(data: bytes) -> Size | None:
    return None


def _as_is(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class CodecTraits:
    """One codec's row: ``format`` how it is written; for video, ``keyframe`` (a unit a decoder can start from, by its
    own bitstream), ``dimensions`` (a keyframe's picture size), ``parameter_sets`` (whether a unit carries them in
    band; until one did, no keyframe is a start), ``continuity`` (a per-track ``ReferenceCheck``), ``picture`` (what
    the muxer writes of a unit); for audio, ``samples`` in a frame (0: invalid) and the ``silence`` byte a gap in WAV
    is filled with (else Opus's empty frames); ``blank``: one of the SFU's made-up frames, never recorded."""

    format: OutputFormat
    blank: Callable[[bytes], bool] = _never
    keyframe: Callable[[bytes], bool] = _always
    dimensions: Callable[[bytes], Size | None] = _no_size
    parameter_sets: Callable[[bytes], bool] | None = None
    continuity: Callable[[], ReferenceCheck] | None = None
    picture: Callable[[bytes], bytes] = _as_is
    samples: Callable[[bytes], int] = len
    silence: int | None = None


# Fragment at every keyframe and at least every half second (the muxer holds a fragment in memory until it is
# written: 1 s cost 0.17 MB more per 720p egress); write the moov once the first packet gave avcC / hvcC.
_FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof+delay_moov", "frag_duration": "500000"}

_WEBM = {codec: OutputFormat("webm", "webm", "video/webm", codec) for codec in ("vp8", "vp9", "av1")}

CODECS: Mapping[Codec, CodecTraits] = {
    Codec.OPUS: CodecTraits(OutputFormat("ogg", "ogg", "audio/ogg", "libopus"), blank=blank.opus_blank,
                            samples=opus.packet_samples_or_zero),
    # G.711 as published (never transcoded): upstream re-encodes it to Opus in Ogg, which cannot hold G.711.
    Codec.PCMU: CodecTraits(OutputFormat("wav", "wav", "audio/wav", "pcm_mulaw"),
                            blank=blank.g711_blank(g711.MULAW_SILENCE), silence=g711.MULAW_SILENCE),
    Codec.PCMA: CodecTraits(OutputFormat("wav", "wav", "audio/wav", "pcm_alaw"),
                            blank=blank.g711_blank(g711.ALAW_SILENCE), silence=g711.ALAW_SILENCE),
    Codec.VP8: CodecTraits(_WEBM["vp8"], blank=blank.vp8_blank, keyframe=vp8.is_keyframe, dimensions=vp8.dimensions),
    Codec.VP9: CodecTraits(_WEBM["vp9"], keyframe=vp9.is_keyframe, dimensions=vp9.dimensions,
                           picture=vp9.show_top_layer_only),
    # upstream refuses AV1; WebM as Chromium's own. A keyframe: a KEY_FRAME unit that carries its sequence header.
    Codec.AV1: CodecTraits(_WEBM["av1"], keyframe=lambda data: av1.start_and_layer(data)[0],
                           dimensions=av1.dimensions, continuity=av1.SpatialLayer),
    Codec.H264: CodecTraits(OutputFormat("mp4", "mp4", "video/mp4", "h264", _FRAGMENTED_MP4), blank=blank.h264_blank,
                            keyframe=h264.is_keyframe, dimensions=h264.dimensions,
                            parameter_sets=lambda data: h264.parameter_sets(data) is not None,
                            continuity=h264.FrameNums),
    Codec.H265: CodecTraits(OutputFormat("mp4", "mp4", "video/mp4", "hevc", _FRAGMENTED_MP4),  # upstream refuses it
                            keyframe=h265.is_keyframe, dimensions=h265.dimensions,
                            parameter_sets=lambda data: h265.dimensions(data) is not None),
}
MANIFEST_CONTENT_TYPE = "application/json"
# Extensions upstream knows for any egress: a template ending in one of them gets ours instead.
KNOWN_EXTENSIONS = frozenset({".raw", ".ogg", ".mp3", ".ivf", ".mp4", ".ts", ".webm", ".m3u8", ".jpeg"}) | {
    f".{t.format.extension}" for t in CODECS.values()
}
_CONTENT_TYPES = {f".{t.format.extension}": t.format.content_type for t in CODECS.values()} | {
    ".json": MANIFEST_CONTENT_TYPE
}


def output_format(codec: Codec) -> OutputFormat:
    """How ``codec`` is written."""
    return CODECS[codec].format


def keyframe_size(codec: Codec, data: bytes) -> Size | None:
    """(width, height) of a keyframe of ``codec``; None for other frames, audio, or an unparsable header."""
    return CODECS[codec].dimensions(data)


def is_blank(codec: Codec, data: bytes) -> bool:
    """Whether ``data`` is one of the SFU's blank frames for ``codec`` (``media/blank.py``)."""
    return CODECS[codec].blank(data)


def content_type(path: PurePath) -> str:
    """The Content-Type a file is uploaded with, from its extension (upstream's)."""
    return _CONTENT_TYPES.get(path.suffix, "application/octet-stream")
