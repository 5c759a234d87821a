"""VP9 keyframes and sizes from libvpx-vp9 output (FFmpeg), single frames and superframes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support.media import Frame, read_frames

from trackegress.media import vp9


def encode(path: Path, size: tuple[int, int], *extra: str) -> list[Frame]:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate=30:duration=1",
         "-c:v", "libvpx-vp9", "-g", "10", "-b:v", "400k", "-cpu-used", "8", *extra, "-f", "ivf", str(path)],
        check=True,
    )
    return read_frames(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vp9")


@pytest.mark.parametrize("size", [(640, 360), (322, 242)])
def test_keyframes_and_sizes_match_ffmpeg(folder: Path, size: tuple[int, int]) -> None:
    frames = encode(folder / f"{size[0]}.ivf", size, "-deadline", "realtime")
    assert [vp9.is_keyframe(f.data) for f in frames] == [f.keyframe for f in frames]
    assert sum(f.keyframe for f in frames) == 3
    assert {vp9.dimensions(f.data) for f in frames if f.keyframe} == {size}
    assert {vp9.dimensions(f.data) for f in frames if not f.keyframe} == {None}


def superframe(*frames: bytes) -> bytes:
    """Frames joined with an Annex B index (4-byte sizes)."""
    marker = 0xC0 | (3 << 3) | (len(frames) - 1)
    index = bytes([marker]) + b"".join(len(f).to_bytes(4, "little") for f in frames) + bytes([marker])
    return b"".join(frames) + index


def test_a_superframe_states_its_largest_layer(folder: Path) -> None:
    """As an SVC picture: the base layer's keyframe first, then a larger layer; the size is the largest."""
    low = encode(folder / "low.ivf", (320, 180), "-deadline", "realtime")[0].data
    high = encode(folder / "high.ivf", (1280, 720), "-deadline", "realtime")[0].data
    picture = superframe(low, high)
    assert vp9.split_superframe(picture) == [low, high]
    assert vp9.is_keyframe(picture)
    assert vp9.dimensions(picture) == (1280, 720)


def test_garbage_is_neither_keyframe_nor_sized() -> None:
    for data in (b"", b"\x00", b"\xff" * 8, superframe(b"\x82\x49")):
        assert not vp9.is_keyframe(data)
        assert vp9.dimensions(data) is None
