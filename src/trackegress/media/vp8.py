"""VP8 key frames and dimensions (RFC 6386 §9.1)."""

from __future__ import annotations

_VP8_START_CODE = b"\x9d\x01\x2a"
_VP8_KEY_HEADER = 10  # 3-byte frame tag, start code, 16-bit width and height


def is_keyframe(data: bytes) -> bool:
    """True for a VP8 key frame: frame tag bit 0 clear and the 9d 01 2a start code present."""
    return len(data) >= _VP8_KEY_HEADER and not data[0] & 1 and data[3:6] == _VP8_START_CODE


def dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 key frame (14 bits each, scaling bits dropped); None for other frames."""
    if not is_keyframe(data):
        return None
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None
