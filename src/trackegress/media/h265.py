"""H.265 Annex B access units: IRAP (keyframe) detection and SPS dimensions (ITU-T H.265 7.3.2.2, 7.3.3)."""

from __future__ import annotations

from trackegress.media.h264 import BitReader, split_nals

NAL_VCL_LAST = 31
NAL_IRAP_FIRST, NAL_IRAP_LAST = 16, 23  # BLA, IDR, CRA: a decoder can start here
NAL_SPS = 33
_EMULATION = b"\x00\x00\x03"
_GENERAL_PTL_BITS = 2 + 1 + 5 + 32 + 48 + 8  # profile space/tier/idc, compatibility, constraints, level
_SUB_LAYER_PROFILE_BITS = 88


def nal_type(nal: bytes) -> int:
    """The NAL unit type of a NAL unit (its 2-byte header included)."""
    return (nal[0] >> 1) & 0x3F


def is_keyframe(data: bytes) -> bool:
    """True if the access unit's first picture NAL (VCL) is an IRAP picture."""
    for nal in split_nals(data):
        kind = nal_type(nal)
        if kind <= NAL_VCL_LAST:
            return NAL_IRAP_FIRST <= kind <= NAL_IRAP_LAST
    return False


def _skip_profile_tier_level(reader: BitReader, max_sub_layers_minus1: int) -> None:
    reader.u(_GENERAL_PTL_BITS)
    present = [(reader.u(1), reader.u(1)) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        for _ in range(max_sub_layers_minus1, 8):
            reader.u(2)
    for profile_present, level_present in present:
        if profile_present:
            reader.u(_SUB_LAYER_PROFILE_BITS)
        if level_present:
            reader.u(8)


def _sps_dimensions(rbsp: bytes) -> tuple[int, int] | None:
    """Conformance-window (width, height) from an SPS RBSP that starts after the NAL header."""
    reader = BitReader(rbsp)
    reader.u(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = reader.u(3)
    reader.u(1)  # sps_temporal_id_nesting_flag
    _skip_profile_tier_level(reader, max_sub_layers_minus1)
    reader.ue()  # sps_seq_parameter_set_id
    chroma_format_idc = reader.ue()
    separate_planes = reader.u(1) if chroma_format_idc == 3 else 0
    width, height = reader.ue(), reader.ue()
    if reader.u(1):  # conformance_window_flag
        chroma = 0 if separate_planes else chroma_format_idc
        unit_x = 2 if chroma in (1, 2) else 1
        unit_y = 2 if chroma == 1 else 1
        left, right, top, bottom = reader.ue(), reader.ue(), reader.ue(), reader.ue()
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    return (width, height) if width > 0 and height > 0 else None


def dimensions(data: bytes) -> tuple[int, int] | None:
    """Display (width, height) from the access unit's first SPS; None if absent, truncated or invalid."""
    for nal in split_nals(data):
        if nal_type(nal) == NAL_SPS:
            try:
                return _sps_dimensions(nal[2:].replace(_EMULATION, b"\x00\x00"))
            except ValueError:
                return None
    return None
