"""AV1 keyframes and sizes from libaom-av1 output (FFmpeg, low-overhead OBU stream)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import pytest

from trackegress.media import av1


@pytest.mark.parametrize("size", [(640, 360), (322, 242)])
def test_keyframes_and_sizes_match_ffmpeg(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "out.obu"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate=30:duration=1",
         "-c:v", "libaom-av1", "-usage", "realtime", "-cpu-used", "8", "-g", "10", "-b:v", "300k",
         "-f", "obu", str(path)], check=True,
    )
    with av.open(str(path), format="obu") as container:
        units = [(bytes(p), bool(p.is_keyframe)) for p in container.demux() if p.size]
    assert [av1.is_keyframe(data) for data, _ in units] == [key for _, key in units]
    assert sum(key for _, key in units) == 3
    assert {av1.dimensions(data) for data, key in units if key} == {size}
    assert {av1.dimensions(data) for data, key in units if not key} == {None}


def test_garbage_is_neither_keyframe_nor_sized() -> None:
    for data in (b"", b"\x80", b"\x0a\x05\x00", b"\x32\xff\xff"):
        assert not av1.is_keyframe(data)
        assert av1.dimensions(data) is None


def sequence_header(size: tuple[int, int], idcs: list[int]) -> bytes:
    """A sequence header OBU with ``idcs`` as operating points (no timing info; 11-bit sizes)."""
    fields = [(0, 3), (0, 1), (0, 1), (0, 1), (0, 1), (len(idcs) - 1, 5)]  # profile .. operating_points_cnt_minus_1
    for idc in idcs:
        fields += [(idc, 12), (5, 5)]  # operating_point_idc, seq_level_idx 5 (no tier bit)
    fields += [(10, 4), (10, 4), (size[0] - 1, 11), (size[1] - 1, 11)]
    bits = "".join(f"{value:0{width}b}" for value, width in fields)
    bits += "0" * (-len(bits) % 8)
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return bytes([av1.OBU_SEQUENCE_HEADER << 3 | 0x02, len(payload)]) + payload


def frame(spatial_id: int, key: bool) -> bytes:
    """An OBU_FRAME of one spatial layer (extension header), its frame header starting KEY_FRAME or INTER_FRAME."""
    payload = bytes([0x00 if key else 0x20]) + bytes(7)
    return bytes([av1.OBU_FRAME << 3 | 0x04 | 0x02, spatial_id << 3, len(payload)]) + payload


@pytest.mark.parametrize(("layers", "size"), [(3, (1280, 720)), (2, (640, 360)), (1, (320, 180))])
def test_svc_unit_size_is_its_highest_layer(layers: int, size: tuple[int, int]) -> None:
    """L3T3 (operating point 0 has spatial layers 0-2): a keyframe unit the SFU cut after ``layers`` layers."""
    l3t3 = [0x7FF, 0x3FF, 0x1FF]
    unit = sequence_header((1280, 720), l3t3) + b"".join(frame(s, s == 0) for s in range(layers))
    assert av1.is_keyframe(unit)
    assert av1.dimensions(unit) == size
    assert av1.dimensions(sequence_header((1280, 720), [0]) + frame(0, True)) == (1280, 720)  # one layer
    assert av1.dimensions(sequence_header((1280, 720), l3t3) + frame(0, False)) is None  # not a keyframe
