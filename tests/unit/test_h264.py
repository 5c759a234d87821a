"""H.264 Annex B helpers on real libx264 streams (ffmpeg CLI) and on hand-built SPS NAL units."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.media import encode_testsrc

from trackegress.media.h264 import dimensions, is_keyframe, parameter_sets, split_nals

FRAMES = 21
RATE = 25
GOP = 10
START = b"\x00\x00\x00\x01"
AUD = START + b"\x09"  # access unit delimiter (nal_ref_idc 0), inserted to split the byte stream
HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")


@dataclass(frozen=True)
class Stream:
    size: tuple[int, int]
    profile_idc: int
    preset: str = "ultrafast"
    pix_fmt: str = "yuv420p"
    extra: tuple[str, ...] = ()


STREAMS = {
    "baseline_322x242": Stream((322, 242), 66, extra=("-profile:v", "baseline")),
    "main_640x360": Stream((640, 360), 77, "superfast", extra=("-profile:v", "main")),
    "high_1280x720": Stream((1280, 720), 100, "superfast", extra=("-profile:v", "high")),
    "high10_640x360": Stream((640, 360), 110, pix_fmt="yuv420p10le"),
    "high422_322x241": Stream((322, 241), 122, pix_fmt="yuv422p"),
    "high444_321x241": Stream((321, 241), 244, pix_fmt="yuv444p"),
    "interlaced_640x360": Stream((640, 360), 77, extra=("-flags", "+ildct+ilme")),  # frame_mbs_only_flag 0
}


def outputs(folder: Path) -> dict[Path, tuple[tuple[int, int], list[str]]]:
    """An output per stream in STREAMS, for ``encode_testsrc``."""
    return {
        folder / f"{name}.h264": (stream.size, [
            "-c:v", "libx264", "-preset", stream.preset, "-pix_fmt", stream.pix_fmt, *stream.extra, "-g", str(GOP),
            "-keyint_min", str(GOP), "-sc_threshold", "0", "-bsf:v", "h264_metadata=aud=insert",
        ])
        for name, stream in STREAMS.items()
    }  # fmt: skip


def access_units(data: bytes) -> list[bytes]:
    """Split an Annex B stream at its AUDs and drop them (AUD payload is one byte), like depacketised frames."""
    units = [chunk[1:] for chunk in data.split(AUD)[1:]]
    assert all(unit.startswith((START, b"\x00\x00\x01")) for unit in units)
    return units


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    """Access units of every stream in STREAMS."""
    folder = tmp_path_factory.mktemp("h264")
    encode_testsrc(outputs(folder), FRAMES, RATE)
    return {name: access_units((folder / f"{name}.h264").read_bytes()) for name in STREAMS}


def nal_types(unit: bytes) -> list[int]:
    return [nal[0] & 0x1F for nal in split_nals(unit)]


def with_start_codes(nals: list[bytes], start: bytes = START) -> bytes:
    return b"".join(start + nal for nal in nals)


@needs_ffmpeg
@pytest.mark.parametrize("name", STREAMS)
def test_keyframes_follow_the_encoder_gop(encoded: dict[str, list[bytes]], name: str) -> None:
    units = encoded[name]
    assert len(units) == FRAMES
    assert [i for i, unit in enumerate(units) if is_keyframe(unit)] == list(range(0, FRAMES, GOP))
    assert all((5 in nal_types(unit)) == is_keyframe(unit) for unit in units)


@needs_ffmpeg
@pytest.mark.parametrize("name", STREAMS)
def test_dimensions_come_from_the_sps_of_each_idr(encoded: dict[str, list[bytes]], name: str) -> None:
    units = encoded[name]
    assert [dimensions(unit) for unit in units[::GOP]] == [STREAMS[name].size] * len(units[::GOP])
    assert {dimensions(unit) for i, unit in enumerate(units) if i % GOP} == {None}  # no SPS in P frames


@needs_ffmpeg
@pytest.mark.parametrize("name", STREAMS)
def test_parameter_sets_ride_with_every_idr(encoded: dict[str, list[bytes]], name: str) -> None:
    for unit in encoded[name]:
        found = parameter_sets(unit)
        assert (found is not None) == is_keyframe(unit)
        if found is not None:
            sps, pps = found
            assert (sps[0] & 0x1F, sps[1], pps[0] & 0x1F) == (7, STREAMS[name].profile_idc, 8)
            assert sps in split_nals(unit) and pps in split_nals(unit)


@needs_ffmpeg
@pytest.mark.parametrize("name", ["baseline_322x242", "high444_321x241"])
def test_three_byte_start_codes_split_the_same(encoded: dict[str, list[bytes]], name: str) -> None:
    for unit in encoded[name][: GOP + 1]:
        nals = split_nals(unit)
        short = with_start_codes(nals, b"\x00\x00\x01")
        assert nals and nals[0][0] & 0x80 == 0
        assert split_nals(short) == nals and split_nals(b"\x00\x00" + short + b"\x00\x00") == nals
        assert (is_keyframe(short), dimensions(short)) == (is_keyframe(unit), dimensions(unit))


class BitWriter:
    """MSB-first writer of fixed-width and exp-Golomb fields, finished with rbsp_trailing_bits."""

    def __init__(self) -> None:
        self.bits: list[str] = []

    def u(self, width: int, value: int) -> None:
        self.bits.append(format(value, f"0{width}b"))

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(2 * code.bit_length() - 1, code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def rbsp(self) -> bytes:
        bits = "".join(self.bits) + "1"
        bits += "0" * (-len(bits) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big")


def escape(rbsp: bytes) -> bytes:
    """Insert emulation prevention bytes (7.4.1)."""
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


FULL_4X4 = (1,) * 16  # 9, 10, ... 24
FULL_8X8 = (5, -3) * 32  # 13, 10, 15, 12, ...
USE_DEFAULT = (-8,)  # nextScale 0 on the first coefficient
EARLY_ZERO = (4, -12)  # 12, then 0: the rest repeat 12 without more deltas


@dataclass(frozen=True)
class Sps:
    """Fields of a seq_parameter_set_rbsp() (no VUI); defaults match x264 ultrafast with -g 10."""

    width_mbs: int
    height_units: int
    profile_idc: int = 100
    chroma_format_idc: int = 1
    separate_planes: bool = False
    scaling_lists: tuple[tuple[int, ...] | None, ...] = ()
    poc_type: int = 2
    poc_offset: int = 0
    poc_cycle: tuple[int, ...] = ()
    frame_mbs_only: bool = True
    crop: tuple[int, int, int, int] | None = None

    def _high(self, w: BitWriter) -> None:
        w.ue(self.chroma_format_idc)
        if self.chroma_format_idc == 3:
            w.u(1, self.separate_planes)
        w.ue(0)  # bit_depth_luma_minus8
        w.ue(0)  # bit_depth_chroma_minus8
        w.u(1, 0)  # qpprime_y_zero_transform_bypass_flag
        w.u(1, bool(self.scaling_lists))
        for deltas in self.scaling_lists:
            w.u(1, deltas is not None)
            for delta in deltas or ():
                w.se(delta)

    def _poc(self, w: BitWriter) -> None:
        w.ue(0)  # log2_max_frame_num_minus4
        w.ue(self.poc_type)
        if self.poc_type == 0:
            w.ue(2)
        elif self.poc_type == 1:
            w.u(1, 1)  # delta_pic_order_always_zero_flag: slices keep no delta_pic_order_cnt, like type 2
            w.se(self.poc_offset)
            w.se(-2)
            w.ue(len(self.poc_cycle))
            for offset in self.poc_cycle:
                w.se(offset)

    def nal(self) -> bytes:
        w = BitWriter()
        w.u(8, self.profile_idc)
        w.u(16, 30)  # constraint flags 0, level 3.0
        w.ue(0)  # seq_parameter_set_id
        if self.profile_idc in HIGH_PROFILES:
            self._high(w)
        self._poc(w)
        w.ue(1)  # max_num_ref_frames
        w.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
        w.ue(self.width_mbs - 1)
        w.ue(self.height_units - 1)
        w.u(1, self.frame_mbs_only)
        if not self.frame_mbs_only:
            w.u(1, 0)  # mb_adaptive_frame_field_flag
        w.u(1, 1)  # direct_8x8_inference_flag
        w.u(1, self.crop is not None)
        for offset in self.crop or ():
            w.ue(offset)
        w.u(1, 0)  # vui_parameters_present_flag
        return b"\x67" + escape(w.rbsp())


LISTS_420 = (FULL_4X4, None, USE_DEFAULT, EARLY_ZERO, FULL_4X4, None, FULL_8X8, USE_DEFAULT)
LISTS_444 = (*LISTS_420, None, FULL_8X8, EARLY_ZERO, USE_DEFAULT)
HUGE_POC_OFFSET = 1 << 22  # its exp-Golomb code is a run of zero bytes: needs emulation prevention
POC1 = Sps(21, 16, poc_type=1, poc_offset=HUGE_POC_OFFSET, poc_cycle=(3, -1, 0))

HAND_MADE = {
    "baseline_crop": (Sps(40, 23, profile_idc=66, crop=(0, 0, 0, 4)), (640, 360)),
    "main_poc0_no_crop": (Sps(80, 45, profile_idc=77, poc_type=0), (1280, 720)),
    "high_interlaced": (Sps(40, 12, frame_mbs_only=False, crop=(0, 0, 0, 6)), (640, 360)),
    "high422_interlaced": (Sps(21, 8, 122, 2, frame_mbs_only=False, crop=(1, 6, 0, 3)), (322, 250)),
    "monochrome": (Sps(20, 15, 110, chroma_format_idc=0, crop=(0, 0, 0, 1)), (320, 239)),
    "separate_planes": (Sps(21, 8, 244, 3, True, frame_mbs_only=False, crop=(2, 13, 1, 6)), (321, 242)),
    "scaling_420_poc1": (replace(POC1, scaling_lists=LISTS_420), (336, 256)),
    "scaling_444": (Sps(21, 16, 244, 3, scaling_lists=LISTS_444, crop=(0, 15, 0, 15)), (321, 241)),
    "cavlc444_profile": (Sps(4, 3, 44, 3, crop=(1, 2, 3, 4)), (61, 41)),
}


@pytest.mark.parametrize(("sps", "size"), HAND_MADE.values(), ids=HAND_MADE.keys())
def test_hand_made_sps(sps: Sps, size: tuple[int, int]) -> None:
    nal = sps.nal()
    unit = with_start_codes([nal, b"\x68\xce\x3c\x80", b"\x65\x88\x84"])
    assert dimensions(unit) == size
    assert parameter_sets(unit) == (nal, b"\x68\xce\x3c\x80") and is_keyframe(unit)


def test_emulation_prevention_bytes_are_removed_before_parsing() -> None:
    nal = HAND_MADE["scaling_420_poc1"][0].nal()
    assert b"\x00\x00\x03" in nal
    assert dimensions(START + nal) == (336, 256)


@pytest.mark.parametrize("name", ["baseline_crop", "high422_interlaced", "scaling_444"])
def test_truncated_sps_gives_none(name: str) -> None:
    nal = HAND_MADE[name][0].nal()
    # the last byte holds at most vui_parameters_present_flag and the stop bit; cut more and a field is missing
    assert [dimensions(START + nal[:n]) for n in range(len(nal) - 1)] == [None] * (len(nal) - 1)


SWAPPED_SPS = {  # x264 ultrafast IDRs (4-bit frame_num, no delta_pic_order_cnt) decode under these too
    "baseline_322x242": replace(POC1, scaling_lists=LISTS_420, crop=(0, 7, 0, 7)),
    "high444_321x241": Sps(21, 16, 244, 3, scaling_lists=LISTS_444, crop=(0, 15, 0, 15)),
}


@needs_ffmpeg
@pytest.mark.parametrize(("name", "sps"), SWAPPED_SPS.items(), ids=SWAPPED_SPS.keys())
def test_hand_made_sps_decodes_to_the_same_size_in_ffmpeg(encoded: dict[str, list[bytes]], name: str, sps: Sps) -> None:
    """The SPS writer matches the spec as FFmpeg reads it: swapped into a real IDR, the picture still decodes."""
    nals = [sps.nal() if nal[0] & 0x1F == 7 else nal for nal in split_nals(encoded[name][0])]
    unit = with_start_codes(nals)
    ctx = av.CodecContext.create("h264", "r")
    frames = [*ctx.decode(av.Packet(unit)), *ctx.decode(None)]
    assert [(frame.width, frame.height) for frame in frames] == [STREAMS[name].size]
    assert dimensions(unit) == STREAMS[name].size


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x00\x00\x01", START, START * 3, b"\x67\x42\x00\x1e", START + b"\x67", START + b"\x68\xce"],
)
def test_degenerate_input(data: bytes) -> None:
    assert (dimensions(data), parameter_sets(data), is_keyframe(data)) == (None, None, False)


def test_split_ignores_leading_garbage_and_empty_units() -> None:
    assert split_nals(b"\xff\x01" + START + START + b"\x09\xf0\x00" + b"\x00\x00\x01\x41\x9a\x00\x00") == [
        b"\x09\xf0",
        b"\x41\x9a",
    ]


def test_first_slice_decides_and_non_idr_is_not_key() -> None:
    assert not is_keyframe(with_start_codes([b"\x09\xf0", b"\x41\x9a"]))
    assert not is_keyframe(with_start_codes([HAND_MADE["baseline_crop"][0].nal(), b"\x68\xce"]))  # no slice
    assert is_keyframe(with_start_codes([b"\x06\x05", b"\x65\x88"]))  # IDR without parameter sets


@given(st.lists(st.tuples(st.integers(1, 31), st.binary(max_size=40)), max_size=6))
def test_split_inverts_joining(parts: list[tuple[int, bytes]]) -> None:
    nals = [bytes([nal_type]) + escape(body + b"\x80") for nal_type, body in parts]  # a NAL never ends in 0x00
    assert split_nals(with_start_codes(nals)) == nals


@given(st.binary(max_size=200), st.sampled_from([b"", START, START + b"\x67", START + b"\x67\x64", START + b"\x65"]))
def test_parsers_never_raise(data: bytes, prefix: bytes) -> None:
    unit = prefix + data
    assert isinstance(split_nals(unit), list) and isinstance(is_keyframe(unit), bool)
    assert parameter_sets(unit) is None or unit.startswith(START)
    size = dimensions(unit)
    assert size is None or (size[0] > 0 and size[1] > 0)
