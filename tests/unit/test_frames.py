"""Codec table."""

import pytest

from trackegress.media.formats import output_format
from trackegress.media.frames import Codec


def test_codec_from_mime_is_case_insensitive_and_maps_containers() -> None:
    assert Codec.from_mime("video/H264") is Codec.H264
    extensions = [output_format(codec).extension for codec in (Codec.OPUS, Codec.VP8, Codec.H264)]
    assert extensions == ["ogg", "webm", "mp4"]
    assert output_format(Codec.H264).content_type == "video/mp4"
    assert Codec.OPUS.clock_rate == 48_000 and Codec.VP8.clock_rate == 90_000


def test_unsupported_codec_error_names_it_like_upstream() -> None:
    with pytest.raises(ValueError, match=r"^video/av1 is not yet supported$"):
        Codec.from_mime("video/AV1")

