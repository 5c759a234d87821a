"""AV1 temporal units (low-overhead OBU stream): key frames and the sequence header's size (AV1 spec 5.3-5.9).

A keyframe temporal unit's first frame header says KEY_FRAME; its size is the sequence header's
``max_frame_width/height``, which for an SVC stream (L3T3 as Chromium sends it) is the top spatial layer's.
A unit that stops below the top spatial layer (the SFU forwards the layers up to a subscriber's target; each
frame's OBU extension names its layer) is taken at half the size per missing layer, libwebrtc's L3T3 ratios.
"""

from __future__ import annotations

from collections.abc import Iterator

OBU_SEQUENCE_HEADER = 1
OBU_FRAME_HEADER = 3
OBU_FRAME = 6
KEY_FRAME = 0
_MAX_LEB128_BYTES = 8


class _Bits:
    """MSB-first reader with the spec's f(n) and uvlc()."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def f(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._pos >> 3
            if byte >= len(self._data):
                raise ValueError("AV1 header truncated")
            value = (value << 1) | ((self._data[byte] >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.f(1):
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return self.f(zeros) + (1 << zeros) - 1


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(_MAX_LEB128_BYTES):
        if pos + i >= len(data):
            raise ValueError("AV1 OBU size truncated")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("AV1 OBU size too long")


def obus(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, spatial_id, payload) of each OBU (spatial_id 0 without an extension header); an OBU without a size
    field runs to the end of ``data``."""
    pos = 0
    while pos < len(data):
        header = data[pos]
        if header & 0x80:
            raise ValueError("AV1 OBU forbidden bit set")
        kind, extension, has_size = (header >> 3) & 0x0F, header & 0x04, header & 0x02
        spatial_id = (data[pos + 1] >> 3) & 0x03 if extension and pos + 1 < len(data) else 0
        pos += 2 if extension else 1
        if has_size:
            size, pos = _leb128(data, pos)
        else:
            size = len(data) - pos
        if pos + size > len(data):
            raise ValueError("AV1 OBU truncated")
        yield kind, spatial_id, data[pos:pos + size]
        pos += size


def _operating_points(bits: _Bits) -> int:
    """Skips timing info and the operating points; the first operating point's idc (its layers)."""
    decoder_model = 0
    if bits.f(1):  # timing_info_present_flag
        bits.f(64)  # num_units_in_display_tick, time_scale
        if bits.f(1):  # equal_picture_interval
            bits.uvlc()
        decoder_model = bits.f(1)
    delay_length = 0
    if decoder_model:
        delay_length = bits.f(5) + 1
        bits.f(32 + 5 + 5)
    initial_display_delay = bits.f(1)
    idcs = []
    for _ in range(bits.f(5) + 1):  # operating points
        idcs.append(bits.f(12))  # operating_point_idc: temporal layers in bits 0-7, spatial layers in 8-11
        if bits.f(5) > 7:  # seq_level_idx
            bits.f(1)  # seq_tier
        if decoder_model and bits.f(1):
            bits.f(2 * delay_length + 1)
        if initial_display_delay and bits.f(1):
            bits.f(4)
    return idcs[0]


def sequence_size(header: bytes) -> tuple[tuple[int, int], bool, int]:
    """(max_frame_width, max_frame_height), reduced_still_picture_header and the top spatial layer (0: one layer)
    of a sequence header OBU payload."""
    bits = _Bits(header)
    bits.f(3)  # seq_profile
    bits.f(1)  # still_picture
    reduced = bool(bits.f(1))
    idc = 0
    if reduced:
        bits.f(5)
    else:
        idc = _operating_points(bits)
    width_bits, height_bits = bits.f(4) + 1, bits.f(4) + 1
    return (bits.f(width_bits) + 1, bits.f(height_bits) + 1), reduced, (idc >> 8).bit_length() - 1 if idc else 0


def _first_frame_is_key(data: bytes) -> tuple[bool, tuple[int, int] | None, int | None]:
    """Whether the unit's first frame is a KEY_FRAME, the size of its highest spatial layer (when the unit
    carries a sequence header), and that layer (0 without OBU extensions; None without a frame)."""
    size, reduced, top, key, highest = None, False, 0, None, None
    for kind, spatial_id, payload in obus(data):
        if kind == OBU_SEQUENCE_HEADER:
            size, reduced, top = sequence_size(payload)
        elif kind in (OBU_FRAME, OBU_FRAME_HEADER):
            if key is None:
                bits = _Bits(payload)
                key = reduced or (not bits.f(1) and bits.f(2) == KEY_FRAME)  # show_existing_frame, frame_type
            highest = spatial_id if highest is None else max(highest, spatial_id)
    if size is not None and highest is not None and highest < top:
        size = (size[0] >> (top - highest), size[1] >> (top - highest))
    return bool(key), size, highest


def start_and_layer(data: bytes) -> tuple[bool, int | None]:
    """Whether a decoder can start at the unit (a KEY_FRAME unit carrying its sequence header), and the highest
    spatial layer among its frames (None without a frame, or for a unit that does not parse)."""
    try:
        key, size, highest = _first_frame_is_key(data)
    except ValueError:
        return False, None
    return key and size is not None, highest


def is_keyframe(data: bytes) -> bool:
    """True when the temporal unit's first frame is a KEY_FRAME."""
    try:
        return _first_frame_is_key(data)[0]
    except ValueError:
        return False


def dimensions(data: bytes) -> tuple[int, int] | None:
    """The sequence header's maximum (width, height) of a keyframe temporal unit; None for other units."""
    try:
        key, size, _ = _first_frame_is_key(data)
    except ValueError:
        return None
    return size if key else None


class SpatialLayer:
    """AV1 SVC: a keyframe unit establishes the spatial layer the recording follows (its highest). With Chromium's
    L3T3_KEY the layers predict only from themselves after the keyframe, so a unit whose highest layer differs
    references pictures the recording does not have (seen: the SFU moving from 320x180 to 640x360 mid-GOP)."""

    def __init__(self) -> None:
        self._layer: int | None = None

    def follows(self, data: bytes) -> bool:
        """Record this unit; False if its spatial layer is not the one the last keyframe established."""
        start, layer = start_and_layer(data)
        if layer is None:
            return True
        if start:
            self._layer = layer
            return True
        return self._layer is None or layer == self._layer
