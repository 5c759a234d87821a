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
