"""H.264 Annex B access units: NAL splitting, IDR detection, SPS dimensions and parameter sets (ITU-T H.264)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain, pairwise

NAL_SLICE = 1
NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8

_START_CODE = b"\x00\x00\x01"
_EMULATION = b"\x00\x00\x03"
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
_CROP_UNITS = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}  # chroma_format_idc -> frame crop units (x, y)
_MAX_EXP_GOLOMB_ZEROS = 31
_MAX_POC_CYCLE = 255


class BitReader:
    """MSB-first reader over bytes with fixed-width and exp-Golomb fields; raises ValueError past the end."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = 8 * len(data)

    def u(self, bits: int) -> int:
        """Unsigned ``bits``-wide field."""
        if bits > self._left:
            raise ValueError("bitstream truncated")
        self._left -= bits
        return (self._value >> self._left) & ((1 << bits) - 1)

    def ue(self) -> int:
        """Unsigned exp-Golomb code ue(v)."""
        rest = self._value & ((1 << self._left) - 1)
        zeros = self._left - rest.bit_length()
        if rest == 0 or zeros > _MAX_EXP_GOLOMB_ZEROS:
            raise ValueError("invalid exp-Golomb code")
        return self.u(2 * zeros + 1) - 1

    def se(self) -> int:
        """Signed exp-Golomb code se(v)."""
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def _nal_starts(data: bytes) -> Iterator[int]:
    """Offset after each start code, found lazily so callers can stop before scanning the rest."""
    pos = data.find(_START_CODE)
    while pos >= 0:
        yield pos + len(_START_CODE)
        pos = data.find(_START_CODE, pos + len(_START_CODE))


def _nal_spans(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each non-empty NAL unit, start codes and trailing zero bytes excluded."""
    for start, next_start in pairwise(chain(_nal_starts(data), [len(data) + len(_START_CODE)])):
        end = next_start - len(_START_CODE)
        while end > start and data[end - 1] == 0:
            end -= 1
        if end > start:
            yield start, end


def split_nals(data: bytes) -> list[bytes]:
    """NAL units of an Annex B access unit, without start codes; bytes before the first start code are ignored."""
    return [data[start:end] for start, end in _nal_spans(data)]


def is_keyframe(data: bytes) -> bool:
    """True if the access unit's primary picture is IDR, decided by its first slice NAL (types 1-5).

    Only the bytes up to that slice's header are scanned.
    """
    for start in _nal_starts(data):
        nal_type = data[start] & 0x1F if start < len(data) else 0
        if NAL_SLICE <= nal_type <= NAL_IDR:
            return nal_type == NAL_IDR
    return False


def _first_nal(data: bytes, nal_type: int) -> bytes | None:
    """The first NAL unit of ``nal_type`` (header byte included), if any."""
    for start, end in _nal_spans(data):
        if data[start] & 0x1F == nal_type:
            return data[start:end]
    return None


def parameter_sets(data: bytes) -> tuple[bytes, bytes] | None:
    """(SPS, PPS) NAL units, header byte included, if the access unit carries both."""
    sps = _first_nal(data, NAL_SPS)
    pps = _first_nal(data, NAL_PPS)
    return (sps, pps) if sps is not None and pps is not None else None


def _skip_scaling_list(reader: BitReader, size: int) -> None:
    """Consume one scaling_list() of ``size`` coefficients (7.3.2.1.1.1)."""
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + reader.se()) % 256
            last = next_scale or last


def _chroma_format(reader: BitReader, profile_idc: int) -> int:
    """The chroma_format_idc, consuming the high-profile fields (chroma format, bit depths, scaling matrices)."""
    if profile_idc not in _HIGH_PROFILES:
        return 1
    chroma_format_idc = reader.ue()
    if chroma_format_idc > 3:
        raise ValueError("invalid chroma_format_idc")
    if chroma_format_idc == 3:
        reader.u(1)  # separate_colour_plane_flag: ChromaArrayType 0 then, whose crop units equal 4:4:4's
    reader.ue()  # bit_depth_luma_minus8
    reader.ue()  # bit_depth_chroma_minus8
    reader.u(1)  # qpprime_y_zero_transform_bypass_flag
    if reader.u(1):  # seq_scaling_matrix_present_flag
        for i in range(8 if chroma_format_idc != 3 else 12):
            if reader.u(1):
                _skip_scaling_list(reader, 16 if i < 6 else 64)
    return chroma_format_idc


def _skip_pic_order_cnt(reader: BitReader) -> None:
    """Consume log2_max_frame_num through the picture order count fields."""
    reader.ue()  # log2_max_frame_num_minus4
    poc_type = reader.ue()
    if poc_type == 0:
        reader.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        reader.u(1)  # delta_pic_order_always_zero_flag
        reader.se()  # offset_for_non_ref_pic
        reader.se()  # offset_for_top_to_bottom_field
        cycle = reader.ue()
        if cycle > _MAX_POC_CYCLE:
            raise ValueError("invalid num_ref_frames_in_pic_order_cnt_cycle")
        for _ in range(cycle):
            reader.se()


def _sps_dimensions(rbsp: bytes) -> tuple[int, int] | None:
    """Cropped (width, height) from an SPS RBSP that starts at profile_idc (7.3.2.1.1, 7.4.2.1.1)."""
    reader = BitReader(rbsp)
    profile_idc = reader.u(8)
    reader.u(16)  # constraint flags, level_idc
    reader.ue()  # seq_parameter_set_id
    chroma_format_idc = _chroma_format(reader, profile_idc)
    _skip_pic_order_cnt(reader)
    reader.ue()  # max_num_ref_frames
    reader.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = reader.ue() + 1
    height_map_units = reader.ue() + 1
    frame_mbs_only = reader.u(1)
    if not frame_mbs_only:
        reader.u(1)  # mb_adaptive_frame_field_flag
    reader.u(1)  # direct_8x8_inference_flag
    width = 16 * width_mbs
    height = 16 * (2 - frame_mbs_only) * height_map_units
    if reader.u(1):  # frame_cropping_flag
        unit_x, unit_y = _CROP_UNITS[chroma_format_idc]
        width -= unit_x * (reader.ue() + reader.ue())
        height -= unit_y * (2 - frame_mbs_only) * (reader.ue() + reader.ue())
    return (width, height) if width > 0 and height > 0 else None


def dimensions(data: bytes) -> tuple[int, int] | None:
    """Display (width, height) from the access unit's first SPS; None if absent, truncated or invalid."""
    sps = _first_nal(data, NAL_SPS)
    if sps is None:
        return None
    try:
        return _sps_dimensions(sps[1:].replace(_EMULATION, b"\x00\x00"))
    except ValueError:
        return None


def frame_num_bits(data: bytes) -> int | None:
    """Width of ``frame_num`` in slice headers (log2_max_frame_num) from the access unit's first SPS;
    None if there is no SPS, it is unreadable, or it is 4:4:4 (slice headers may carry a colour plane id)."""
    sps = _first_nal(data, NAL_SPS)
    if sps is None:
        return None
    reader = BitReader(sps[1:].replace(_EMULATION, b"\x00\x00"))
    try:
        profile_idc = reader.u(8)
        reader.u(16)  # constraint flags, level_idc
        reader.ue()  # seq_parameter_set_id
        if _chroma_format(reader, profile_idc) == 3:
            return None
        return reader.ue() + 4
    except ValueError:
        return None


def slice_frame_num(data: bytes, bits: int) -> tuple[int, bool] | None:
    """(frame_num, is a reference picture) of the access unit's first slice (7.3.3); None without a slice."""
    for start, end in _nal_spans(data):
        header = data[start]
        if NAL_SLICE <= header & 0x1F <= NAL_IDR:
            reader = BitReader(data[start + 1 : min(end, start + 16)].replace(_EMULATION, b"\x00\x00"))
            try:
                reader.ue()  # first_mb_in_slice
                reader.ue()  # slice_type
                reader.ue()  # pic_parameter_set_id
                return reader.u(bits), bool(header & 0x60)
            except ValueError:
                return None
    return None


class FrameNums:
    """Detects a lost reference picture from ``frame_num`` (7.4.3): after a reference picture the next
    picture's frame_num is one more (mod 2^bits); after a non-reference one it stays the same."""

    def __init__(self) -> None:
        self._bits: int | None = None
        self._expected: int | None = None

    def follows(self, data: bytes) -> bool:
        """Record this access unit; False if a reference picture between the last one and it is missing."""
        bits = frame_num_bits(data) or self._bits
        self._bits = bits
        parsed = slice_frame_num(data, bits) if bits else None
        if parsed is None:
            self._expected = None
            return True
        frame_num, reference = parsed
        ok = is_keyframe(data) or self._expected is None or frame_num == self._expected
        assert bits is not None
        self._expected = (frame_num + 1) % (1 << bits) if reference else frame_num
        return ok
