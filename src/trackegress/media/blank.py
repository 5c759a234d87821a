"""Frames livekit-server makes up: not the publisher's media, so never recorded.

On mute (for 1 s) and when a subscription closes (0.2 s) the SFU's down track writes "blank" frames so
that browser decoders flush: an Opus silence frame, 20 ms of G.711 silence, an 8x8 VP8 keyframe, a 2x2 H.264
IDR with its own SPS (``pkg/sfu/downtrack.go``, v1.13.5), stamped on the SFU's clock. Recorded as is, the H.264
one would change the resolution of an MP4 mid-file, and the G.711 ones would add time to a WAV (which has no
timestamps); a publisher's own digital silence dropped with them comes back as the gap's silence. An E2EE
trailer may follow, so only the start (Opus, G.711, VP8) or the SPS (H.264) is compared.
"""

from __future__ import annotations

from collections.abc import Callable

OPUS_SILENCE = b"\xf8\xff\xfe" + bytes(77)
VP8_KEYFRAME_8X8 = bytes.fromhex("1002009d012a080008000047088585888584880202000c0d6000feffab5080")
H264_SPS_2X2 = bytes.fromhex("6742c01f0fd91f888884000003000400000300c83c60c920")
G711_FRAME = 160  # samples of the SFU's 20 ms G.711 silence


def opus_blank(data: bytes) -> bool:
    return data.startswith(OPUS_SILENCE)


def vp8_blank(data: bytes) -> bool:
    return data.startswith(VP8_KEYFRAME_8X8)


def h264_blank(data: bytes) -> bool:
    return b"\x00\x00\x01" + H264_SPS_2X2 in data


def g711_blank(silence: int) -> Callable[[bytes], bool]:
    """The test for 20 ms of G.711 silence coded as ``silence`` (the code of a zero sample)."""
    frame = bytes([silence]) * G711_FRAME
    return lambda data: data.startswith(frame)
