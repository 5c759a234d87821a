"""One A/V file from one ``StartEgress``: preset ``PASSTHROUGH`` naming a participant's video track and audio track,
through ``trackegress serve`` against the real livekit-server. A libwebrtc publisher (LiveKit's rtc SDK) beeps and
flashes at the same instants; the one file holds both tracks' packets as they were sent, beeps on their flashes."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol import egress
from support.egress_helpers import av_request, media_seconds, wait_status
from support.egress_service import EgressService, WebhookSink
from support.publisher import Publisher
from support.redis_server import RedisServer
from support.server import LiveKitServer, RoomFactory, temporary_room
from support.storage_checks import BUCKET, running, s3_client, s3_upload
from support.storage_servers import MINIO, MinIO
from support.worker_process import Worker
from test_av_mux import SYNC_BOUND, beeps, flashes, packets
from test_worker import lk_redis, redis_server, webhooks, workers  # noqa: F401 (fixtures)

from trackegress.avegress import AvEgress
from trackegress.config import Config
from trackegress.info import ENDED
from trackegress.mux import mux
from trackegress.request import passthrough_track_request

Status = egress.EgressStatus
SECONDS = 8.0
KILL_AFTER = 8.0  # s of ACTIVE before the service is killed
SUPPORT = Path(__file__).parents[1]


def track_request(room: str, track_id: str, filepath: str) -> egress.TrackEgressRequest:
    return egress.TrackEgressRequest(room_name=room, track_id=track_id,
                                     file=egress.DirectFileOutput(filepath=filepath))


def av_offsets(path: Path) -> list[float]:
    """Each flash's nearest beep minus the flash (s), for the pairs within 0.5 s."""
    marks_a, marks_v = beeps(path), flashes(path)
    offsets = [min(marks_a, key=lambda a: abs(a - v)) - v for v in marks_v]
    return [o for o in offsets if abs(o) < 0.5]


def contiguous_in(part: list[bytes], whole: list[bytes]) -> bool:
    """Whether ``part`` is a run of consecutive items of ``whole``."""
    return any(whole[k:k + len(part)] == part for k in range(len(whole) - len(part) + 1))


async def marks_publisher(server: LiveKitServer, room: str, codec: str,
                          seconds: float = SECONDS) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    token = (api.AccessToken(server.api_key, server.api_secret).with_identity("presenter")
             .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True)).to_jwt())
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "support.av_marks", server.url, token, str(seconds), codec,
        stdout=asyncio.subprocess.PIPE, cwd=SUPPORT)
    assert publisher.stdout is not None
    return publisher, json.loads(await asyncio.wait_for(publisher.stdout.readline(), 20))


@pytest.fixture
async def service(livekit_server: LiveKitServer, hooks: WebhookSink, tmp_path: Path) -> AsyncIterator[EgressService]:
    svc = EgressService(livekit_server, tmp_path, webhook={"urls": [hooks.url]})
    yield svc
    svc.stop()


@pytest.mark.timing  # the publisher's capture clock: a starved CPU delays its frames unevenly
@pytest.mark.xdist_group("cpu")  # end to end: not beside the multi-host tests
@pytest.mark.parametrize(("codec", "suffix"), [("VP8", ".webm"), ("VP9", ".webm"), ("AV1", ".webm"), ("H264", ".mp4")])
async def test_start_egress_with_a_video_and_an_audio_track_records_one_synced_file(
    livekit_server: LiveKitServer, make_room: RoomFactory, service: EgressService, client: api.LiveKitAPI,
    hooks: WebhookSink, codec: str, suffix: str,
) -> None:
    room = await make_room()
    publisher, sids = await marks_publisher(livekit_server, room, codec)
    assert publisher.stdout is not None
    try:  # each track also recorded by a track egress of its own, from before: what the tracks carried
        references = [await client.egress.start_track_egress(track_request(room, sids[kind], f"ref/{kind}"))
                      for kind in ("audio", "video")]
        await asyncio.sleep(1.3)
        info = await client.egress.start_egress(av_request(room, sids["video"], sids["audio"],
                                                           "{room_name}/av-{publisher_identity}"))
        assert info.status == Status.EGRESS_STARTING and info.WhichOneof("request") == "egress"
        active = await wait_status(client, info.egress_id, Status.EGRESS_ACTIVE)
        recording = [Path(f.location).name for f in active.file_results]  # the files, while they are written
        assert json.loads(await asyncio.wait_for(publisher.stdout.readline(), SECONDS + 10)) == {"done": True}
    finally:
        if publisher.returncode is None:
            publisher.terminate()
        await publisher.wait()
    done = await wait_status(client, info.egress_id, *ENDED, timeout=30)
    refs = [await wait_status(client, r.egress_id, Status.EGRESS_COMPLETE) for r in references]

    assert Status.Name(done.status) == "EGRESS_COMPLETE", done.error
    assert recording == [f"av-presenter{suffix}", f"video{suffix}", "audio.ogg"]
    statuses = [status for _, status in hooks.for_egress(info.egress_id)]
    assert statuses == [Status.EGRESS_STARTING, Status.EGRESS_ACTIVE, Status.EGRESS_ENDING, Status.EGRESS_COMPLETE]
    (result,) = done.file_results
    path = service.local_dir / result.filename
    assert result.filename == f"{room}/av-presenter{suffix}" and result.location == str(path.resolve())
    assert result.size == path.stat().st_size and result.duration > (SECONDS - 3) * 1e9
    assert done.details.count("source=sender_report") == 2, done.details
    manifest = json.loads(path.with_name(f"{info.egress_id}.json").read_text())
    assert [t["track_id"] for t in manifest["tracks"]] == [sids["video"], sids["audio"]]
    assert not (service.local_dir / ".trackegress-av" / info.egress_id).exists(), "track files removed at the end"

    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-fps_mode", "passthrough",
                              "-enc_time_base:v", "1:1000", "-f", "null", "-"], capture_output=True, text=True)
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr
    with av.open(str(path)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
    ref_audio, ref_video = (service.local_dir / r.file_results[0].filename for r in refs)
    got_audio, got_video = packets(path, "audio"), packets(path, "video")
    assert len(got_audio) > 50 * (SECONDS - 3) and len(got_video) > 10 * (SECONDS - 3), (len(got_audio), len(got_video))
    assert contiguous_in(got_audio, packets(ref_audio, "audio")), "audio copied as received, not transcoded"
    reference = packets(ref_video, "video")
    if codec in ("VP9", "AV1"):  # SVC: the SFU picks each subscriber's spatial layers by its own bandwidth estimate,
        # so the reference egress (another subscriber) may get other layers for a while; byte identity is the
        # VP8 and H.264 cases' (the same code path), here most pictures match
        known = set(reference)
        same = sum(p in known for p in got_video)
        assert same >= 0.8 * len(got_video), f"{same} of {len(got_video)} pictures as the reference egress got them"
    else:
        assert contiguous_in(got_video, reference), "video copied as received, not transcoded"

    offsets = av_offsets(path)
    median, spread = statistics.median(offsets), max(offsets) - min(offsets)
    # the reference track files joined by ``trackegress mux``: what the capture times give on their own (WebM: ms)
    by_mux = statistics.median(av_offsets(mux(path.with_name(f"ref{suffix}"), [ref_video, ref_audio]).path))
    print(f"A/V offsets (ms): {[round(o * 1000, 1) for o in offsets]}; median {median * 1000:.1f}, spread "
          f"{spread * 1000:.1f}; the reference files muxed: median {by_mux * 1000:.1f}; {done.details}")
    assert len(offsets) >= 4, offsets
    assert abs(median) <= SYNC_BOUND and spread <= 0.040
    assert abs(median - by_mux) <= 0.003, "the egress aligns as trackegress mux does"


async def test_tracks_of_two_participants_are_refused_invalid_argument_by_serve(
    livekit_server: LiveKitServer, make_room: RoomFactory, service: EgressService, client: api.LiveKitAPI,
    sample_media: dict[str, Path],
) -> None:
    room = await make_room()
    creds = (livekit_server.api_key, livekit_server.api_secret)
    async with (Publisher(livekit_server.url, creds, room, "cam", sample_media["vp8"], loop=True) as cam,
                Publisher(livekit_server.url, creds, room, "mic", sample_media["opus"], loop=True) as mic):
        for video, audio, message in [
            (cam.track_sid, mic.track_sid, f"video track {cam.track_sid} (published by 'cam') and audio track "
             f"{mic.track_sid} (by 'mic') are not of one participant: one file holds one participant's tracks"),
            (mic.track_sid, cam.track_sid, f"video_track_id {mic.track_sid} is not a video track"),
        ]:
            with pytest.raises(api.TwirpError) as error:
                await client.egress.start_egress(av_request(room, video, audio, "x"))
            assert (error.value.code, error.value.message) == ("invalid_argument", message)
        listed = await client.egress.list_egress(egress.ListEgressRequest(room_name=room))
    assert not listed.items and not list(service.local_dir.rglob("*.*")), "nothing started, nothing written"


async def test_a_worker_fails_tracks_of_two_participants_400_and_keeps_what_was_recorded(
    lk_redis: LiveKitServer, redis_server: RedisServer, workers: list[Worker], tmp_path: Path,  # noqa: F811
    sample_media: dict[str, Path],
) -> None:
    """A worker looks no track up before joining (as upstream): the pair is checked once both record."""
    worker = Worker(tmp_path / "w", lk_redis, redis_server)
    workers.append(worker.start())
    creds = (lk_redis.api_key, lk_redis.api_secret)
    async with (temporary_room(lk_redis, "av2") as (client, room),
                Publisher(lk_redis.url, creds, room, "cam", sample_media["vp8"], loop=True) as cam,
                Publisher(lk_redis.url, creds, room, "mic", sample_media["opus"], loop=True) as mic):
        info = await client.egress.start_egress(av_request(room, cam.track_sid, mic.track_sid, "x"))
        done = await wait_status(client, info.egress_id, *ENDED)
    assert (Status.Name(done.status), done.error_code) == ("EGRESS_FAILED", 400)
    assert done.error == (f"video track {cam.track_sid} (published by 'cam') and audio track {mic.track_sid} (by "
                          "'mic') are not of one participant: one file holds one participant's tracks")
    kept = sorted(Path(f.location).name for f in done.file_results)
    assert kept == ["audio.ogg", "video.webm"] and all(Path(f.location).is_file() for f in done.file_results)
    assert not list(worker.local_dir.glob("x*")), "no A/V file"


@pytest.mark.timing  # the publisher's capture clock: a starved CPU delays its frames unevenly
@pytest.mark.xdist_group("cpu")  # end to end: not beside the multi-host tests
async def test_through_livekit_server_a_worker_records_one_file_until_stop_egress(
    lk_redis: LiveKitServer, redis_server: RedisServer, workers: list[Worker], tmp_path: Path,  # noqa: F811
) -> None:
    """livekit-server v1.13.5 sends the request to a worker in psrpc's ``egress`` field; the A/V file plays, in
    sync, while it is recorded; StopEgress (through livekit-server) stops both tracks and finishes it."""
    worker = Worker(tmp_path / "w", lk_redis, redis_server)
    workers.append(worker.start())
    async with temporary_room(lk_redis, "av") as (client, room):
        publisher, sids = await marks_publisher(lk_redis, room, "VP8", seconds=30)
        try:
            info = await client.egress.start_egress(av_request(room, sids["video"], sids["audio"], "{room_name}/av"))
            await wait_status(client, info.egress_id, Status.EGRESS_ACTIVE)
            await asyncio.sleep(7)
            snapshot = tmp_path / "while-recording.webm"  # what a reader of the file sees now
            snapshot.write_bytes((worker.local_dir / room / "av.webm").read_bytes())
            stopped = await client.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
            assert stopped.status not in (Status.EGRESS_STARTING, Status.EGRESS_ACTIVE)
            done = await wait_status(client, info.egress_id, *ENDED)
        finally:
            publisher.terminate()
            await publisher.wait()
    assert Status.Name(done.status) == "EGRESS_COMPLETE", done.error
    assert done.details.startswith("video track ") and "End reason: StopEgress API" in done.details
    (result,) = done.file_results
    path = worker.local_dir / result.filename
    assert result.filename == f"{room}/av.webm" and result.size == path.stat().st_size
    assert 6e9 < result.duration < 9e9
    seen = media_seconds(snapshot)
    assert seen["audio"] > 4 and seen["video"] > 4, f"written while recording: {seen}"
    early = av_offsets(snapshot)
    assert len(early) >= 3 and abs(statistics.median(early)) <= SYNC_BOUND, early
    with av.open(str(path)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
    offsets = av_offsets(path)
    assert len(offsets) >= 3 and abs(statistics.median(offsets)) <= SYNC_BOUND, offsets


@pytest.mark.timing  # seconds of media by the kill, and the publisher's capture clock
@pytest.mark.xdist_group("cpu")
@pytest.mark.parametrize(("codec", "suffix"), [("VP8", ".webm"), ("H264", ".mp4")])
async def test_a_killed_service_leaves_an_a_v_file_that_plays_in_sync_up_to_the_kill(
    livekit_server: LiveKitServer, make_room: RoomFactory, tmp_path: Path, codec: str, suffix: str,
) -> None:
    """``kill -9`` mid-recording: a restarted ``serve`` reports the egress FAILED ``Process killed`` with the A/V
    file and the track files as they were left; the A/V file plays both tracks, in sync, to about a second before
    the kill."""
    room = await make_room()
    publisher, sids = await marks_publisher(livekit_server, room, codec, seconds=30)
    first = EgressService(livekit_server, tmp_path)
    try:
        async with api.LiveKitAPI(first.url, livekit_server.api_key, livekit_server.api_secret) as client:
            info = await client.egress.start_egress(av_request(room, sids["video"], sids["audio"], "av"))
            await wait_status(client, info.egress_id, Status.EGRESS_ACTIVE)
        await asyncio.sleep(KILL_AFTER)
        first.kill()
    finally:
        first.stop()
        publisher.terminate()
        await publisher.wait()
    second = EgressService(livekit_server, tmp_path)
    try:
        async with api.LiveKitAPI(second.url, livekit_server.api_key, livekit_server.api_secret) as client:
            done = await wait_status(client, info.egress_id, *ENDED)
    finally:
        second.stop()
    assert (Status.Name(done.status), done.error) == ("EGRESS_FAILED", "Process killed")
    private = first.local_dir / ".trackegress-av" / info.egress_id
    assert [f.location for f in done.file_results] == [
        str(p.resolve()) for p in (first.local_dir / f"av{suffix}", private / f"video{suffix}", private / "audio.ogg")]
    for file in done.file_results:
        assert file.size == Path(file.location).stat().st_size >= 5000
    av_file, video = (Path(f.location) for f in done.file_results[:2])
    played, recorded = media_seconds(av_file), media_seconds(video)["video"]
    print(f"killed {KILL_AFTER} s after ACTIVE: the A/V file plays {played}, the video track file {recorded:.3f} s")
    assert min(played.values()) > KILL_AFTER - 2.5, (played, recorded)
    offsets = av_offsets(av_file)
    assert len(offsets) >= 4 and abs(statistics.median(offsets)) <= SYNC_BOUND, offsets


async def test_the_joined_file_and_its_manifest_are_uploaded_and_nothing_stays_local(
    livekit_server: LiveKitServer, make_room: RoomFactory, tmp_path: Path,
) -> None:
    (tmp_path / "minio").mkdir()
    with running(MinIO, MINIO, tmp_path / "minio") as minio:
        s3 = s3_client(minio)
        s3.create_bucket(Bucket=BUCKET)
        room = await make_room()
        publisher, sids = await marks_publisher(livekit_server, room, "VP8", seconds=5)
        start = av_request(room, sids["video"], sids["audio"], "{room_name}/av")
        start.outputs[0].storage.s3.CopyFrom(s3_upload(minio))
        config = Config(livekit_server.url, livekit_server.api_key, livekit_server.api_secret,
                        local_dir=tmp_path / "recordings")
        job = AvEgress(passthrough_track_request(start), sids["audio"], config, source=start)
        try:
            done = await asyncio.wait_for(job.run(), 30)  # both tracks end as the publisher leaves
        finally:
            if publisher.returncode is None:
                publisher.terminate()
            await publisher.wait()
        assert Status.Name(done.status) == "EGRESS_COMPLETE", done.error
        (result,) = done.file_results
        key = f"{room}/av.webm"
        assert (result.filename, result.location) == (key, f"{minio.url}/{BUCKET}/{key}")
        assert done.manifest_location == f"{minio.url}/{BUCKET}/{room}/{done.egress_id}.json"
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{room}/{done.egress_id}.json")["Body"].read())
    assert len(data) == result.size
    (tmp_path / "av.webm").write_bytes(data)
    with av.open(str(tmp_path / "av.webm")) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
    assert manifest["files"] == [{"filename": key, "location": result.location}]
    assert [(t["track_kind"], t["codec"], t["sync"]["source"]) for t in manifest["tracks"]] == [
        ("video", "video/vp8", "sender_report"), ("audio", "audio/opus", "sender_report")]
    left = [p.relative_to(tmp_path / "recordings") for p in (tmp_path / "recordings").rglob("*") if p.is_file()]
    assert all(p.parts[0] == ".trackegress-claims" for p in left), left


@pytest.mark.timing  # the file's duration: the limit's 3 s less the time both tracks took to start recording
@pytest.mark.xdist_group("cpu")
async def test_a_session_limit_ends_both_tracks_and_the_joined_file_is_limit_reached(
    livekit_server: LiveKitServer, make_room: RoomFactory, tmp_path: Path,
) -> None:
    room = await make_room()
    publisher, sids = await marks_publisher(livekit_server, room, "VP8", seconds=30)
    service = EgressService(livekit_server, tmp_path, session_limits={"file_output_max_duration": "3s"})
    try:
        async with api.LiveKitAPI(service.url, livekit_server.api_key, livekit_server.api_secret) as client:
            info = await client.egress.start_egress(av_request(room, sids["video"], sids["audio"], "av"))
            done = await wait_status(client, info.egress_id, *ENDED)
    finally:
        service.stop()
        publisher.terminate()
        await publisher.wait()
    assert (Status.Name(done.status), done.error, done.error_code) == (
        "EGRESS_LIMIT_REACHED", "Session limit reached", 413)
    (result,) = done.file_results
    assert result.filename == "av.webm" and 1.5e9 < result.duration < 3.5e9
    with av.open(str(service.local_dir / "av.webm")) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]


async def test_the_cli_starts_an_a_v_egress_from_a_start_egress_request_json(
    livekit_server: LiveKitServer, make_room: RoomFactory, service: EgressService, tmp_path: Path,
) -> None:
    """``trackegress start --type egress request.json --wait``: the unified request as JSON (livekit-api's field
    names), its live status on stderr, the final EgressInfo with the A/V file on stdout, exit 0 once COMPLETE."""
    room = await make_room()
    publisher, sids = await marks_publisher(livekit_server, room, "VP8", seconds=5)
    request = tmp_path / "request.json"
    request.write_text(MessageToJson(av_request(room, sids["video"], sids["audio"], "cli-av")))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "trackegress.cli", "start", "--type", "egress", str(request), "--wait",
            "--url", service.url, "--api-key", livekit_server.api_key, "--api-secret", livekit_server.api_secret,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 40)
    finally:
        if publisher.returncode is None:
            publisher.terminate()
        await publisher.wait()
    assert proc.returncode == 0, stderr.decode()
    info = json.loads(stdout)
    assert info["status"] == "EGRESS_COMPLETE" and "EGRESS_ACTIVE" in stderr.decode(), stderr.decode()
    assert [f["filename"] for f in info["fileResults"]] == ["cli-av.webm"]
    with av.open(str(service.local_dir / "cli-av.webm")) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
