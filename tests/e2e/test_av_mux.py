"""Sync metadata and ``trackegress mux`` against the real livekit-server: a libwebrtc publisher (LiveKit's rtc SDK)
beeps and flashes at the same instants; its mic and camera are recorded by two egresses started 1.3 s apart and
joined into one WebM whose beeps land on their flashes."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from livekit import api
from livekit.protocol import egress
from support.egress_helpers import file_request, until
from support.server import LiveKitServer, RoomFactory

from trackegress.config import Config
from trackegress.egress import Egress
from trackegress.mux import mux
from trackegress.room.transport import MEDIA_PROTOCOLS

SECONDS = 10.0
# The target is +-20 ms. Measured medians: a constant offset per run (spread 0-1 ms), -10, 0 or +16.5 to
# +18.6 ms, for VP8 and H.264 alike, in .webm, .mp4 and .mkv, also with explicit capture timestamps, and the same
# from the A/V egress and from `trackegress mux` of the same run's track files: it comes with the capture times
# the sender reports give (the publisher's, as LiveKit forwards them), not from the alignment; 5 ms of margin.
SYNC_BOUND = 0.025
SUPPORT = Path(__file__).parents[1]


def beeps(path: Path) -> list[float]:
    """Times (s) where the audio goes from silence to the beep (decoded as float samples: loud above 0.1)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        onsets, loud_before = [], True
        for frame in container.decode(stream):
            loud = np.abs(frame.to_ndarray()).max(axis=0) > 0.1
            if loud.any() and not loud_before:
                onsets.append(float(frame.pts * stream.time_base) + int(np.argmax(loud)) / frame.sample_rate)
            loud_before = bool(loud[-1])
    return onsets


def flashes(path: Path) -> list[float]:
    """Times (s) where the picture goes from dark to white."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        onsets, white_before = [], True
        for frame in container.decode(stream):
            white = frame.to_ndarray(format="gray").mean() > 128
            if white and not white_before:
                onsets.append(float(frame.pts * stream.time_base))
            white_before = white
    return onsets


def packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        return [bytes(p) for p in container.demux(stream) if p.size]


@pytest.mark.timing  # the publisher's capture clock: a starved CPU delays its frames unevenly
@pytest.mark.xdist_group("cpu")  # end to end: not beside the multi-host tests
@pytest.mark.parametrize(("codec", "suffix"), [("VP8", ".webm"), ("H264", ".mp4")])
async def test_two_egresses_started_apart_mux_into_one_synced_file(
    livekit_server: LiveKitServer, make_room: RoomFactory, tmp_path: Path, codec: str, suffix: str
) -> None:
    await record_apart_and_mux(livekit_server, await make_room(), tmp_path, codec, suffix)


async def record_apart_and_mux(
    livekit_server: LiveKitServer, room: str, tmp_path: Path, codec: str, suffix: str,
    media_protocols: tuple[str, ...] = MEDIA_PROTOCOLS,
) -> None:
    """The marks publisher's mic and camera recorded by two egresses (over ``media_protocols``) started 1.3 s
    apart, joined by ``mux``: the file decodes, holds the track files' packets, and its beeps are on its flashes."""
    token = (api.AccessToken(livekit_server.api_key, livekit_server.api_secret).with_identity("presenter")
             .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True)).to_jwt())
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "support.av_marks", livekit_server.url, token, str(SECONDS), codec,
        stdout=asyncio.subprocess.PIPE, cwd=SUPPORT)
    assert publisher.stdout is not None
    try:
        sids = json.loads(await asyncio.wait_for(publisher.stdout.readline(), 20))
        settings = Config(livekit_server.url, livekit_server.api_key, livekit_server.api_secret, local_dir=tmp_path,
                          media_protocols=media_protocols)
        audio_job = Egress(file_request(room, sids["audio"], "audio"), settings)
        audio_run = asyncio.create_task(audio_job.run())
        await until(lambda: audio_job.info.room_id)
        await asyncio.sleep(1.3)
        video_job = Egress(file_request(room, sids["video"], "video"), settings)
        video_run = asyncio.create_task(video_job.run())
        assert json.loads(await asyncio.wait_for(publisher.stdout.readline(), SECONDS + 10)) == {"done": True}
        infos = await asyncio.wait_for(asyncio.gather(audio_run, video_run), 20)
    finally:
        if publisher.returncode is None:
            publisher.terminate()
        await publisher.wait()

    for info in infos:
        assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
        assert "; sync: " in info.details and "source=sender_report" in info.details, info.details
    audio, video = (tmp_path / info.file_results[0].filename for info in infos)
    manifests = [json.loads((tmp_path / f"{info.egress_id}.json").read_text()) for info in infos]
    started = [m["sync"]["capture_start_ns"] for m in manifests]
    arrival_gap = (infos[1].file_results[0].started_at - infos[0].file_results[0].started_at) / 1e9
    result = await asyncio.to_thread(mux, tmp_path / f"av{suffix}", [video, audio])

    # the later first sample is offset by the capture-time gap (the video's, unless the audio's join was slowed by loss)
    assert min(result.offsets.values()) == 0.0
    assert result.offsets[video] - result.offsets[audio] == pytest.approx((started[1] - started[0]) / 1e9, abs=1e-6)
    # every frame at its own time (ms, as in the file), not on the 1/30 s grid ffmpeg picks from a guessed rate
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(result.path), "-fps_mode", "passthrough",
                              "-enc_time_base:v", "1:1000", "-f", "null", "-"], capture_output=True, text=True)
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr
    assert packets(result.path, "audio") == packets(audio, "audio"), "audio copied, not transcoded"
    assert packets(result.path, "video") == packets(video, "video"), "video copied, not transcoded"
    marks_a, marks_v = beeps(result.path), flashes(result.path)
    offsets = [min(marks_a, key=lambda a: abs(a - v)) - v for v in marks_v]
    offsets = [o for o in offsets if abs(o) < 0.5]
    median, spread = statistics.median(offsets), max(offsets) - min(offsets)
    by_arrival = median + arrival_gap - result.offsets[video]  # had the files been aligned by started_at
    print(f"A/V offsets (ms): {[round(o * 1000, 1) for o in offsets]}; median {median * 1000:.1f}, spread "
          f"{spread * 1000:.1f}; video started {result.offsets[video]:.3f} s after audio (arrival: {arrival_gap:.3f}, "
          f"aligned by it the median would be {by_arrival * 1000:.1f})")
    assert len(offsets) >= 6, (marks_a, marks_v)
    assert abs(median) <= SYNC_BOUND and spread <= 0.040
