"""Codec table and RTP timestamp unwrapping."""

import pytest

from trackegress.media.formats import output_format
from trackegress.media.frames import Codec, TimestampUnwrapper


def test_codec_from_mime_is_case_insensitive_and_maps_containers() -> None:
    assert Codec.from_mime("video/H264") is Codec.H264
    extensions = [output_format(codec).extension for codec in (Codec.OPUS, Codec.VP8, Codec.H264)]
    assert extensions == ["ogg", "webm", "mp4"]
    assert output_format(Codec.H264).content_type == "video/mp4"
    assert Codec.OPUS.clock_rate == 48_000 and Codec.VP8.clock_rate == 90_000


def test_unsupported_codec_error_names_it_like_upstream() -> None:
    with pytest.raises(ValueError, match=r"^video/av1 is not yet supported$"):
        Codec.from_mime("video/AV1")


def test_unwrap_crosses_the_32_bit_boundary() -> None:
    unwrap = TimestampUnwrapper()
    values = [0xFFFF_FC40, 0xFFFF_FFFF, 0x0000_0380, 0x0000_0740]
    assert [unwrap.unwrap(v) for v in values] == [0xFFFF_FC40, 0xFFFF_FFFF, 0x1_0000_0380, 0x1_0000_0740]


def test_unwrap_keeps_small_reordering_backwards() -> None:
    unwrap = TimestampUnwrapper()
    assert unwrap.unwrap(0x0000_0100) == 0x100
    assert unwrap.unwrap(0xFFFF_FF00) == 0x100 - 0x200  # one step back across the wrap
    assert unwrap.unwrap(0x0000_0500) == 0x500


def test_unwrap_survives_many_wraps() -> None:
    unwrap = TimestampUnwrapper()
    ts, out = 0, 0
    for _ in range(5 * 4_475):  # 1e9 ticks per step, ~5 wraps of the 32-bit counter
        ts = (ts + 1_000_000_00) & 0xFFFF_FFFF
        out = unwrap.unwrap(ts)
    assert out == 5 * 4_475 * 1_000_000_00
