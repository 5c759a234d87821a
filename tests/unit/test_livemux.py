"""The live A/V file (``sinks/livemux.py``) fed packets as two track muxers would: held until both tracks' sender
reports place them, then written aligned by capture time; by arrival when no report comes; a lane alone trimmed to
``SYNC_WAIT`` from a keyframe; failures reported, never raised."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest

from trackegress.media.codecs import Size
from trackegress.media.frames import Codec
from trackegress.media.sync import ARRIVAL, SENDER_REPORT, SyncInfo
from trackegress.sinks.livemux import SYNC_WAIT, LiveMux

T0 = 1_800_000_000_000_000_000  # Unix ns
OPUS = b"\xfc\xff\xfe"


@dataclass
class Track:
    """A track's recording as a lane sees it: capture and arrival time of its first packet."""

    codec: Codec
    capture_ns: int | None = None  # None: no sender report yet
    arrival_ns: int = T0
    header_size: Size | None = None

    @property
    def sync(self) -> SyncInfo | None:
        if self.capture_ns is None:
            return self.arrival_sync
        return SyncInfo(self.capture_ns, SENDER_REPORT, self.codec.clock_rate, 0, (self.capture_ns, 0))

    @property
    def arrival_sync(self) -> SyncInfo | None:
        return SyncInfo(self.arrival_ns, ARRIVAL, self.codec.clock_rate, 0, None)


def live_mux(path: Path | None, *, video_ns: int | None = None,
             audio_ns: int | None = None) -> tuple[LiveMux, Track, Track]:
    """A live file of a VP8 and an Opus track (started at ``path``, if given)."""
    live = LiveMux()
    video = Track(Codec.VP8, video_ns, header_size=(320, 240))
    audio = Track(Codec.OPUS, audio_ns)
    live.lanes["video"].track, live.lanes["audio"].track = video, audio
    if path is not None:
        live.start(path, Codec.VP8)
    return live, video, audio


def feed_audio(live: LiveMux, first: int, count: int, start: int = 10_000) -> None:
    for k in range(first, first + count):
        live.lanes["audio"].packet(OPUS + bytes([k % 256]), start + 960 * k, True, 960)


def vp8(k: int, keyframe: bool) -> bytes:
    """A stand-in for VP8 frame ``k`` (the frame tag's bit 0: 0 for a keyframe, as FFmpeg's parser reads it)."""
    return bytes([0 if keyframe else 1, k % 256]) * 10


def feed_video(live: LiveMux, first: int, count: int, gop: int = 30, start: int = 50_000) -> None:
    for k in range(first, first + count):
        live.lanes["video"].packet(vp8(k, k % gop == 0), start + 3000 * k, k % gop == 0, 3000 if k else 0)


def read_back(path: Path) -> dict[str, list[tuple[Fraction, bytes, bool]]]:
    """Each stream's packets: (time in s, payload, keyframe)."""
    out: dict[str, list[tuple[Fraction, bytes, bool]]] = {"audio": [], "video": []}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.size and packet.pts is not None and packet.time_base is not None:
                out[packet.stream.type].append((packet.pts * packet.time_base, bytes(packet), packet.is_keyframe))
    return out


def test_packets_are_held_until_both_sender_reports_then_written_at_their_capture_times(tmp_path: Path) -> None:
    path = tmp_path / "av.webm"
    live, video, audio = live_mux(path)
    feed_audio(live, 0, 50)
    feed_video(live, 0, 30)
    assert not path.exists(), "no sender report yet: nothing can be placed"
    audio.capture_ns, video.capture_ns = T0, T0 + 250_000_000  # the camera's first frame 250 ms after the mic's
    feed_audio(live, 50, 50)
    assert path.exists() and live.aligned_by == SENDER_REPORT and live.offsets == {"video": 0.25, "audio": 0.0}
    written = path.stat().st_size
    feed_video(live, 30, 30)
    feed_audio(live, 100, 50)
    assert path.stat().st_size > written, "written as it comes"
    live.close()

    got = read_back(path)
    assert live.error is None and live.packets == 210
    assert [p[1] for p in got["audio"]] == [OPUS + bytes([k]) for k in range(150)]
    assert [p[1] for p in got["video"]] == [vp8(k, k % 30 == 0) for k in range(60)]
    assert got["audio"][0][0] == 0 and got["audio"][-1][0] == Fraction(149, 50)
    assert got["video"][0][0] == Fraction(250, 1000) and got["video"][0][2] and got["video"][30][2]
    assert got["video"][1][0] == Fraction(250 + 33, 1000)  # WebM's ms
    assert live.duration == pytest.approx(3.0)


def test_without_sender_reports_both_tracks_are_aligned_by_arrival_after_the_wait(tmp_path: Path) -> None:
    path = tmp_path / "av.webm"
    live, video, audio = live_mux(path)
    audio.arrival_ns, video.arrival_ns = T0 + 40_000_000, T0
    audio_packets = int(SYNC_WAIT * 50)
    feed_video(live, 0, 10)
    feed_audio(live, 0, audio_packets - 1)
    assert not path.exists()
    feed_audio(live, audio_packets - 1, 1)
    assert live.aligned_by == ARRIVAL and live.offsets == {"video": 0.0, "audio": 0.04}
    live.close()
    got = read_back(path)
    assert len(got["audio"]) == audio_packets and got["audio"][0][0] == Fraction(40, 1000)


def test_a_lane_alone_keeps_its_last_seconds_from_a_keyframe_and_says_what_it_skipped(tmp_path: Path) -> None:
    path = tmp_path / "av.webm"
    live, _, _ = live_mux(None, video_ns=T0, audio_ns=T0 + 9_000_000_000)  # not yet claimed either
    feed_video(live, 0, 300, gop=60)  # 10 s of video, a keyframe every 2 s, and no audio yet
    held = live.lanes["video"].held
    assert held[0].keyframe and held[0].timestamp == 50_000 + 3000 * 120 and len(held) == 180
    live.start(path, Codec.VP8)
    feed_audio(live, 0, 1)
    assert live.skipped == {"video": 4.0, "audio": 0.0} and live.offsets == {"video": 0.0, "audio": 5.0}
    live.close()
    assert live.summary() == ("aligned by sender_report: video at +0.000 s (its first 4.000 s not held), "
                              "audio at +5.000 s (181 packets)")
    feed_audio(live, 1, 1)
    live.close()
    assert live.error is None and live.packets == 181, "closed once: later packets and calls change nothing"
    got = read_back(path)
    assert got["video"][0][1] == vp8(120, True) and got["video"][0][0] == 0
    assert got["audio"][0][0] == 5


def test_a_track_that_sent_nothing_leaves_no_file_and_says_which(tmp_path: Path) -> None:
    path = tmp_path / "av.webm"
    live, _, _ = live_mux(path, video_ns=T0, audio_ns=T0)
    feed_video(live, 0, 30)
    live.close()
    assert live.error == "nothing recorded of the audio track to join" and not path.exists()


def test_a_file_that_cannot_be_written_is_an_error_not_an_exception(tmp_path: Path) -> None:
    live, _, _ = live_mux(tmp_path / "gone" / "av.webm", video_ns=T0, audio_ns=T0)
    feed_video(live, 0, 30)
    feed_audio(live, 0, 50)
    live.close()
    assert live.error is not None and live.error.startswith("writing the A/V file failed: ")
    assert live.packets == 0
