"""Hostile and unlucky conditions against the real livekit-server: the status tells the truth, nothing is lost
silently (issue 12's numbered failures, one test each)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress
from support.egress_helpers import file_request, until, wait_status
from support.egress_service import EgressService
from support.publisher import Publisher
from support.server import LiveKitServer, RoomFactory
from websockets.asyncio.server import ServerConnection, serve

from trackegress.config import Config
from trackegress.egress import Egress, Parts
from trackegress.sinks.websocket import WebSocketSink

Status = egress.EgressStatus
ENDED = (Status.EGRESS_COMPLETE, Status.EGRESS_FAILED, Status.EGRESS_ABORTED, Status.EGRESS_LIMIT_REACHED)


@pytest.fixture
def service(livekit_server: LiveKitServer, tmp_path: Path) -> Iterator[EgressService]:
    svc = EgressService(livekit_server, tmp_path)
    yield svc
    svc.stop()


def decode_errors(path: Path) -> str:
    """ffmpeg's complaints while decoding ``path`` completely (empty: it decodes cleanly)."""
    run = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                         text=True, timeout=60)
    return run.stderr.strip() or ("" if run.returncode == 0 else f"ffmpeg exit {run.returncode}")


def decoded_frames(path: Path) -> int:
    """Video frames ffprobe decodes from ``path``."""
    run = subprocess.run(["ffprobe", "-v", "quiet", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         timeout=60)
    return int(run.stdout.strip() or 0)


# 1. two egresses, one output path


@pytest.mark.parametrize(("codec", "count"), [("opus", 3), ("h264", 2)])
async def test_one_output_path_has_one_owner(
    service: EgressService, client: api.LiveKitAPI, livekit_server: LiveKitServer, make_room: RoomFactory,
    sample_media: dict[str, Path], codec: str, count: int,
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, "alice", sample_media[codec], loop=True) as pub:
        started = [await client.egress.start_track_egress(file_request(room, pub.track_sid, "{room_name}/same"))
                   for _ in range(count)]
        states = [await wait_status(client, s.egress_id, Status.EGRESS_ACTIVE, Status.EGRESS_FAILED, timeout=30)
                  for s in started]
        owners = [s for s in states if s.status == Status.EGRESS_ACTIVE]
        assert len(owners) == 1, [(Status.Name(s.status), s.error) for s in states]
        await asyncio.sleep(2)
        await client.egress.stop_egress(egress.StopEgressRequest(egress_id=owners[0].egress_id))
        done = await wait_status(client, owners[0].egress_id, *ENDED, timeout=30)
    assert done.status == Status.EGRESS_COMPLETE
    refused = [s for s in states if s.status == Status.EGRESS_FAILED]
    for info in refused:
        assert info.error_code == 409 and "is taken" in info.error and info.file_results[:] == []
    out = Path(done.file_results[0].location)
    assert out.stat().st_size == done.file_results[0].size > 0 and decode_errors(out) == ""


# 2. COMPLETE although the WebSocket output failed


async def _dead(ws: ServerConnection) -> None:
    ws.transport.pause_reading()  # never reads a byte, pings included
    await ws.wait_closed()


async def _oversized(ws: ServerConnection) -> None:
    ws.transport.write(b"\x82\x7f" + (1 << 40).to_bytes(8, "big"))  # announces a 1 TiB frame
    await ws.wait_closed()


@pytest.mark.parametrize(("receiver", "error"), [(_dead, "nothing delivered for 3s: receiver not reading"),
                                                 (_oversized, "nothing delivered for 3s (")])
async def test_a_websocket_receiver_that_gets_nothing_fails_the_egress_within_the_budget(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path],
    receiver: object, error: str,
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    config = Config(ws_url=livekit_server.url, api_key=livekit_server.api_key, api_secret=livekit_server.api_secret)
    parts = Parts(stream_sink=functools.partial(WebSocketSink, reconnect_deadline=3.0))
    async with serve(receiver, "127.0.0.1", 0, close_timeout=1.0) as rx:  # type: ignore[arg-type]
        url = f"ws://127.0.0.1:{rx.sockets[0].getsockname()[1]}/stt"
        async with Publisher(livekit_server.url, creds, room, "alice", sample_media["opus"], loop=True) as pub:
            request = egress.TrackEgressRequest(room_name=room, track_id=pub.track_sid, websocket_url=url)
            job = Egress(request, config, parts=parts)
            run = asyncio.create_task(job.run())
            await until(lambda: job.info.status == Status.EGRESS_ACTIVE, timeout=20)
            active_at = time.monotonic()
            info = await asyncio.wait_for(run, 20)  # ends by itself while the track is still published
            ended_after = time.monotonic() - active_at
    assert info.status == Status.EGRESS_FAILED and error in info.error, info.error
    assert ended_after < 10
    (stream,) = info.stream_results
    assert stream.status == egress.StreamInfo.FAILED and stream.duration == 0


# 3. a path component the filesystem cannot take


async def test_a_300_byte_path_component_is_refused_before_anything_starts(
    service: EgressService, client: api.LiveKitAPI, livekit_server: LiveKitServer, make_room: RoomFactory,
    sample_media: dict[str, Path],
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, "alice", sample_media["opus"], loop=True) as pub:
        with pytest.raises(api.TwirpError) as refused:
            await client.egress.start_track_egress(file_request(room, pub.track_sid, "{room_name}/" + "n" * 300))
    assert (refused.value.code, refused.value.status) == ("invalid_argument", 400)
    assert "a path component is 300 bytes long (at most 255)" in refused.value.message
    assert str(service.local_dir) not in refused.value.message
    assert (await client.egress.list_egress(egress.ListEgressRequest())).items == []


# 5. exhaustion: half-open connections


IDLE_TIMEOUT = 2.0  # egress.yaml idle_timeout for this test (default 20 s)


async def test_half_open_connections_are_closed_and_the_api_keeps_answering(
    livekit_server: LiveKitServer, tmp_path: Path,
) -> None:
    service = EgressService(livekit_server, tmp_path, idle_timeout=f"{IDLE_TIMEOUT:g}s")
    flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    t0 = time.monotonic()
    try:
        for _ in range(300):  # bounded, loopback only; closed below whatever happens
            reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
            writer.write(b"POST /twirp/livekit.Egress/ListEgress HTTP/1.1\r\nHost: x\r\n")  # never finished
            flood.append((reader, writer))
        async with api.LiveKitAPI(service.url, livekit_server.api_key, livekit_server.api_secret) as client:
            assert (await client.egress.list_egress(egress.ListEgressRequest())).items == []
        closed = await asyncio.wait_for(asyncio.gather(*(r.read() for r, _ in flood)), IDLE_TIMEOUT + 15)
        assert set(closed) == {b""}
        assert time.monotonic() - t0 >= IDLE_TIMEOUT - 0.1, "closed before the idle timeout"
    finally:
        for _, writer in flood:
            writer.close()
        service.stop()


# 4. full disks


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only; skipped where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_full_local_dir_fails_the_egress_and_keeps_the_decodable_partial(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "recordings", "300k"):
        svc = EgressService(livekit_server, tmp_path)
        lk = api.LiveKitAPI(url=svc.url, api_key=livekit_server.api_key, api_secret=livekit_server.api_secret)
        try:
            room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
            async with Publisher(livekit_server.url, creds, room, "alice", sample_media["h264"], loop=True) as pub:
                started = await lk.egress.start_track_egress(file_request(room, pub.track_sid, "full"))
                info = await wait_status(lk, started.egress_id, *ENDED, timeout=60)
            assert info.status == Status.EGRESS_FAILED and "No space left on device" in info.error, info.error
            assert str(tmp_path) not in info.error  # no server paths in what callers see
            (result,) = info.file_results
            partial = Path(result.location)
            assert result.size == partial.stat().st_size > 100_000
            assert decoded_frames(partial) > 30  # playable up to its last complete fragment
            manifest = partial.parent / f"{info.egress_id}.json"
            assert not manifest.exists() or manifest.stat().st_size > 0  # never a 0-byte manifest
        finally:
            await lk.aclose()
            svc.stop()


async def test_a_full_data_dir_delays_the_final_status_but_never_loses_it(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "data", "2m") as data:
        svc = EgressService(livekit_server, tmp_path)
        lk = api.LiveKitAPI(url=svc.url, api_key=livekit_server.api_key, api_secret=livekit_server.api_secret)
        filler = data / "filler"
        try:
            room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
            async with Publisher(livekit_server.url, creds, room, "alice", sample_media["opus"], loop=True) as pub:
                started = await lk.egress.start_track_egress(file_request(room, pub.track_sid, "kept"))
                await wait_status(lk, started.egress_id, Status.EGRESS_ACTIVE, timeout=30)
                subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)  # disk full
                await asyncio.sleep(1.5)
                await lk.egress.stop_egress(egress.StopEgressRequest(egress_id=started.egress_id))
                done = await wait_status(lk, started.egress_id, *ENDED, timeout=30)  # seen although unsaved
            assert done.status == Status.EGRESS_COMPLETE
            await until(lambda: "store write failed" in svc.log_text(), timeout=10)
            assert [i.egress_id for i in (await lk.egress.list_egress(
                egress.ListEgressRequest(active=True))).items] == []
            filler.unlink()  # space again: the retried write goes through
            await until(lambda: "store write failed" in svc.log_text() and _saved(data, started.egress_id),
                        timeout=15)
        finally:
            await lk.aclose()
            svc.stop()
        again = EgressService(livekit_server, tmp_path)  # a restart reads what the store kept
        lk = api.LiveKitAPI(url=again.url, api_key=livekit_server.api_key, api_secret=livekit_server.api_secret)
        try:
            (info,) = (await lk.egress.list_egress(egress.ListEgressRequest(egress_id=started.egress_id))).items
            assert (info.status, info.error) == (Status.EGRESS_COMPLETE, "")
        finally:
            await lk.aclose()
            again.stop()


def _saved(data: Path, egress_id: str) -> bool:
    """Whether the store on disk has ``egress_id`` COMPLETE (read with a second SQLite connection)."""
    try:
        with sqlite3.connect(data / "egress.db", timeout=1) as db:
            row = db.execute("SELECT status FROM egress WHERE egress_id = ?", (egress_id,)).fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == Status.EGRESS_COMPLETE
