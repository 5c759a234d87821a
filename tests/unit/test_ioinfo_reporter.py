"""The worker's IOInfo reporter over an in-memory psrpc bus (no Redis): retry budget, resync after a reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.protocol import egress, models
from redis.exceptions import ConnectionError as RedisConnectionError
from support.fake_bus import FakeBus

from trackegress.psrpc import wire as psrpc
from trackegress.psrpc.bus import RPCClient
from trackegress.psrpc.wire import PsrpcError
from trackegress.reporting.ioinfo_client import RETRY_FOR, IOInfoReporter, retry_until
from trackegress.reporting.ioinfo_server import IOInfoServer
from trackegress.reporting.store import Store

Status = egress.EgressStatus


def test_the_retry_budget_is_spent_only_while_redis_is_up() -> None:
    timeout = PsrpcError("deadline_exceeded", "request timed out")
    assert retry_until(100.0, 90.0, timeout, redis_up=True) == 100.0  # livekit-server not answering: budget
    assert retry_until(100.0, 90.0, timeout, redis_up=False) == 90.0 + RETRY_FOR  # the bus has no connection
    assert retry_until(100.0, 90.0, RedisConnectionError("refused"), redis_up=True) == 90.0 + RETRY_FOR
    assert retry_until(500.0, 90.0, OSError("reset"), redis_up=True) == 500.0  # never shortened
    assert retry_until(100.0, 90.0, PsrpcError("unavailable", "no response"), redis_up=True) == 100.0
    assert retry_until(100.0, 90.0, PsrpcError("invalid_argument", "bad"), redis_up=False) is None


class Hooks:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def notify(self, info: egress.EgressInfo, request_hooks: object = ()) -> None:
        self.sent.append((info.egress_id, info.status))


def info(status: int, egress_id: str = "EG_1") -> egress.EgressInfo:
    track = egress.TrackEgressRequest(room_name="r", webhooks=[models.WebhookConfig(url="http://h/x")])
    return egress.EgressInfo(egress_id=egress_id, room_name="r", status=status, track=track)  # type: ignore[arg-type]


@pytest.fixture
async def ioinfo(tmp_path: Path) -> AsyncIterator[tuple[FakeBus, Store, Hooks]]:
    """A bus with serve's IOInfo server on it (which mirrors livekit-server's CreateEgress / UpdateEgress)."""
    bus, hooks, store = FakeBus(), Hooks(), await Store.open(tmp_path / "egress.db")
    await IOInfoServer(bus, store, hooks, lambda info: None).start()  # type: ignore[arg-type]
    yield bus, store, hooks
    await store.close()


async def reporter(bus: FakeBus, finals: list[str]) -> IOInfoReporter:
    client = RPCClient(bus, "IOInfo")  # type: ignore[arg-type]
    await client.start()
    return IOInfoReporter(client, on_final=finals.append)


def requests(bus: FakeBus, egress_id: str) -> list[str]:
    """The IOInfo methods called for ``egress_id``, in order."""
    methods = []
    for channel, payload in bus.published:
        if channel.startswith("IOInfo|") and channel.endswith("|REQ"):
            request = psrpc.unwrap(payload, psrpc.Request)
            if egress.EgressInfo.FromString(request.raw_request).egress_id == egress_id:
                methods.append(channel.split("|")[1])
    return methods


async def test_a_resync_restores_a_lost_egress_and_is_ignored_for_a_known_one(
    ioinfo: tuple[FakeBus, Store, Hooks],
) -> None:
    bus, store, hooks = ioinfo
    finals: list[str] = []
    sender = await reporter(bus, finals)
    sender.report(info(Status.EGRESS_STARTING))
    sender.report(info(Status.EGRESS_ACTIVE))
    sender.resync(info(Status.EGRESS_ACTIVE))  # the server still has EG_1
    sender.resync(info(Status.EGRESS_ACTIVE, "EG_2"))  # the server lost EG_2 (a Redis that restarted empty)
    sender.report(info(Status.EGRESS_COMPLETE))
    async with asyncio.timeout(5):
        while not finals or (await store.get("EG_2")) is None:
            await asyncio.sleep(0.01)
    await sender.drain(0.1)  # EG_2 is still running: its sender waits for more
    assert finals == ["EG_1"]
    # in order per egress; the known egress's resync sent no second egress_started, the lost one was stored
    assert requests(bus, "EG_1") == ["CreateEgress", "UpdateEgress", "CreateEgress", "UpdateEgress"]
    assert requests(bus, "EG_2") == ["CreateEgress"]
    assert [status for egress_id, status in hooks.sent if egress_id == "EG_1"] == [
        Status.EGRESS_STARTING, Status.EGRESS_ACTIVE, Status.EGRESS_COMPLETE]
    assert [(egress_id, status) for egress_id, status in hooks.sent if egress_id == "EG_2"] == [
        ("EG_2", Status.EGRESS_ACTIVE)]
    stored = [await store.get(egress_id) for egress_id in ("EG_1", "EG_2")]
    assert [s.status if s else None for s in stored] == [Status.EGRESS_COMPLETE, Status.EGRESS_ACTIVE]
