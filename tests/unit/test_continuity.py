"""Drop-until-keyframe on real libx264 / libvpx streams: what the gate lets through decodes without errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import pytest
from support.media import make_av1_ivf, make_h264, make_h265, make_vp8_ivf, make_vp9_ivf, read_frames
from test_av1 import frame as layer_frame
from test_av1 import sequence_header

from trackegress.media import av1, h264
from trackegress.media.continuity import KeyframeGate
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.sinks.muxer import Muxer

GOP = 10
FRAMES = 40  # keyframes at 0, 10, 20, 30
STEP = 3000  # 90 kHz ticks per frame at 30 fps
EXT = {Codec.H264: "mp4", Codec.VP8: "webm", Codec.VP9: "webm", Codec.AV1: "webm", Codec.H265: "mp4"}
CODECS = list(EXT)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> dict[Codec, list[EncodedFrame]]:
    folder = tmp_path_factory.mktemp("continuity")
    seconds = FRAMES / 30
    files = {
        Codec.H264: make_h264(folder / "a.h264", seconds=seconds, size=(320, 180), gop=GOP),
        Codec.VP8: make_vp8_ivf(folder / "a.ivf", seconds=seconds, size=(320, 180), gop=GOP),
        Codec.VP9: make_vp9_ivf(folder / "b.ivf", seconds=seconds, size=(320, 180), gop=GOP),
        Codec.AV1: make_av1_ivf(folder / "c.ivf", seconds=seconds, size=(320, 180), gop=GOP),
        Codec.H265: make_h265(folder / "a.h265", seconds=seconds, size=(320, 180), gop=GOP),
    }
    return {
        codec: [EncodedFrame(f.data, i * STEP, f.keyframe) for i, f in enumerate(read_frames(path))]
        for codec, path in files.items()
    }


class Requests:
    def __init__(self) -> None:
        self.count = 0
        self.now = 0.0

    def __call__(self) -> None:
        self.count += 1

    def clock(self) -> float:
        return self.now


def feed(gate: KeyframeGate, frames: list[EncodedFrame], lost: set[int] = frozenset(), flag: bool = True,
         requests: Requests | None = None) -> list[int]:
    """Indexes of the frames the gate admits when the frames in ``lost`` never arrive; with ``flag`` the
    transport marks the frame after each loss ``contiguous=False`` (str0m), without it nothing does (aiortc)."""
    admitted, after_loss = [], False
    for i, frame in enumerate(frames):
        if i in lost:
            after_loss = True
            continue
        if requests is not None:
            requests.now = i / 30
        sent = EncodedFrame(frame.data, frame.timestamp, frame.keyframe, contiguous=not (flag and after_loss))
        after_loss = False
        if gate.admit(sent):
            admitted.append(i)
    return admitted


def mux(codec: Codec, frames: list[EncodedFrame], path: Path) -> Path:
    muxer = Muxer(path, codec)
    for frame in frames:
        muxer.write(frame)
    muxer.close()
    return path


def decode_errors(path: Path) -> str:
    done = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True, text=True)
    return done.stderr.strip()


def pictures(path: Path) -> list[bytes]:
    """The decoded pictures in presentation order, as raw YUV bytes."""
    with av.open(str(path)) as container:
        decoded = sorted(container.decode(video=0), key=lambda f: int(f.pts))
        return [f.to_ndarray().tobytes() for f in decoded]


def same_pictures(codec: Codec, frames: list[EncodedFrame], kept: list[int], path: Path) -> bool:
    """Whether each kept frame decodes, in a file of only the kept frames, to the same picture as in the whole
    stream: true only if no kept frame references a frame that is not there (dav1d refuses such a frame)."""
    whole = pictures(mux(codec, frames, path.with_name("whole." + EXT[codec])))
    try:
        part = pictures(mux(codec, [frames[i] for i in kept], path))
    except av.error.InvalidDataError:
        return False
    return len(part) == len(kept) and all(picture == whole[i] for picture, i in zip(part, kept, strict=True))


@pytest.mark.parametrize("codec", CODECS)
def test_a_clean_stream_passes_whole(codec: Codec, streams: dict[Codec, list[EncodedFrame]]) -> None:
    gate = KeyframeGate(codec)
    assert feed(gate, streams[codec]) == list(range(FRAMES))
    assert gate.stats.gaps == gate.stats.dropped == 0


@pytest.mark.parametrize("codec", CODECS)
def test_a_loss_drops_until_the_next_keyframe_and_asks_for_one(
    codec: Codec, streams: dict[Codec, list[EncodedFrame]], tmp_path: Path
) -> None:
    requests = Requests()
    gate = KeyframeGate(codec, requests, clock=requests.clock)
    frames = streams[codec]
    admitted = feed(gate, frames, lost={5, 23}, requests=requests)
    assert admitted == [*range(5), *range(10, 23), *range(30, FRAMES)]
    assert (gate.stats.gaps, gate.stats.dropped, gate.stats.resyncs) == (2, 4 + 6, 2)
    assert requests.count == gate.stats.keyframe_requests == 2  # one per gap: the drops are < 0.5 s apart
    # what the gate keeps decodes to exactly the publisher's pictures; without it, frames after a loss do not
    assert same_pictures(codec, frames, admitted, tmp_path / f"gated.{EXT[codec]}")
    assert decode_errors(tmp_path / f"gated.{EXT[codec]}") == ""
    everything = [i for i in range(FRAMES) if i not in {5, 23}]
    assert not same_pictures(codec, frames, everything, tmp_path / f"ungated.{EXT[codec]}")


def test_h264_lost_reference_is_found_from_frame_num_when_the_transport_says_nothing(
    streams: dict[Codec, list[EncodedFrame]], tmp_path: Path
) -> None:
    frames = streams[Codec.H264]
    bits = h264.frame_num_bits(frames[0].data)
    assert bits is not None
    nums = [h264.slice_frame_num(f.data, bits) for f in frames[:GOP]]
    assert nums == [(i, True) for i in range(GOP)]  # every picture is a reference one, frame_num counts up
    gate = KeyframeGate(Codec.H264)
    admitted = feed(gate, frames, lost={5, 23}, flag=False)
    assert admitted == [*range(5), *range(10, 23), *range(30, FRAMES)]
    assert same_pictures(Codec.H264, frames, admitted, tmp_path / "gated.mp4")


def test_an_av1_unit_of_another_spatial_layer_than_the_keyframes_waits_for_the_next_keyframe() -> None:
    # Chromium's L3T3_KEY through the SFU: a keyframe unit cut at layer 0 (320x180), inter units of layer 0, then
    # units of layer 1 alone (the SFU moved up without a keyframe: they reference layer-1 pictures never sent),
    # until a keyframe unit with layers 0 and 1.
    key = sequence_header((1280, 720), [0x7FF, 0x3FF, 0x1FF])
    units = [key + layer_frame(0, True), layer_frame(0, False), layer_frame(0, False), layer_frame(1, False),
             layer_frame(1, False), key + layer_frame(0, True) + layer_frame(1, False), layer_frame(1, False),
             layer_frame(0, False)]
    requests = Requests()
    gate = KeyframeGate(Codec.AV1, requests, clock=requests.clock)
    admitted = feed(gate, [EncodedFrame(u, i * STEP, av1.is_keyframe(u)) for i, u in enumerate(units)])
    assert admitted == [0, 1, 2, 5, 6]
    assert (gate.stats.gaps, gate.stats.dropped, requests.count) == (3, 3, 1)


@pytest.mark.parametrize("codec", CODECS)
def test_the_file_starts_on_a_keyframe(codec: Codec, streams: dict[Codec, list[EncodedFrame]]) -> None:
    requests = Requests()
    gate = KeyframeGate(codec, requests, clock=requests.clock)
    admitted = feed(gate, streams[codec][3:], requests=requests)
    assert admitted[0] == GOP - 3
    assert gate.stats.skipped == GOP - 3 and gate.stats.dropped == 0 and gate.stats.resyncs == 0
    assert requests.count == 1


def test_keyframe_requests_are_rate_limited_while_waiting(streams: dict[Codec, list[EncodedFrame]]) -> None:
    # a keyframe every 10 frames, but lose every keyframe after the first: 1 s with no recovery point
    requests = Requests()
    gate = KeyframeGate(Codec.VP8, requests, min_interval=0.5, clock=requests.clock)
    admitted = feed(gate, streams[Codec.VP8], lost={2, 10, 20, 30}, requests=requests)
    assert admitted == [0, 1]
    assert gate.waiting
    assert requests.count == 3  # at 3/30 s, then ≥ 0.5 s later (18/30), then (33/30)


def test_a_keyframe_right_after_a_loss_resyncs_without_dropping(streams: dict[Codec, list[EncodedFrame]]) -> None:
    gate = KeyframeGate(Codec.VP8)
    assert feed(gate, streams[Codec.VP8], lost={9}) == [i for i in range(FRAMES) if i != 9]
    assert (gate.stats.gaps, gate.stats.dropped, gate.stats.resyncs) == (1, 0, 1)


def test_audio_passes_and_its_gaps_are_counted() -> None:
    gate = KeyframeGate(Codec.OPUS, lambda: pytest.fail("no keyframe requests for audio"))
    frames = [EncodedFrame(b"\xf8\xff\xfe", i * 960, True, contiguous=i not in (3, 7)) for i in range(10)]
    assert all(gate.admit(f) for f in frames)
    assert gate.stats.gaps == 2 and gate.stats.dropped == 0
