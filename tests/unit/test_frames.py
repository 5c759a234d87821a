"""Codec table."""

from pathlib import PurePath

import pytest

from trackegress.media.codecs import CODECS, content_type, output_format
from trackegress.media.frames import Codec


def test_codec_from_mime_is_case_insensitive_and_maps_containers() -> None:
    assert Codec.from_mime("video/H264") is Codec.H264
    assert Codec.from_mime("video/AV1") is Codec.AV1 and Codec.from_mime("audio/PCMU") is Codec.PCMU
    extensions = {codec: output_format(codec).extension for codec in Codec}
    assert extensions == {
        Codec.OPUS: "ogg", Codec.PCMU: "wav", Codec.PCMA: "wav", Codec.VP8: "webm", Codec.VP9: "webm",
        Codec.AV1: "webm", Codec.H264: "mp4", Codec.H265: "mp4",
    }
    assert output_format(Codec.H265).content_type == "video/mp4"
    assert Codec.OPUS.clock_rate == 48_000 and Codec.VP9.clock_rate == 90_000 and Codec.PCMA.clock_rate == 8_000


@pytest.mark.parametrize(("name", "expected"), [
    ("x.ogg", "audio/ogg"), ("x.wav", "audio/wav"), ("x.webm", "video/webm"), ("x.mp4", "video/mp4"),
])
def test_content_types(name: str, expected: str) -> None:
    assert content_type(PurePath(name)) == expected


def test_unsupported_codec_error_names_it_like_upstream() -> None:
    with pytest.raises(ValueError, match=r"^audio/g722 is not yet supported$"):
        Codec.from_mime("audio/G722")


def test_every_codec_has_a_row_and_every_video_row_its_bitstream_traits() -> None:
    assert set(CODECS) == set(Codec)
    audio = CODECS[Codec.OPUS]
    for codec in (c for c in Codec if c.is_video):
        row = CODECS[codec]
        assert row.keyframe is not audio.keyframe and row.dimensions is not audio.dimensions, codec
        assert row.silence is None and row.format.extension in ("webm", "mp4"), codec
