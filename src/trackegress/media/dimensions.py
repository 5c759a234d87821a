"""Picture size of a video keyframe, per codec (the parsers live in the codec modules)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from trackegress.media import av1, h264, h265, vp8, vp9
from trackegress.media.frames import Codec

_PARSERS: Mapping[Codec, Callable[[bytes], tuple[int, int] | None]] = {
    Codec.H264: h264.dimensions,
    Codec.H265: h265.dimensions,
    Codec.VP8: vp8.dimensions,
    Codec.VP9: vp9.dimensions,
    Codec.AV1: av1.dimensions,
}


def keyframe_size(codec: Codec, data: bytes) -> tuple[int, int] | None:
    """(width, height) of a keyframe of ``codec``; None for other frames, audio, or an unparsable header."""
    parser = _PARSERS.get(codec)
    return parser(data) if parser is not None else None
