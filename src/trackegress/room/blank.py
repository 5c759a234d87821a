"""Frames livekit-server makes up: not the publisher's media, so never recorded.

On mute (for 1 s) and when a subscription closes (0.2 s) the SFU's down track writes "blank" frames so
that browser decoders flush: an Opus silence frame, 20 ms of G.711 silence, an 8x8 VP8 keyframe, a 2x2 H.264
IDR with its own SPS (``pkg/sfu/downtrack.go``, v1.13.5), stamped on the SFU's clock. Recorded as is, the H.264
one would change the resolution of an MP4 mid-file, and the G.711 ones would add time to a WAV (which has no
timestamps); a publisher's own digital silence dropped with them comes back as the gap's silence. An E2EE
trailer may follow, so only the start (Opus, G.711, VP8) or the SPS (H.264) is compared.
"""

from __future__ import annotations

from trackegress.media import g711
from trackegress.media.frames import Codec

OPUS_SILENCE = b"\xf8\xff\xfe" + bytes(77)
VP8_KEYFRAME_8X8 = bytes.fromhex("1002009d012a080008000047088585888584880202000c0d6000feffab5080")
H264_SPS_2X2 = bytes.fromhex("6742c01f0fd91f888884000003000400000300c83c60c920")
G711_FRAME = 160  # samples of the SFU's 20 ms G.711 silence


def is_blank(codec: Codec, data: bytes) -> bool:
    """Whether ``data`` is one of the SFU's blank frames for ``codec``."""
    if codec is Codec.OPUS:
        return data.startswith(OPUS_SILENCE)
    if codec is Codec.VP8:
        return data.startswith(VP8_KEYFRAME_8X8)
    if codec is Codec.H264:
        return b"\x00\x00\x01" + H264_SPS_2X2 in data
    silence = g711.SILENCE.get(codec)
    return silence is not None and data.startswith(bytes([silence]) * G711_FRAME)
