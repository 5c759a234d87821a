"""VP9 key frames and dimensions (VP9 bitstream spec 6.2, uncompressed header; Annex B superframes).

A depacketized VP9 picture may be a superframe: several frames (a hidden alt-ref and the shown frame, or the
spatial layers of an SVC picture as LiveKit forwards them) with an index at its end. A picture is a keyframe
when its first frame is a KEY_FRAME; its size is the largest frame size it states (the top spatial layer sent).
"""

from __future__ import annotations

_SYNC_CODE = 0x498342
_CS_RGB = 7


class _Bits:
    """MSB-first bit reader over one frame's uncompressed header."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._pos >> 3
            if byte >= len(self._data):
                raise ValueError("VP9 header truncated")
            value = (value << 1) | ((self._data[byte] >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value


def split_superframe(data: bytes) -> list[bytes]:
    """The frames of a superframe (Annex B index at the end), or ``[data]`` for a single frame."""
    if not data:
        return []
    marker = data[-1]
    if marker & 0xE0 != 0xC0:
        return [data]
    frames = (marker & 0x07) + 1
    size_bytes = ((marker >> 3) & 0x03) + 1
    index_size = 2 + size_bytes * frames
    if len(data) < index_size or data[-index_size] != marker:
        return [data]
    out, offset, pos = [], 0, len(data) - index_size + 1
    for _ in range(frames):
        size = int.from_bytes(data[pos:pos + size_bytes], "little")
        pos += size_bytes
        if size == 0 or offset + size > len(data) - index_size:
            return [data]
        out.append(data[offset:offset + size])
        offset += size
    return out


def _profile(bits: _Bits) -> int:
    if bits.read(2) != 2:
        raise ValueError("not a VP9 frame (frame marker)")
    low, high = bits.read(1), bits.read(1)
    profile = (high << 1) | low
    if profile == 3:
        bits.read(1)
    return profile


def _skip_color_config(bits: _Bits, profile: int) -> None:
    if profile >= 2:
        bits.read(1)  # ten_or_twelve_bit
    if bits.read(3) != _CS_RGB:
        bits.read(1)  # color_range
        if profile in (1, 3):
            bits.read(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        bits.read(1)


def _frame_size(bits: _Bits) -> tuple[int, int]:
    return bits.read(16) + 1, bits.read(16) + 1


def frame_info(frame: bytes) -> tuple[bool, tuple[int, int] | None]:
    """(is a KEY_FRAME, the size the frame states or None when it takes a reference's size) of one frame."""
    bits = _Bits(frame)
    profile = _profile(bits)
    if bits.read(1):  # show_existing_frame
        return False, None
    key = bits.read(1) == 0
    show_frame, error_resilient = bits.read(1), bits.read(1)
    if key:
        if bits.read(24) != _SYNC_CODE:
            raise ValueError("VP9 keyframe without sync code")
        _skip_color_config(bits, profile)
        return True, _frame_size(bits)
    intra_only = bits.read(1) if not show_frame else 0
    if not error_resilient:
        bits.read(2)  # reset_frame_context
    if intra_only:
        if bits.read(24) != _SYNC_CODE:
            raise ValueError("VP9 intra-only frame without sync code")
        if profile > 0:
            _skip_color_config(bits, profile)
        bits.read(8)  # refresh_frame_flags
        return False, _frame_size(bits)
    bits.read(8 + 3 * 4)  # refresh_frame_flags, (ref_frame_idx, sign_bias) x 3
    for _ in range(3):
        if bits.read(1):  # found_ref: the size of that reference
            return False, None
    return False, _frame_size(bits)


def is_keyframe(data: bytes) -> bool:
    """True when the picture's first frame is a VP9 KEY_FRAME."""
    frames = split_superframe(data)
    try:
        return bool(frames) and frame_info(frames[0])[0]
    except ValueError:
        return False


def dimensions(data: bytes) -> tuple[int, int] | None:
    """The largest (width, height) a keyframe picture states (its top spatial layer); None for other pictures."""
    frames = split_superframe(data)
    try:
        if not frames or not frame_info(frames[0])[0]:
            return None
        sizes = [size for size in (frame_info(f)[1] for f in frames) if size is not None]
    except ValueError:
        return None
    return max(sizes, key=lambda s: s[0] * s[1]) if sizes else None
