"""trackegress mux on files our muxer wrote: packets copied unchanged, the later track offset, clear refusals."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import pytest
from support.media import make_h264, make_opus_ogg, make_vp8_ivf, read_frames

from trackegress.cli import main
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.media.sync import SyncInfo
from trackegress.mux import MuxError, mux
from trackegress.sinks.muxer import Muxer

T0 = 1_800_000_000_000_000_000


def track_file(directory: Path, name: str, source: Path, codec: Codec, start_ns: int, step: int) -> Path:
    """``source``'s frames written by our Muxer into ``name``, with a manifest (its capture start) beside it."""
    path = directory / name
    muxer = Muxer(path, codec)
    for i, frame in enumerate(read_frames(source)):
        muxer.write(EncodedFrame(frame.data, 1000 + i * step, frame.keyframe))
    muxer.close()
    sync = SyncInfo(start_ns, "sender_report", codec.clock_rate, 1000, (start_ns, 1000))
    manifest = {"egress_id": name, "files": [{"filename": f"room/{name}", "location": f"s3://b/room/{name}"}],
                "codec": codec.mime, "sync": sync.to_json()}
    (directory / f"EG_{name}.json").write_text(json.dumps(manifest))
    return path


def streams(path: Path) -> dict[str, tuple[float, list[bytes]]]:
    """Per kind: the first packet's time (s) and every packet's bytes (H.264 as Annex B, canonical)."""
    out = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            packets = [p for p in container.demux(stream) if p.size]
            container.seek(0)
            first = float(packets[0].pts * stream.time_base)
            data = [bytes(p) for p in packets]
            out[stream.type] = (first, data)
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {"opus": make_opus_ogg(d / "a.ogg", 2.0), "vp8": make_vp8_ivf(d / "v.ivf", 2.0),
            "h264": make_h264(d / "v.h264", 2.0)}


@pytest.mark.parametrize(("video", "codec", "suffix"), [("vp8", Codec.VP8, ".webm"), ("vp8", Codec.VP8, ".mkv"),
                                                          ("h264", Codec.H264, ".mp4")])
def test_audio_starting_later_is_offset_and_packets_are_copied(
    tmp_path: Path, media: dict[str, Path], video: str, codec: Codec, suffix: str
) -> None:
    ext = ".webm" if codec is Codec.VP8 else ".mp4"
    audio = track_file(tmp_path, "a.ogg", media["opus"], Codec.OPUS, T0 + 250_000_000, 960)
    picture = track_file(tmp_path, f"v{ext}", media[video], codec, T0, 3000)
    result = mux(tmp_path / f"out{suffix}", [audio, picture])

    assert result.offsets == {audio: 0.25, picture: 0.0}
    joined, tracks = streams(result.path), {**streams(audio), **streams(picture)}
    assert joined["audio"][1] == tracks["audio"][1] and joined["video"][1] == tracks["video"][1], "no transcoding"
    assert joined["audio"][0] - joined["video"][0] == pytest.approx(0.25, abs=0.001)
    assert result.packets == len(tracks["audio"][1]) + len(tracks["video"][1])


def test_cli_mux(tmp_path: Path, media: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    audio = track_file(tmp_path, "a.ogg", media["opus"], Codec.OPUS, T0, 960)
    picture = track_file(tmp_path, "v.webm", media["vp8"], Codec.VP8, T0 + 100_000_000, 3000)
    assert main(["mux", "--output", str(tmp_path / "av.webm"), str(picture), str(audio)]) == 0
    assert json.loads(capsys.readouterr().out)["offsets"] == {str(audio): 0.0, str(picture): 0.1}
    assert Fraction(streams(tmp_path / "av.webm")["video"][0]).limit_denominator(1000) == Fraction(1, 10)


def test_refusals(tmp_path: Path, media: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    audio = track_file(tmp_path, "a.ogg", media["opus"], Codec.OPUS, T0, 960)
    picture = track_file(tmp_path, "v.webm", media["vp8"], Codec.VP8, T0, 3000)
    with pytest.raises(MuxError, match=r"audio/opus \+ video/vp8 go into \.webm or \.mkv, not \.mp4"):
        mux(tmp_path / "out.mp4", [audio, picture])
    with pytest.raises(MuxError, match="expected one audio and one video track file, got audio"):
        mux(tmp_path / "out.webm", [audio])
    stray = tmp_path / "other" / "x.webm"
    stray.parent.mkdir()
    stray.write_bytes(picture.read_bytes())
    with pytest.raises(MuxError, match="no manifest beside it lists it"):
        mux(tmp_path / "out.webm", [audio, stray])
    assert main(["mux", "--output", str(tmp_path / "o.webm"), str(audio), str(stray)]) == 2
    assert "no manifest beside it lists it" in capsys.readouterr().err
    assert not (tmp_path / "out.webm").exists() and not (tmp_path / "o.webm").exists()
