"""Sample media made with the ffmpeg CLI, and a reader that returns their encoded frames (no decoding)."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

FFMPEG = "ffmpeg"
H264_DEFAULT_FPS = 30
MEDIA_CACHE = Path(os.environ.get("TRACKEGRESS_MEDIA_CACHE", Path.home() / ".cache" / "trackegress" / "test-media"))


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded frame as stored in the file (an Annex B access unit for H.264)."""

    data: bytes
    pts_seconds: float
    keyframe: bool


def _ffmpeg(*args: str) -> None:
    """Run ffmpeg with ``args`` (the output path last), or copy what the same arguments made before.

    The sample files are deterministic for one ffmpeg build: each is made once per machine into ``MEDIA_CACHE``
    (written to a temporary name, then renamed, so parallel test workers never see half a file).
    """
    *options, output = args
    suffix = Path(output).suffix
    key = hashlib.sha256("\0".join((_ffmpeg_version(), *options, suffix)).encode()).hexdigest()[:24]
    cached = MEDIA_CACHE / f"{key}{suffix}"
    if not cached.exists():
        MEDIA_CACHE.mkdir(parents=True, exist_ok=True)
        partial = MEDIA_CACHE / f"{key}.{os.getpid()}.partial{suffix}"
        subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *options, str(partial)],
                       check=True)
        os.replace(partial, cached)
    shutil.copyfile(cached, output)


@functools.cache
def _ffmpeg_version() -> str:
    return subprocess.run([FFMPEG, "-version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]


def _testsrc(seconds: float, fps: int, size: tuple[int, int]) -> list[str]:
    width, height = size
    return ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}"]


def testsrc_command(outputs: Mapping[Path, tuple[tuple[int, int], Sequence[str]]], frames: int, rate: int) -> list[str]:
    """One ffmpeg run (a single start-up) for several outputs (path: (size, output options)): a ``testsrc`` input per
    size, ``frames`` frames at ``rate``, and each output encoded from the input of its size.

    Inputs end by duration: ``-frames:v`` per output with several inputs stalls ffmpeg on encoder delay.
    """
    sizes = sorted({size for size, _ in outputs.values()})
    command = [FFMPEG, "-v", "error"]
    for width, height in sizes:
        command += ["-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={rate}:duration={frames / rate}"]
    for path, (size, options) in outputs.items():
        command += ["-map", f"{sizes.index(size)}:v", *options, str(path)]
    return command


def encode_testsrc(outputs: Mapping[Path, tuple[tuple[int, int], Sequence[str]]], frames: int, rate: int) -> None:
    """Run ``testsrc_command``; fails the test (with ffmpeg's errors) if ffmpeg does."""
    done = subprocess.run(testsrc_command(outputs, frames, rate), capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()


def make_opus_ogg(
    path: Path, seconds: float = 3.0, left_hz: int = 440, right_hz: int = 660, bitrate: str = "64k"
) -> Path:
    """A stereo tone (different frequency per channel): libopus, 48 kHz, 20 ms frames, in Ogg."""
    _ffmpeg(
        "-f", "lavfi", "-i", f"sine=frequency={left_hz}:sample_rate=48000:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency={right_hz}:sample_rate=48000:duration={seconds}",
        "-filter_complex", "[0:a][1:a]join=inputs=2:channel_layout=stereo[a]", "-map", "[a]",
        "-c:a", "libopus", "-b:a", bitrate, "-frame_duration", "20", "-application", "audio",
        "-f", "ogg", str(path),
    )  # fmt: skip
    return path


def make_h264(
    path: Path, seconds: float = 3.0, fps: int = 30, size: tuple[int, int] = (640, 360), gop: int = 30
) -> Path:
    """Raw Annex B H.264: Constrained Baseline (42c01f, fits 42e01f) level 3.1, no B-frames, SPS/PPS on every IDR."""
    _ffmpeg(
        *_testsrc(seconds, fps, size),
        "-c:v", "libx264", "-profile:v", "baseline", "-level", "3.1", "-pix_fmt", "yuv420p",
        "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-bf", "0",
        "-x264-params", "repeat-headers=1",
        "-f", "h264", str(path),
    )  # fmt: skip
    return path


def make_vp8_ivf(
    path: Path, seconds: float = 3.0, fps: int = 30, size: tuple[int, int] = (640, 360), gop: int = 30
) -> Path:
    """VP8 (libvpx, realtime, no alt-ref frames) in IVF."""
    _ffmpeg(
        *_testsrc(seconds, fps, size),
        "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M",
        "-g", str(gop), "-keyint_min", str(gop), "-auto-alt-ref", "0", "-lag-in-frames", "0",
        "-f", "ivf", str(path),
    )  # fmt: skip
    return path


def make_vp9_ivf(
    path: Path, seconds: float = 3.0, fps: int = 30, size: tuple[int, int] = (640, 360), gop: int = 30
) -> Path:
    """VP9 profile 0 (libvpx-vp9, realtime, no alt-ref frames: one frame per picture) in IVF."""
    _ffmpeg(
        *_testsrc(seconds, fps, size),
        "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M",
        "-g", str(gop), "-keyint_min", str(gop), "-auto-alt-ref", "0", "-lag-in-frames", "0",
        "-f", "ivf", str(path),
    )  # fmt: skip
    return path


def make_av1_ivf(
    path: Path, seconds: float = 3.0, fps: int = 30, size: tuple[int, int] = (640, 360), gop: int = 30
) -> Path:
    """AV1 main profile (libaom-av1, realtime usage: no hidden frames) in IVF, a sequence header on every keyframe."""
    _ffmpeg(
        *_testsrc(seconds, fps, size),
        "-c:v", "libaom-av1", "-usage", "realtime", "-cpu-used", "8", "-b:v", "1M",
        "-g", str(gop), "-keyint_min", str(gop), "-lag-in-frames", "0",
        "-f", "ivf", str(path),
    )  # fmt: skip
    return path


def make_h265(
    path: Path, seconds: float = 3.0, fps: int = 30, size: tuple[int, int] = (640, 360), gop: int = 30
) -> Path:
    """Raw Annex B H.265 (libx265 main, no B-frames), VPS/SPS/PPS on every IDR."""
    _ffmpeg(
        *_testsrc(seconds, fps, size),
        "-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-x265-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1:log-level=error",
        "-f", "hevc", str(path),
    )  # fmt: skip
    return path


def make_g711_wav(path: Path, codec: str = "pcm_mulaw", seconds: float = 3.0, hz: int = 440) -> Path:
    """A mono tone as G.711 (``pcm_mulaw`` or ``pcm_alaw``), 8 kHz, in WAV."""
    _ffmpeg(
        "-f", "lavfi", "-i", f"sine=frequency={hz}:sample_rate=8000:duration={seconds}",
        "-c:a", codec, "-ar", "8000", "-ac", "1", "-f", "wav", str(path),
    )  # fmt: skip
    return path


def read_frames(path: Path, h264_fps: int = H264_DEFAULT_FPS) -> list[Frame]:
    """Every encoded frame of the file's first stream, in order, with presentation time in seconds.

    Raw H.264 has no timestamps: frames are spaced by the demuxer's frame duration (from the SPS timing
    info x264 writes), else by ``1 / h264_fps``. Ogg Opus keeps the container's times (the first is
    negative by the pre-skip).
    """
    with av.open(str(path)) as container:
        stream = container.streams[0]
        packets = [p for p in container.demux(stream) if p.size]
    if not packets:
        return []
    if packets[0].pts is None:
        step = _frame_step(packets[0].duration, stream.time_base, h264_fps)
        return [Frame(bytes(p), float(i * step), bool(p.is_keyframe)) for i, p in enumerate(packets)]
    base = stream.time_base or Fraction(1, 1)
    return [Frame(bytes(p), float((p.pts or 0) * base), bool(p.is_keyframe)) for p in packets]


def _frame_step(duration: int | None, time_base: Fraction | None, fps: int) -> Fraction:
    if duration and time_base:
        return duration * time_base
    return Fraction(1, fps)


def codec_name(path: Path) -> str:
    """The FFmpeg codec name of the file's first stream (``opus``, ``h264``, ``vp8``)."""
    with av.open(str(path)) as container:
        return str(container.streams[0].codec_context.name)


def video_size(path: Path) -> tuple[int, int]:
    """Width and height of the file's first (video) stream, from its headers."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return int(stream.width), int(stream.height)


def h264_nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit (3- or 4-byte start codes), split the way aiortc does."""
    units: list[bytes] = []
    i = data.find(b"\x00\x00\x01")
    while i != -1:
        start = i + 3
        i = data.find(b"\x00\x00\x01", start)
        end = len(data) if i == -1 else (i - 1 if data[i - 1] == 0 else i)
        units.append(data[start:end])
    return units


def h264_canonical(data: bytes) -> bytes:
    """The access unit with 4-byte start codes: what an RTP depacketizer (aiortc's included) rebuilds."""
    return b"".join(b"\x00\x00\x00\x01" + unit for unit in h264_nal_units(data))
