"""VP9 keyframes and sizes from libvpx-vp9 output (FFmpeg), single frames and superframes."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
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


def decoded(frames: list[bytes], path: Path, size: tuple[int, int]) -> list[bytes]:
    """What FFmpeg's own VP9 decoder outputs for these pictures (in WebM): one entry per shown frame."""
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_mux_stream("vp9", width=size[0], height=size[1])
        stream.time_base = Fraction(1, 1000)
        for i, data in enumerate(frames):
            packet = av.Packet(data)
            packet.pts = packet.dts = i * 33
            packet.time_base, packet.stream = stream.time_base, stream
            container.mux(packet)
    with av.open(str(path)) as container:
        return [f.to_ndarray().tobytes() for f in container.decode(video=0)]


def test_lower_layers_hidden_decode_to_the_same_pictures(folder: Path) -> None:
    """An SVC-like keyframe picture (320x180 and 640x360 keyframes, error resilient): with the lower one hidden,
    FFmpeg's own decoder outputs one picture, the top layer's (the inter-frame rewrite is checked on Chromium's
    L3T3_KEY stream: tests/e2e/test_clients_browser.py)."""
    options = ("-deadline", "realtime", "-error-resilient", "default")
    low = encode(folder / "er-low.ivf", (320, 180), *options)
    high = encode(folder / "er-high.ivf", (640, 360), *options)
    picture = superframe(low[0].data, high[0].data)
    assert len(decoded([picture], folder / "both.webm", (640, 360))) == 2  # FFmpeg shows both as they are
    hidden = vp9.show_top_layer_only(picture)
    assert vp9.split_superframe(hidden)[1] == high[0].data  # the top layer is untouched
    assert decoded([hidden], folder / "hidden.webm", (640, 360)) == decoded([high[0].data], folder / "top.webm",
                                                                            (640, 360))
    assert vp9.is_keyframe(hidden) and vp9.dimensions(hidden) == (640, 360)


def test_frames_that_are_not_error_resilient_stay_shown(folder: Path) -> None:
    """Hiding a frame that is not error resilient would change how the next one decodes: left as it is."""
    low = encode(folder / "plain-low.ivf", (320, 180), "-deadline", "realtime")[0].data
    high = encode(folder / "er-high.ivf", (640, 360), "-deadline", "realtime", "-error-resilient", "default")[0].data
    assert low[0] & 0x01 == 0 and high[0] & 0x01 == 1  # error_resilient_mode (profile 0 keyframes)
    picture = superframe(low, high)
    assert vp9.show_top_layer_only(picture) == picture
    assert vp9.show_top_layer_only(low) == low
