"""``trackegress worker`` behind a real livekit-server v1.13.5 with a real redis-server (psrpc over Redis).

Requests go through livekit-server's Twirp API with LiveKit's Python client (``lk`` cannot be installed
here), or straight onto the bus with our psrpc client where livekit-server cannot produce the case
(a repeated egress id, malformed payloads, a request no worker has room for).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import av
import pytest
from livekit import api
from livekit.protocol import egress, webhook
from redis.asyncio import Redis
from support.egress_helpers import file_request, until, wait_status
from support.publisher import Publisher
from support.redis_server import RedisServer
from support.server import BINARY, LiveKitServer, create_room, free_port, temporary_room
from support.site import decode_errors, seconds_of
from support.worker_process import Worker
from support.wsreceiver import Receiver

from trackegress.psrpc import wire as psrpc
from trackegress.psrpc.bus import RedisBus, RPCClient
from trackegress.psrpc.wire import PsrpcError, SelectionOpts, StartEgressRequest

Status = egress.EgressStatus
LIVEKIT_SELECTION = SelectionOpts(maximum_affinity=1, affinity_timeout=1.0, short_circuit_timeout=0.5)


class Webhooks(http.server.ThreadingHTTPServer):
    """Receives livekit-server's webhooks on a thread and keeps those ``WebhookReceiver`` verifies."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        super().__init__(("127.0.0.1", 0), _WebhookHandler)
        self.receiver = api.WebhookReceiver(api.TokenVerifier(api_key, api_secret))
        self.events: list[webhook.WebhookEvent] = []
        self.rejected: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/hook"

    def for_egress(self, egress_id: str) -> list[tuple[str, str]]:
        return [(e.event, Status.Name(e.egress_info.status)) for e in self.events
                if e.egress_info.egress_id == egress_id]


class _WebhookHandler(http.server.BaseHTTPRequestHandler):
    server: Webhooks

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        try:
            self.server.events.append(self.server.receiver.receive(body, self.headers.get("Authorization", "")))
            self.send_response(200)
        except Exception as exc:
            self.server.rejected.append(str(exc))
            self.send_response(401)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if not os.access(BINARY, os.X_OK):
        pytest.skip(f"livekit-server not installed at {BINARY} (run scripts/install.sh)")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def webhooks() -> Iterator[Webhooks]:
    hooks = Webhooks("devkey", "secret")
    thread = threading.Thread(target=hooks.serve_forever, daemon=True)
    thread.start()
    yield hooks
    hooks.shutdown()
    hooks.server_close()


@pytest.fixture(scope="module")
def lk_redis(redis_server: RedisServer, webhooks: Webhooks) -> Iterator[LiveKitServer]:
    """livekit-server with Redis (so egress goes over psrpc) and a webhook URL."""
    with LiveKitServer(redis_address=redis_server.address, webhook_urls=[webhooks.url]) as server:
        yield server


@pytest.fixture
def workers(tmp_path: Path, lk_redis: LiveKitServer, redis_server: RedisServer) -> Iterator[list[Worker]]:
    """``workers.append(Worker(...).start())``; every worker is stopped after the test."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


@asynccontextmanager
async def bus_client(redis: RedisServer, service: str) -> AsyncIterator[RPCClient]:
    """Our psrpc client on the test Redis, standing in for livekit-server."""
    host, port = redis.address.split(":")
    connection = Redis(host=host, port=int(port))
    bus = RedisBus(connection)
    client = RPCClient(bus, service)
    await client.start()
    try:
        yield client
    finally:
        await bus.close()
        await connection.aclose()


async def wait_file(path: Path, size: int, timeout: float = 15.0) -> None:
    """Until ``path`` has at least ``size`` bytes on disk."""
    await until(lambda: path.exists() and path.stat().st_size >= size, timeout, interval=0.2)


async def wait_hooks(hooks: Webhooks, egress_id: str, event: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while event not in [name for name, _ in hooks.for_egress(egress_id)]:
            await asyncio.sleep(0.05)


async def test_start_list_stop_through_livekit_server_with_webhooks(
    lk_redis: LiveKitServer, redis_server: RedisServer, webhooks: Webhooks, workers: list[Worker],
    sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    worker = Worker(tmp_path / "w", lk_redis, redis_server)
    workers.append(worker.start())
    creds = (lk_redis.api_key, lk_redis.api_secret)
    async with temporary_room(lk_redis, "worker") as (client, room), \
            Publisher(lk_redis.url, creds, room, "alice", sample_media["opus"], loop=True) as pub:
        began = time.monotonic()
        info = await client.egress.start_track_egress(file_request(room, pub.track_sid, "{room_name}/alice.ogg"))
        assert time.monotonic() - began < 3
        assert info.status == Status.EGRESS_STARTING and info.egress_id.startswith("EG_")
        assert info.room_name == room and info.room_id.startswith("RM_") and info.track.track_id == pub.track_sid
        active = await wait_status(client, info.egress_id, Status.EGRESS_ACTIVE)
        assert active.file_results[0].location.startswith(str(worker.local_dir))
        async with bus_client(redis_server, "EgressInternal") as internal:
            listed = await internal.multi("ListActiveEgress", b"", timeout=0.5)
        assert [psrpc.ListActiveEgressResponse.decode(r).egress_ids for r in listed] == [(info.egress_id,)]
        await asyncio.sleep(1.5)
        stopped = await client.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
        assert stopped.status == Status.EGRESS_ENDING
        done = await wait_status(client, info.egress_id, Status.EGRESS_COMPLETE, Status.EGRESS_FAILED)
    assert Status.Name(done.status) == "EGRESS_COMPLETE", done.error
    assert done.details.split("; sync: ")[0] == "End reason: StopEgress API", done.details
    result = done.file_results[0]
    assert result.filename == f"{room}/alice.ogg" and result.size == (worker.local_dir / result.filename).stat().st_size
    assert result.duration > 1_000_000_000
    with pytest.raises(api.TwirpError, match="cannot be stopped"):  # gone from the bus: livekit-server's fallback
        await _stop_again(lk_redis, info.egress_id)
    await wait_hooks(webhooks, info.egress_id, "egress_ended")
    assert webhooks.for_egress(info.egress_id) == [
        ("egress_started", "EGRESS_STARTING"), ("egress_updated", "EGRESS_ACTIVE"),
        ("egress_updated", "EGRESS_ENDING"), ("egress_ended", "EGRESS_COMPLETE"),
    ]
    assert webhooks.rejected == []


async def _stop_again(server: LiveKitServer, egress_id: str) -> None:
    client = api.LiveKitAPI(server.http_url, server.api_key, server.api_secret)
    try:
        await client.egress.stop_egress(api.StopEgressRequest(egress_id=egress_id))
    finally:
        await client.aclose()


def start_two_workers(
    tmp_path: Path, server: LiveKitServer, redis: RedisServer, workers: list[Worker], *,
    max_cpu_utilization: float, cost_per_cpu: float,
) -> tuple[Worker, Worker]:
    """Workers "a" and "b" with room for ``max_cpu_utilization / cost_per_cpu`` egresses each."""
    cpu_cost = {"max_cpu_utilization": max_cpu_utilization, "track_cpu_cost": (os.cpu_count() or 1) * cost_per_cpu}
    first, second = (Worker(tmp_path / name, server, redis, cpu_cost=cpu_cost) for name in ("a", "b"))
    workers.extend([first.start(), second.start()])
    return first, second


async def test_ten_egresses_spread_over_two_workers_by_affinity(
    lk_redis: LiveKitServer, redis_server: RedisServer, workers: list[Worker], sample_media: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Both claim with affinity 1 (taken at once), the busier one later by 0.1 s times its reserved share, so
    sequential starts go to the less busy worker: about half each (the delays differ by ~3 ms at 4 against 5
    egresses, within a loaded machine's scheduling jitter: 4 / 6 seen in CI; without the spread one takes all)."""
    start_two_workers(tmp_path, lk_redis, redis_server, workers, max_cpu_utilization=0.8, cost_per_cpu=0.1)
    creds = (lk_redis.api_key, lk_redis.api_secret)
    async with temporary_room(lk_redis, "worker") as (client, room), \
            Publisher(lk_redis.url, creds, room, "carol", sample_media["opus"], loop=True) as pub:
        started = [await client.egress.start_track_egress(file_request(room, pub.track_sid, f"carol-{n}.ogg"))
                   for n in range(10)]
        active = [await wait_status(client, info.egress_id, Status.EGRESS_ACTIVE) for info in started]
        for info in started:
            await client.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
        done = [await wait_status(client, info.egress_id, Status.EGRESS_COMPLETE) for info in started]
    per_worker = [Path(info.file_results[0].location).parents[1].name for info in active]
    assert min(per_worker.count(name) for name in ("a", "b")) >= 4, per_worker
    assert all(info.file_results[0].size > 0 for info in done)


async def test_two_workers_share_load_and_a_killed_worker_reports_failed_on_restart(
    lk_redis: LiveKitServer, redis_server: RedisServer, webhooks: Webhooks, workers: list[Worker],
    sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    first, _ = start_two_workers(tmp_path, lk_redis, redis_server, workers, max_cpu_utilization=0.5, cost_per_cpu=0.5)
    creds = (lk_redis.api_key, lk_redis.api_secret)
    async with temporary_room(lk_redis, "worker") as (client, room), \
            Publisher(lk_redis.url, creds, room, "bob", sample_media["opus"], loop=True) as pub:
        started = [await client.egress.start_track_egress(file_request(room, pub.track_sid, f"bob-{n}.ogg"))
                   for n in range(2)]
        active = [await wait_status(client, info.egress_id, Status.EGRESS_ACTIVE) for info in started]
        dirs = sorted(str(Path(info.file_results[0].location).parents[1].name) for info in active)
        assert dirs == ["a", "b"], "one egress on each worker: a busy worker has no room left and does not claim"
        async with bus_client(redis_server, "EgressInternal") as internal:
            third = StartEgressRequest(psrpc.new_id("EG_"), "track", file_request(room, pub.track_sid, "x.ogg"))
            with pytest.raises(PsrpcError, match="no response from servers"):
                await internal.call("StartEgress", third.encode(), timeout=5, selection=LIVEKIT_SELECTION)
        by_worker = {Path(i.file_results[0].location).parents[1].name: i for i in active}
        await wait_file(Path(by_worker["a"].file_results[0].location), 1000)
        first.kill()
        await asyncio.sleep(2)
        survivor = by_worker["b"]
        assert (await wait_status(client, survivor.egress_id, Status.EGRESS_ACTIVE)).status == Status.EGRESS_ACTIVE
        killed = await wait_status(client, by_worker["a"].egress_id, Status.EGRESS_ACTIVE)
        first.start()
        failed = await wait_status(client, killed.egress_id, Status.EGRESS_FAILED)
        await client.egress.stop_egress(api.StopEgressRequest(egress_id=survivor.egress_id))
        completed = await wait_status(client, survivor.egress_id, Status.EGRESS_COMPLETE)
    assert (failed.error, failed.details) == ("Process killed", "End reason: Process killed")
    partial = failed.file_results[0]
    assert partial.filename == killed.file_results[0].filename and partial.size > 1000
    assert Path(partial.location).stat().st_size == partial.size
    assert completed.file_results[0].duration > 3_000_000_000  # went on recording through the kill and restart
    await wait_hooks(webhooks, killed.egress_id, "egress_ended")
    assert webhooks.for_egress(killed.egress_id)[-1] == ("egress_ended", "EGRESS_FAILED")


async def test_repeated_egress_id_records_once_and_malformed_payloads_are_ignored(
    lk_redis: LiveKitServer, redis_server: RedisServer, workers: list[Worker], sample_media: dict[str, Path],
    tmp_path: Path,
) -> None:
    worker = Worker(tmp_path / "w", lk_redis, redis_server)
    workers.append(worker.start())
    creds = (lk_redis.api_key, lk_redis.api_secret)
    async with temporary_room(lk_redis, "worker") as (client, room), \
            bus_client(redis_server, "EgressInternal") as internal, \
            Publisher(lk_redis.url, creds, room, "carol", sample_media["opus"], loop=True) as pub:
        await _send_garbage(internal, worker)
        egress_id = psrpc.new_id("EG_")
        start = StartEgressRequest(egress_id, "track", file_request(room, pub.track_sid, "carol.ogg"))

        async def start_once() -> egress.EgressInfo:
            raw = await internal.call("StartEgress", start.encode(), timeout=10, selection=LIVEKIT_SELECTION)
            return egress.EgressInfo.FromString(raw)

        answers = await asyncio.gather(start_once(), start_once())
        answers.append(await start_once())
        assert {a.egress_id for a in answers} == {egress_id}
        await wait_status(client, egress_id, Status.EGRESS_ACTIVE)
        listed = await internal.multi("ListActiveEgress", b"", timeout=0.5)
        assert [psrpc.ListActiveEgressResponse.decode(r).egress_ids for r in listed] == [(egress_id,)]
        assert worker.terminate() == 0  # SIGTERM: the egress is stopped after the grace period, reported, exit 0
        done = await wait_status(client, egress_id, Status.EGRESS_COMPLETE, Status.EGRESS_FAILED)
    assert Status.Name(done.status) == "EGRESS_COMPLETE", done.error
    assert done.details.startswith("End reason: Server shutting down"), done.details
    assert sorted(p.name for p in worker.local_dir.iterdir()) == sorted(["carol.ogg", f"{egress_id}.json"])
    assert worker.log_text().count(f"egress {egress_id} started") == 1
    assert worker.log_text().count("ignored a malformed message") >= 3


async def test_a_worker_whose_process_uses_its_cpu_budget_claims_nothing_until_it_has_room(
    lk_redis: LiveKitServer, redis_server: RedisServer, workers: list[Worker], sample_media: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Measured admission: reservations here are nearly free (track_cpu_cost 0.0001), so only the CPU the worker
    really uses can refuse. Its budget (0.006 CPUs on 2 cores) lies between an idle worker (~0.001) and one recording
    an H.264 track (~0.01, measured with /proc/<pid>/stat)."""
    cpus = os.cpu_count() or 1
    worker = Worker(tmp_path / "w", lk_redis, redis_server,
                    cpu_cost={"max_cpu_utilization": 0.006 / cpus, "track_cpu_cost": 0.0001})
    workers.append(worker.start())
    creds = (lk_redis.api_key, lk_redis.api_secret)
    async with temporary_room(lk_redis, "worker") as (client, room), \
            bus_client(redis_server, "EgressInternal") as internal, \
            Publisher(lk_redis.url, creds, room, "dave", sample_media["h264"], loop=True) as pub:
        first = await client.egress.start_track_egress(file_request(room, pub.track_sid, "first.mp4"))
        await wait_status(client, first.egress_id, Status.EGRESS_ACTIVE)
        await asyncio.sleep(3)  # the 2 s measurement now holds the recording
        second = StartEgressRequest(psrpc.new_id("EG_"), "track", file_request(room, pub.track_sid, "second.mp4"))
        with pytest.raises(PsrpcError, match="no response from servers"):
            await internal.call("StartEgress", second.encode(), timeout=5, selection=LIVEKIT_SELECTION)
        assert re.search(rf"egress {second.egress_id}: not claimed, at capacity .* measured", worker.log_text())
        await client.egress.stop_egress(api.StopEgressRequest(egress_id=first.egress_id))
        await wait_status(client, first.egress_id, Status.EGRESS_COMPLETE)
        await asyncio.sleep(3)  # idle again in the measurement
        raw = await internal.call("StartEgress", second.encode(), timeout=10, selection=LIVEKIT_SELECTION)
        assert egress.EgressInfo.FromString(raw).egress_id == second.egress_id
        await wait_status(client, second.egress_id, Status.EGRESS_ACTIVE)
        await client.egress.stop_egress(api.StopEgressRequest(egress_id=second.egress_id))
        await wait_status(client, second.egress_id, Status.EGRESS_COMPLETE)


async def _send_garbage(internal: RPCClient, worker: Worker) -> None:
    """Junk on the worker's channels, and a valid envelope whose request body is junk."""
    for channel in ("EgressInternal|StartEgress|REQ", "EgressInternal|StartEgress|RCLAIM",
                    "EgressInternal|ListActiveEgress|REQ"):
        await internal.bus.publish(channel, b"\x08\x96\x01not a psrpc message")
    with pytest.raises(PsrpcError) as error:
        await internal.call("StartEgress", b"\xff\xff\xff", timeout=3, selection=LIVEKIT_SELECTION)
    assert error.value.code == "malformed_request"
    await asyncio.sleep(0.3)
    assert worker.proc is not None and worker.proc.poll() is None


async def test_queue_subscriptions_deliver_to_one_subscriber(redis_server: RedisServer) -> None:
    host, port = redis_server.address.split(":")
    connections = [Redis(host=host, port=int(port)) for _ in range(3)]
    buses = [RedisBus(c) for c in connections]
    got: list[int] = []

    def handler(index: int) -> Any:
        async def handle(channel: str, payload: bytes) -> None:
            got.append(index)
        return handle

    try:
        for index, bus in enumerate(buses[:2]):
            await bus.subscribe("T|Q|REQ", handler(index), queue=True)
        await buses[2].publish("T|Q|REQ", b"payload-1")
        await buses[2].publish("T|Q|REQ", b"payload-2")
        await asyncio.sleep(0.3)
        assert len(got) == 2 and len(set(got)) in (1, 2)
        assert await connections[2].exists("T|Q|REQ") == 0
        assert await connections[2].ttl(psrpc_lock_key(b"payload-1")) > 0
    finally:
        for bus, connection in zip(buses, connections, strict=True):
            await bus.close()
            await connection.aclose()


def psrpc_lock_key(payload: bytes) -> str:
    return base64.b64encode(hashlib.sha256(payload).digest()).decode()


@pytest.mark.timing  # asserts outage and reconnect times
@pytest.mark.xdist_group("cpu")
async def test_recording_survives_a_redis_restart_and_the_worker_reconnects_by_itself(
    sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    """redis-server (livekit-server's too) is killed mid-recording and restarted empty on the same port.

    The file egress records on; a WebSocket egress that hits its time limit while Redis is down has its final
    status retried until livekit-server has it; the same worker process claims a new egress afterwards; the
    running egress, which livekit-server's emptied Redis forgot, is listed again (the worker re-announces it).
    Rooms are created after the restart for new egresses: livekit-server v1.13.5 keeps the old room in memory
    but its Redis record is gone, so StartTrackEgress for it answers "requested room does not exist".
    """
    receiver = Receiver()
    await receiver.start()
    rooms: list[str] = []
    with RedisServer() as redis, LiveKitServer(redis_address=redis.address) as server:
        worker = Worker(tmp_path / "w", server, redis, session_limits={"stream_output_max_duration": "3s"}).start()
        client = api.LiveKitAPI(server.http_url, server.api_key, server.api_secret)
        creds = (server.api_key, server.api_secret)
        try:
            rooms.append(await create_room(client, "redis-restart"))
            async with Publisher(server.url, creds, rooms[0], "alice", sample_media["opus"], loop=True) as alice:
                recording = await client.egress.start_track_egress(file_request(rooms[0], alice.track_sid, "a.ogg"))
                limited = await client.egress.start_track_egress(egress.TrackEgressRequest(
                    room_name=rooms[0], track_id=alice.track_sid, websocket_url=receiver.url()))
                await wait_status(client, recording.egress_id, Status.EGRESS_ACTIVE)
                recording_since = time.monotonic()
                await wait_status(client, limited.egress_id, Status.EGRESS_ACTIVE)

                redis.kill()
                killed = time.monotonic()
                # the WebSocket egress reaches its limit with Redis down: its first report fails
                failed = re.compile(rf"{limited.egress_id}: IOInfo\.UpdateEgress EGRESS_ENDING(:| failed)")
                await until(lambda: failed.search(worker.log_text()), timeout=8, interval=0.05)
                limit_line = f"egress {limited.egress_id} EGRESS_LIMIT_REACHED"  # once its stream is closed
                await until(lambda: limit_line in worker.log_text(), timeout=5, interval=0.05)
                redis.start()
                restarted = time.monotonic()
                await until(lambda: "reconnected to Redis" in worker.log_text(), timeout=10, interval=0.05)
                reconnect_s, outage_s = time.monotonic() - restarted, restarted - killed

                ended = await _listed(client, limited.egress_id, Status.EGRESS_LIMIT_REACHED)
                relisted = await _listed(client, recording.egress_id, Status.EGRESS_ACTIVE)
                assert relisted.room_name == rooms[0]

                rooms.append(await _create_room_when_ready(client))
                async with Publisher(server.url, creds, rooms[1], "carol", sample_media["opus"], loop=True) as carol:
                    fresh = await client.egress.start_track_egress(file_request(rooms[1], carol.track_sid, "c.ogg"))
                    claimed = await wait_status(client, fresh.egress_id, Status.EGRESS_ACTIVE)
                    await asyncio.sleep(1)
                    stopped = await client.egress.stop_egress(api.StopEgressRequest(egress_id=fresh.egress_id))
                    assert stopped.status == Status.EGRESS_ENDING
                    after = await wait_status(client, fresh.egress_id, Status.EGRESS_COMPLETE, Status.EGRESS_FAILED)
                left = time.monotonic()  # alice leaves: the recording's end reason
            done = await wait_status(client, recording.egress_id, Status.EGRESS_COMPLETE, Status.EGRESS_FAILED)
            still_active = (await client.egress.list_egress(egress.ListEgressRequest(active=True))).items
        finally:
            for room in rooms:
                with contextlib.suppress(api.TwirpError):
                    await client.room.delete_room(api.DeleteRoomRequest(room=room))
            await client.aclose()
            await receiver.stop()
            alive = worker.proc is not None and worker.proc.poll() is None
            log = worker.log_text()
            worker.close()

    assert alive and log.count("serving (cluster_id") == 1, "one worker process throughout"
    assert outage_s < 6, f"Redis was down {outage_s:.1f}s: livekit-server drops signal connections after 7.5s"
    assert reconnect_s < 3, f"reconnected {reconnect_s:.1f}s after Redis came back"
    assert ended.details.split("; sync: ")[0] == "End reason: Session limit reached", ended.details
    assert Path(claimed.file_results[0].location).is_relative_to(worker.local_dir)
    assert Status.Name(after.status) == "EGRESS_COMPLETE", after.error
    assert Status.Name(done.status) == "EGRESS_COMPLETE", done.error
    result = done.file_results[0]
    path = worker.local_dir / result.filename
    assert path.stat().st_size == result.size > 0
    assert decode_errors(path) == ""
    expected = left - recording_since
    assert abs(seconds_of(path) - expected) < 1.5, (seconds_of(path), expected)
    assert abs(result.duration / 1e9 - expected) < 1.5, (result.duration, expected)
    assert _audio_seconds(path) > expected - 1.5, "published audio, not gap filler, through the outage"
    assert [(i.egress_id, Status.Name(i.status)) for i in still_active] == []


async def _listed(client: api.LiveKitAPI, egress_id: str, status: int, timeout: float = 15.0) -> egress.EgressInfo:
    """``wait_status`` through a livekit-server that is reconnecting to Redis (its API fails meanwhile)."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(api.TwirpError):
                return await wait_status(client, egress_id, status, timeout=timeout)
            await asyncio.sleep(0.2)


async def _create_room_when_ready(client: api.LiveKitAPI, timeout: float = 15.0) -> str:
    """A new room once livekit-server can place one again (its node record was in the emptied Redis)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await create_room(client, "redis-restart")
            except api.TwirpError:
                await asyncio.sleep(0.2)


def _audio_seconds(path: Path) -> float:
    """Seconds of real Opus packets (gaps are recorded as TOC-only packets of a byte or two)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return sum(float(p.duration * p.time_base) for p in container.demux(stream)
                   if p.size > 3 and p.duration and p.time_base)


def child_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    """The supervisor's children (one worker process each)."""
    return [int(pid) for task in Path(f"/proc/{proc.pid}/task").iterdir()
            for pid in (task / "children").read_text().split()]


async def test_a_node_runs_a_worker_process_per_core_and_a_crashed_one_ends_only_its_own(
    lk_redis: LiveKitServer, redis_server: RedisServer, workers: list[Worker], sample_media: dict[str, Path],
    tmp_path: Path,
) -> None:
    """``processes: 2``: two psrpc servers claiming by their own load; kill -9 one: its egresses (only) end FAILED
    "Process killed" once the supervisor has started it again, the other's record on."""
    health_port, prometheus_port = free_port(), free_port()
    worker = Worker(tmp_path / "node", lk_redis, redis_server, processes=2, health_port=health_port,
                    prometheus_port=prometheus_port)
    workers.append(worker.start())
    await until(lambda: worker.log_text().count("serving (cluster_id") == 2, timeout=20)
    assert worker.proc is not None and len(child_pids(worker.proc)) == 2
    creds = (lk_redis.api_key, lk_redis.api_secret)
    async with temporary_room(lk_redis, "worker") as (client, room), \
            bus_client(redis_server, "EgressInternal") as internal, \
            Publisher(lk_redis.url, creds, room, "erin", sample_media["opus"], loop=True) as pub:
        started = [await client.egress.start_track_egress(file_request(room, pub.track_sid, f"erin-{n}.ogg"))
                   for n in range(4)]
        for info in started:
            await wait_status(client, info.egress_id, Status.EGRESS_ACTIVE)
        listed = await internal.multi("ListActiveEgress", b"", timeout=0.5)
        per_process = sorted(len(psrpc.ListActiveEgressResponse.decode(r).egress_ids) for r in listed)
        assert per_process == [2, 2], "claims spread over the processes"
        health = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{health_port}/")
        assert (health["active_egresses"], len(health["processes"])) == (4, 2)
        assert health["available"]["audio_file"] > 2 * 200  # two processes' room, each on its own core
        metrics = await asyncio.to_thread(_get_text, f"http://127.0.0.1:{prometheus_port}/metrics")
        assert 'trackegress_egress_active{process="0"} 2.0' in metrics
        assert 'trackegress_egress_available{kind="websocket",process="1"}' in metrics

        victim = child_pids(worker.proc)[0]
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.5)
        listed = await internal.multi("ListActiveEgress", b"", timeout=0.5)
        survivors = {e for r in listed for e in psrpc.ListActiveEgressResponse.decode(r).egress_ids}
        killed = {info.egress_id for info in started} - survivors
        assert len(survivors) == len(killed) == 2
        for egress_id in killed:  # reported by the restarted process from its own store
            failed = await wait_status(client, egress_id, Status.EGRESS_FAILED, timeout=30)
            assert failed.error == "Process killed" and failed.file_results[0].size > 0
        await until(lambda: len(child_pids(worker.proc)) == 2 and victim not in child_pids(worker.proc))  # type: ignore[arg-type]
        for egress_id in survivors:
            assert (await wait_status(client, egress_id, Status.EGRESS_ACTIVE)).status == Status.EGRESS_ACTIVE
            await client.egress.stop_egress(api.StopEgressRequest(egress_id=egress_id))
            done = await wait_status(client, egress_id, Status.EGRESS_COMPLETE)
            assert done.file_results[0].duration > 2_000_000_000  # recorded on through the other's crash
    assert "exited with -9; starting it again" in worker.log_text()


def _get_json(url: str) -> dict[str, Any]:
    return dict(json.loads(_get_text(url)))


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())
