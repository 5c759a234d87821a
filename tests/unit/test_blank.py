"""The SFU's blank frames (livekit-server v1.13.5 ``pkg/sfu/downtrack.go``) are recognised, publishers' media not."""

from __future__ import annotations

import pytest

from trackegress.media.codecs import is_blank
from trackegress.media.frames import Codec

TRAILER = b"\x01\x02LKROCKS"  # what an E2EE trailer would append


@pytest.mark.parametrize(("codec", "silence"), [(Codec.PCMU, 0xFF), (Codec.PCMA, 0xD5)])
def test_g711_silence_frames_are_blank(codec: Codec, silence: int) -> None:
    assert is_blank(codec, bytes([silence]) * 160)
    assert is_blank(codec, bytes([silence]) * 160 + TRAILER)
    assert not is_blank(codec, bytes([silence]) * 159 + b"\x80")  # one audible sample: the publisher's media
    assert not is_blank(codec, bytes([silence]) * 80)  # a shorter (10 ms) publisher frame
    other = Codec.PCMA if codec is Codec.PCMU else Codec.PCMU
    assert not is_blank(other, bytes([silence]) * 160)


def test_video_codecs_without_blank_frames() -> None:
    for codec in (Codec.VP9, Codec.AV1, Codec.H265):
        assert not is_blank(codec, b"\x00" * 64)
