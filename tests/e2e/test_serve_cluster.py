"""``trackegress serve`` with ``redis:`` dispatching to two ``trackegress worker`` processes over psrpc.

Real redis-server, real livekit-server (without Redis: serve's Redis is its own), LiveKit's Python client
against serve's Twirp API, webhooks from serve verified with ``livekit-api``'s ``WebhookReceiver``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from livekit import api
from livekit.protocol import egress
from support.egress_helpers import file_request, wait_status
from support.egress_service import EgressService, WebhookSink
from support.process import OpsEndpoints, stop_process, wait_ready
from support.publisher import Publisher
from support.redis_server import RedisServer
from support.server import LiveKitServer, RoomFactory, free_port

Status = egress.EgressStatus
ONE_EGRESS = {"max_cpu_utilization": 0.5, "track_cpu_cost": (os.cpu_count() or 1) * 0.5}  # budget = one egress


class WorkerProcess(OpsEndpoints):
    """``trackegress worker`` with its own config, data and recordings dirs, health and metrics ports."""

    def __init__(self, workdir: Path, server: LiveKitServer, redis: RedisServer) -> None:
        workdir.mkdir(parents=True)
        self.local_dir = workdir / "recordings"
        self.health_port, self.prometheus_port = free_port(), free_port()
        config = {
            "api_key": server.api_key, "api_secret": server.api_secret, "ws_url": server.url,
            "redis": {"address": redis.address}, "local_dir": str(self.local_dir), "data_dir": str(workdir / "data"),
            "track_wait_timeout": "5s", "cpu_cost": ONE_EGRESS, "health_port": self.health_port,
            "prometheus_port": self.prometheus_port,
        }
        (workdir / "egress.yaml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "worker.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trackegress.cli", "worker", "--config", str(workdir / "egress.yaml"),
                 "--shutdown-grace", "1"], stdout=subprocess.DEVNULL, stderr=log,
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_ready(self.proc, self.answers, timeout, "trackegress worker", lambda: self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        stop_process(self.proc, 15)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def cluster(
    livekit_server: LiveKitServer, redis_server: RedisServer, hooks: WebhookSink, tmp_path: Path
) -> Iterator[tuple[EgressService, list[WorkerProcess]]]:
    """serve with ``redis:`` and a webhook URL, and two workers that each have room for one egress."""
    workers = [WorkerProcess(tmp_path / name, livekit_server, redis_server) for name in ("a", "b")]
    service = None
    try:
        service = EgressService(livekit_server, tmp_path / "serve", redis={"address": redis_server.address},
                                webhook={"urls": [hooks.url]})
        for worker in workers:
            worker.wait_ready()
        yield service, workers
    finally:
        for worker in workers:
            worker.stop()
        if service is not None:
            service.stop()


async def test_serve_dispatches_track_egresses_to_two_workers_over_redis(
    cluster: tuple[EgressService, list[WorkerProcess]], livekit_server: LiveKitServer, redis_server: RedisServer,
    hooks: WebhookSink, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    service, workers = cluster
    second_serve_refused(livekit_server, redis_server, tmp_path)
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    lk = api.LiveKitAPI(url=service.url, api_key=livekit_server.api_key, api_secret=livekit_server.api_secret)
    try:
        async with Publisher(livekit_server.url, creds, room, "alice", sample_media["opus"], loop=True) as alice, \
                Publisher(livekit_server.url, creds, room, "bob", sample_media["opus"], loop=True) as bob:
            started = [await lk.egress.start_track_egress(file_request(room, pub.track_sid, f"{pub.identity}.ogg"))
                       for pub in (alice, bob)]
            assert [(s.status, s.room_name) for s in started] == [(Status.EGRESS_STARTING, room)] * 2
            assert all(s.room_id.startswith("RM_") and s.egress_id.startswith("EG_") for s in started)
            active = [await wait_status(lk, s.egress_id, Status.EGRESS_ACTIVE) for s in started]
            where = {Path(a.file_results[0].location).parents[1].name: a.track.track_id for a in active}
            assert where == {"a": alice.track_sid, "b": bob.track_sid} or where == {"a": bob.track_sid,
                                                                                    "b": alice.track_sid}
            listed = await lk.egress.list_egress(egress.ListEgressRequest(room_name=room, active=True))
            assert sorted(i.egress_id for i in listed.items) == sorted(s.egress_id for s in started)
            assert [w.health()["active_egresses"] for w in workers] == [1, 1]
            assert service.health() == {"status": "ok", "active_egresses": 2, "accepting": True}
            assert "trackegress_egress_active 1.0" in workers[0].metrics()
            await asyncio.sleep(1.5)
            stopped = [await lk.egress.stop_egress(egress.StopEgressRequest(egress_id=s.egress_id)) for s in started]
            assert [s.status for s in stopped] == [Status.EGRESS_ENDING] * 2
            done = [await wait_status(lk, s.egress_id, Status.EGRESS_COMPLETE, Status.EGRESS_FAILED) for s in started]
        for info in done:
            assert Status.Name(info.status) == "EGRESS_COMPLETE", info.error
            result = info.file_results[0]
            assert result.size == Path(result.location).stat().st_size > 1000 and result.duration > 1_000_000_000
        assert (await lk.egress.list_egress(egress.ListEgressRequest(room_name=room, active=True))).items == []
        with pytest.raises(api.TwirpError, match="cannot be stopped"):
            await lk.egress.stop_egress(egress.StopEgressRequest(egress_id=started[0].egress_id))
        with pytest.raises(api.TwirpError, match="does not exist"):
            await lk.egress.stop_egress(egress.StopEgressRequest(egress_id="EG_notanegress0"))
    finally:
        await lk.aclose()
    for info in started:
        await hooks.wait_for(info.egress_id, "egress_ended")
        assert hooks.for_egress(info.egress_id) == [
            ("egress_started", Status.EGRESS_STARTING), ("egress_updated", Status.EGRESS_ACTIVE),
            ("egress_updated", Status.EGRESS_ENDING), ("egress_ended", Status.EGRESS_COMPLETE),
        ]
    assert hooks.rejected == []


def second_serve_refused(server: LiveKitServer, redis: RedisServer, tmp_path: Path) -> None:
    """Two IOInfo servers on one Redis would split the reports between them: the second serve exits."""
    config = {"api_key": server.api_key, "api_secret": server.api_secret, "ws_url": server.url,
              "api_port": free_port(), "data_dir": str(tmp_path / "serve2"), "redis": {"address": redis.address}}
    env = {k: v for k, v in os.environ.items() if k != "EGRESS_CONFIG_FILE"} | {
        "EGRESS_CONFIG_BODY": yaml.safe_dump(config)}
    run = subprocess.run([sys.executable, "-m", "trackegress.cli", "serve"], env=env, capture_output=True, timeout=30)
    assert run.returncode == 1 and b"another IOInfo server" in run.stderr, run.stderr[-2000:]
