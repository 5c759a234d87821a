"""H.265 keyframes and sizes from libx265 output (FFmpeg)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import pytest

from trackegress.media import h265


@pytest.mark.parametrize("size", [(640, 360), (1280, 720), (322, 242)])
def test_keyframes_and_sizes_match_ffmpeg(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "out.h265"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate=30:duration=1",
         "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "keyint=10:min-keyint=10:bframes=0:log-level=0",
         "-f", "hevc", str(path)], check=True,
    )
    with av.open(str(path), format="hevc") as container:
        packets = [p for p in container.demux() if p.size]
        units = [(bytes(p), bool(p.is_keyframe)) for p in packets]
    assert [h265.is_keyframe(data) for data, _ in units] == [key for _, key in units]
    assert sum(key for _, key in units) == 3
    assert {h265.dimensions(data) for data, key in units if key} == {size}


def test_garbage_is_neither_keyframe_nor_sized() -> None:
    for data in (b"", b"\x00\x00\x01", b"\x00\x00\x01\x42\x01\xff", b"\x00\x00\x01\x26\x01"):
        assert h265.dimensions(data) is None
    assert not h265.is_keyframe(b"\x00\x00\x01\x02\x01\xaa")  # TRAIL_R
    assert h265.is_keyframe(b"\x00\x00\x01\x26\x01\xaa")  # IDR_W_RADL
