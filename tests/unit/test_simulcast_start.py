"""Simulcast as the SFU forwards it: low layer first, then a switch up (keyframe a tick later), later switches
down and up. The file starts on the top layer, states the largest size, and decodes start to end."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
from support.media import h264_canonical, make_h264, make_vp8_ivf, read_frames

from trackegress.media import h264, vp8
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.sinks.file import FileSink

TOP, LOW = (1280, 720), (320, 180)
STEP = 3000  # 90 kHz ticks per frame at 30 fps


def layer(codec: Codec, folder: Path, size: tuple[int, int], seconds: float = 6.0) -> list[bytes]:
    """Frames of one layer: a keyframe every 10 frames, 30 fps."""
    if codec is Codec.VP8:
        path = make_vp8_ivf(folder / f"{size[0]}.ivf", seconds=seconds, size=size, gop=10)
        return [f.data for f in read_frames(path)]
    path = make_h264(folder / f"{size[0]}.h264", seconds=seconds, size=size, gop=10)
    return [h264_canonical(f.data) for f in read_frames(path)]


def keyframe(codec: Codec, data: bytes) -> bool:
    return h264.is_keyframe(data) if codec is Codec.H264 else vp8.is_keyframe(data)


def sfu(codec: Codec, runs: list[tuple[list[bytes], int, int]]) -> list[EncodedFrame]:
    """Frames as one subscriber gets them: ``(layer, first, count)`` runs, each switch on a keyframe stamped one
    tick after the previous frame (as LiveKit's munger does), then 30 fps again."""
    out: list[EncodedFrame] = []
    ts = 1_000_000
    for frames, first, count in runs:
        for i, data in enumerate(frames[first:first + count]):
            if out:
                ts += 1 if i == 0 else STEP
            out.append(EncodedFrame(data, ts, keyframe(codec, data)))
    return out


def probe(path: Path, entries: str) -> list[str]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", entries, "-of",
                           "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.rstrip(",") for line in out.split()]  # H.264 frames with side data end in an empty column


def header_size(path: Path) -> tuple[int, int]:
    """The picture size the container header states (WebM PixelWidth/PixelHeight, MP4 tkhd), not the decoder's."""
    data = path.read_bytes()[:4096]
    if path.suffix == ".webm":
        width = data.index(b"\xb0\x82") + 2  # PixelWidth, 2-byte value
        height = data.index(b"\xba\x82") + 2  # PixelHeight
        return int.from_bytes(data[width:width + 2], "big"), int.from_bytes(data[height:height + 2], "big")
    tkhd = data.index(b"tkhd") + 4
    size_at = tkhd + (88 if data[tkhd] == 1 else 76)  # width, height: 16.16 fixed point
    return int.from_bytes(data[size_at:size_at + 2], "big"), int.from_bytes(data[size_at + 4:size_at + 6], "big")


def decode_errors(path: Path) -> str:
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                          text=True).stderr.strip()


async def record(codec: Codec, path: Path, frames: list[EncodedFrame], top: tuple[int, int] | None) -> FileSink:
    sink = FileSink(path, codec, top=top)
    for frame in frames:
        sink.write(frame)
    await sink.close()
    return sink


@pytest.fixture(scope="module", params=[Codec.VP8, Codec.H264], ids=["vp8", "h264"])
def layers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Codec, list[bytes],
                                                                                               list[bytes]]:
    folder = tmp_path_factory.mktemp(request.param.name)
    return request.param, layer(request.param, folder, TOP), layer(request.param, folder, LOW)


def ext(codec: Codec) -> str:
    return "webm" if codec is Codec.VP8 else "mp4"


async def test_recording_starts_on_the_top_layer(
    layers: tuple[Codec, list[bytes], list[bytes]], tmp_path: Path
) -> None:
    codec, top, low = layers
    out = tmp_path / f"out.{ext(codec)}"
    sink = await record(codec, out, sfu(codec, [(low, 0, 25), (top, 30, 60)]), TOP)
    sizes = probe(out, "frame=width,height")
    assert sizes == ["1280,720"] * 60  # the low layer's 25 frames before the switch are not recorded
    assert header_size(out) == TOP
    assert decode_errors(out) == ""
    assert sink.layer_switches == 0


async def test_without_the_top_layer_the_recording_starts_after_the_wait(
    layers: tuple[Codec, list[bytes], list[bytes]], tmp_path: Path
) -> None:
    codec, _, low = layers
    out = tmp_path / f"out.{ext(codec)}"
    await record(codec, out, sfu(codec, [(low, 0, 180)]), TOP)  # 6 s of the low layer only
    sizes = probe(out, "frame=width,height")
    assert sizes == ["320,180"] * 180  # held from the first keyframe, written at the 5 s fallback
    assert header_size(out) == TOP  # the header states the largest announced size
    assert decode_errors(out) == ""


async def test_short_low_layer_recording_is_kept(
    layers: tuple[Codec, list[bytes], list[bytes]], tmp_path: Path
) -> None:
    codec, _, low = layers
    out = tmp_path / f"out.{ext(codec)}"
    await record(codec, out, sfu(codec, [(low, 0, 30)]), TOP)  # 1 s, ended before the wait: written at close
    assert probe(out, "frame=width,height") == ["320,180"] * 30


async def test_layer_switches_mid_recording_decode(
    layers: tuple[Codec, list[bytes], list[bytes]], tmp_path: Path
) -> None:
    codec, top, low = layers
    out = tmp_path / f"out.{ext(codec)}"
    runs = [(top, 0, 30), (low, 30, 30), (top, 60, 30)]
    sink = await record(codec, out, sfu(codec, runs), TOP)
    assert decode_errors(out) == ""
    sizes = probe(out, "frame=width,height")
    # The last frame before each switch is superseded by the new layer's keyframe of the same instant.
    assert sizes == ["1280,720"] * 29 + ["320,180"] * 29 + ["1280,720"] * 30
    assert (sink.layer_switches, sink.superseded) == (2, 2)
    times = [float(t) for t in probe(out, "packet=pts_time")]
    assert all(b > a for a, b in itertools.pairwise(times))
