"""The muxer writes the published frames unchanged, with RTP time, into files FFmpeg decodes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import pytest
from support.media import (
    Frame,
    h264_canonical,
    make_av1_ivf,
    make_g711_wav,
    make_h264,
    make_h265,
    make_opus_ogg,
    make_vp8_ivf,
    make_vp9_ivf,
    read_frames,
)

from trackegress.media import av1, h264, h265, vp8, vp9
from trackegress.media.codecs import output_format
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.sinks.muxer import Muxer

RTP_START = 4_000_000_000  # near the 32-bit wrap: unwrapped timestamps go past it


def _feed(frames: list[Frame], codec: Codec, path: Path, skip: set[int] = frozenset()) -> Muxer:  # type: ignore[assignment]
    muxer = Muxer(path, codec)
    for i, frame in enumerate(frames):
        if i in skip:
            continue
        ts = RTP_START + round((frame.pts_seconds - frames[0].pts_seconds) * codec.clock_rate)
        data = h264_canonical(frame.data) if codec in ANNEX_B else frame.data
        muxer.write(EncodedFrame(data, ts, _key(codec, frame)))
    muxer.close()
    return muxer


TEMPORAL_DELIMITER = b"\x12\x00"
ANNEX_B = {Codec.H264: "h264", Codec.H265: "hevc"}
KEYFRAME = {Codec.H264: h264.is_keyframe, Codec.H265: h265.is_keyframe, Codec.VP8: vp8.is_keyframe,
            Codec.VP9: vp9.is_keyframe, Codec.AV1: av1.is_keyframe}


def _key(codec: Codec, frame: Frame) -> bool:
    return KEYFRAME[codec](frame.data) if codec.is_video else True


def _packets(path: Path) -> list[bytes]:
    """The file's packets; MP4 samples (4-byte lengths) back to Annex B as a depacketizer would deliver them."""
    with av.open(str(path)) as container:
        packets = [bytes(p) for p in container.demux() if p.size]
    return [_annex_b(p) for p in packets] if path.suffix == ".mp4" else packets


def _annex_b(sample: bytes) -> bytes:
    units, pos = [], 0
    while pos < len(sample):
        size = int.from_bytes(sample[pos:pos + 4], "big")
        units.append(b"\x00\x00\x00\x01" + sample[pos + 4:pos + 4 + size])
        pos += 4 + size
    return b"".join(units)


def _decode_errors(path: Path) -> str:
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                          text=True).stderr


def _probe(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height:format=duration", "-of",
         "default=nw=1", str(path)], check=True, capture_output=True, text=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[Codec, Path]:
    folder = tmp_path_factory.mktemp("media")
    return {
        Codec.OPUS: make_opus_ogg(folder / "a.ogg", seconds=2),
        Codec.VP8: make_vp8_ivf(folder / "v.ivf", seconds=2, size=(320, 240)),
        Codec.H264: make_h264(folder / "v.h264", seconds=2, size=(322, 242)),
        Codec.VP9: make_vp9_ivf(folder / "v9.ivf", seconds=2, size=(320, 240)),
        Codec.AV1: make_av1_ivf(folder / "av1.ivf", seconds=2, size=(320, 240)),
        Codec.H265: make_h265(folder / "v.h265", seconds=2, size=(320, 240)),
        Codec.PCMU: make_g711_wav(folder / "u.wav", "pcm_mulaw", seconds=2),
        Codec.PCMA: make_g711_wav(folder / "a.wav", "pcm_alaw", seconds=2),
    }


@pytest.mark.parametrize("codec", list(Codec))
def test_frames_pass_through_byte_for_byte(codec: Codec, media: dict[Codec, Path], tmp_path: Path) -> None:
    frames = read_frames(media[codec])
    out = tmp_path / f"out.{output_format(codec).extension}"
    muxer = _feed(frames, codec, out)
    expected = [h264_canonical(f.data) if codec in ANNEX_B else f.data for f in frames]
    if codec is Codec.AV1:  # IVF's temporal delimiters are not in RTP (nor in WebM)
        expected = [f.removeprefix(TEMPORAL_DELIMITER) for f in expected]
    if codec.is_g711:  # WAV has no packets: the same samples
        assert b"".join(_packets(out)) == b"".join(expected)
    else:
        assert _packets(out) == expected
    assert muxer.frames == len(frames)
    assert _decode_errors(out) == ""
    assert float(_probe(out)["duration"]) == pytest.approx(2.0, abs=0.03)


@pytest.mark.parametrize("codec", [Codec.VP8, Codec.VP9, Codec.AV1, Codec.H264, Codec.H265])
def test_dimensions_come_from_the_bitstream(codec: Codec, media: dict[Codec, Path], tmp_path: Path) -> None:
    out = tmp_path / f"out.{output_format(codec).extension}"
    _feed(read_frames(media[codec]), codec, out)
    probe = _probe(out)
    assert (probe["width"], probe["height"]) == (("322", "242") if codec is Codec.H264 else ("320", "240"))


def test_video_waits_for_a_keyframe(media: dict[Codec, Path], tmp_path: Path) -> None:
    frames = read_frames(media[Codec.VP8])
    out = tmp_path / "out.webm"
    muxer = _feed(frames, Codec.VP8, out, skip={0})
    assert muxer.dropped == 29  # the rest of the first GOP
    assert _packets(out) == [f.data for f in frames[30:]]


def test_video_gap_stays_a_gap(media: dict[Codec, Path], tmp_path: Path) -> None:
    frames = read_frames(media[Codec.VP8])
    out = tmp_path / "out.webm"
    _feed(frames, Codec.VP8, out, skip=set(range(10, 25)))  # 500 ms of frames lost
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        times = [float(p.pts * stream.time_base) for p in container.demux() if p.size]
    assert times[10] - times[9] == pytest.approx(16 / 30, abs=0.002)
    assert float(_probe(out)["duration"]) == pytest.approx(2.0, abs=0.03)


def test_audio_gap_is_covered_by_lost_frames(media: dict[Codec, Path], tmp_path: Path) -> None:
    """Ogg has no per-packet time: 25 missing packets become 25 TOC-only packets, so the timeline holds."""
    frames = read_frames(media[Codec.OPUS])
    out = tmp_path / "out.ogg"
    muxer = _feed(frames, Codec.OPUS, out, skip=set(range(20, 45)))
    assert (muxer.frames, muxer.filled) == (len(frames), 25)
    packets = _packets(out)
    assert packets[:20] == [f.data for f in frames[:20]] and packets[45:] == [f.data for f in frames[45:]]
    assert {len(p) for p in packets[20:45]} == {1}
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "s16le", "-"], capture_output=True,
                         check=True).stdout
    assert len(pcm) == len(frames) * 960 * 2 * 2
    assert _decode_errors(out) == ""


@pytest.mark.parametrize(("codec", "silence"), [(Codec.PCMU, 0xFF), (Codec.PCMA, 0xD5)])
def test_g711_gap_is_filled_with_silence(codec: Codec, silence: int, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    muxer = Muxer(out, codec)
    for i in (0, 1, 4, 5):  # 20 ms frames, two lost
        muxer.write(EncodedFrame(bytes([i]) * 160, RTP_START + i * 160, True))
    muxer.close()
    assert b"".join(_packets(out)) == bytes([0]) * 160 + bytes([1]) * 160 + bytes([silence]) * 320 + (
        bytes([4]) * 160 + bytes([5]) * 160
    )
    assert muxer.filled == 2 and muxer.duration_ns == 120_000_000
    assert _probe(out)["codec_name"] == ("pcm_mulaw" if codec is Codec.PCMU else "pcm_alaw")


def test_invalid_opus_packets_are_dropped(tmp_path: Path) -> None:
    muxer = Muxer(tmp_path / "x.ogg", Codec.OPUS)
    muxer.write(EncodedFrame(b"", 0, True))
    muxer.write(EncodedFrame(bytes([0x03, 0xFF]), 960, True))  # code 3 with an impossible frame count
    muxer.close()
    assert (muxer.frames, muxer.dropped) == (0, 2)


def test_no_frames_means_no_file(tmp_path: Path) -> None:
    muxer = Muxer(tmp_path / "x.webm", Codec.VP8)
    muxer.write(EncodedFrame(b"\x01\x00\x00", 1000, False))  # a delta frame before any keyframe
    muxer.close()
    muxer.close()
    assert not (tmp_path / "x.webm").exists()
    assert muxer.duration_ns == 0


def test_a_long_g711_gap_is_filled_a_second_at_a_time(tmp_path: Path) -> None:
    out = tmp_path / "long.wav"
    muxer = Muxer(out, Codec.PCMU)
    muxer.write(EncodedFrame(b"\x01" * 160, 0, True))
    muxer.write(EncodedFrame(b"\x02" * 160, 160 + 60 * 8000, True))  # a minute of mute
    muxer.close()
    data = b"".join(_packets(out))
    assert data == b"\x01" * 160 + b"\xff" * 60 * 8000 + b"\x02" * 160
    assert muxer.filled == 60 * 50 and muxer.frames == 2 + 60
