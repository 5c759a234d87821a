"""VP8 key frames and dimensions on real libvpx streams (ffmpeg CLI, IVF) and hand-made frames."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.media import encode_testsrc

from trackegress.media.vp8 import dimensions, is_keyframe

FRAMES = 21
RATE = 25
GOP = 10

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")


@dataclass(frozen=True)
class Stream:
    encoder: str
    size: tuple[int, int]
    pix_fmt: str = "yuv420p"


STREAMS = {
    "vp8_640x360": Stream("libvpx", (640, 360)),
    "vp8_321x241": Stream("libvpx", (321, 241)),
}
VP8 = list(STREAMS)


def outputs(folder: Path) -> dict[Path, tuple[tuple[int, int], list[str]]]:
    """An output per stream in STREAMS, for ``encode_testsrc``."""
    return {
        folder / f"{name}.ivf": (stream.size, [
            "-c:v", stream.encoder, "-pix_fmt", stream.pix_fmt, "-deadline", "realtime", "-cpu-used", "8",
            "-lag-in-frames", "0", "-auto-alt-ref", "0", "-g", str(GOP), "-keyint_min", str(GOP),
        ])
        for name, stream in STREAMS.items()
    }  # fmt: skip


def ivf_frames(data: bytes, stream: Stream) -> list[bytes]:
    """Frames of an IVF file: a 32-byte header (DKIF, fourcc, size), then a 12-byte header per frame."""
    assert (data[:4], data[8:12]) == (b"DKIF", b"VP80")
    assert (int.from_bytes(data[12:14], "little"), int.from_bytes(data[14:16], "little")) == stream.size
    frames, pos = [], int.from_bytes(data[6:8], "little")
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "little")
        frames.append(data[pos + 12 : pos + 12 + size])
        pos += 12 + size
    assert pos == len(data)
    return frames


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    """Frames of every stream in STREAMS."""
    folder = tmp_path_factory.mktemp("vpx")
    encode_testsrc(outputs(folder), FRAMES, RATE)
    return {name: ivf_frames((folder / f"{name}.ivf").read_bytes(), STREAMS[name]) for name in STREAMS}


@needs_ffmpeg
@pytest.mark.parametrize("name", VP8)
def test_vp8_keyframes_and_dimensions(encoded: dict[str, list[bytes]], name: str) -> None:
    frames = encoded[name]
    assert len(frames) == FRAMES
    assert [i for i, frame in enumerate(frames) if is_keyframe(frame)] == list(range(0, FRAMES, GOP))
    assert [dimensions(frame) for frame in frames[::GOP]] == [STREAMS[name].size] * len(frames[::GOP])
    assert {dimensions(frame) for i, frame in enumerate(frames) if i % GOP} == {None}


@needs_ffmpeg
def test_truncated_keyframes_give_none(encoded: dict[str, list[bytes]]) -> None:
    vp8_key = encoded["vp8_321x241"][0]
    assert [dimensions(vp8_key[:n]) for n in range(10)] == [None] * 10
    assert dimensions(vp8_key[:10]) == (321, 241)


def test_vp8_scaling_bits_are_dropped() -> None:
    key = b"\x50\x42\x00\x9d\x01\x2a" + (0xC000 | 640).to_bytes(2, "little") + (0x4000 | 360).to_bytes(2, "little")
    assert (is_keyframe(key), dimensions(key)) == (True, (640, 360))
    assert dimensions(key[:6] + bytes(4)) is None


@pytest.mark.parametrize(
    "frame",
    [
        b"\x51\x42\x00\x9d\x01\x2a\x80\x02\x68\x01",  # inter frame: bit 0 set
        b"\x50\x42\x00\x9d\x01\x2b\x80\x02\x68\x01",  # wrong start code
        b"\x50",
        b"",
    ],
)
def test_vp8_not_keyframes(frame: bytes) -> None:
    assert (is_keyframe(frame), dimensions(frame)) == (False, None)


@given(st.binary(max_size=64), st.sampled_from([b"", b"\x50\x42\x00\x9d\x01\x2a", b"\x82\x49\x83\x42", b"\xb2"]))
def test_parsers_never_raise(data: bytes, prefix: bytes) -> None:
    frame = prefix + data
    assert isinstance(is_keyframe(frame), bool)
    size = dimensions(frame)
    assert size is None or (0 < size[0] <= 1 << 14 and 0 < size[1] <= 1 << 14)
