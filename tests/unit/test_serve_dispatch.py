"""serve's IOInfo server and dispatcher pieces over an in-memory psrpc bus (no Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import egress, models
from support.fake_bus import FakeBus

from trackegress.cluster.dispatch import request_error
from trackegress.psrpc import wire as psrpc
from trackegress.psrpc.bus import Method, RPCClient, RPCServer
from trackegress.psrpc.wire import GetEgressRequest, PsrpcError, Request
from trackegress.reporting.ioinfo_server import IOInfoServer
from trackegress.reporting.store import Store

Status = egress.EgressStatus


class Hooks:
    def __init__(self) -> None:
        self.sent: list[tuple[int, tuple[str, ...]]] = []

    def notify(self, info: egress.EgressInfo, request_hooks: Iterable[models.WebhookConfig] = ()) -> None:
        self.sent.append((info.status, tuple(hook.url for hook in request_hooks)))


def info(status: int, egress_id: str = "EG_1", room: str = "r") -> egress.EgressInfo:
    track = egress.TrackEgressRequest(room_name=room, webhooks=[{"url": "http://h/x"}])
    return egress.EgressInfo(egress_id=egress_id, room_name=room, status=status, track=track)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    opened = await Store.open(tmp_path / "egress.db")
    yield opened
    await opened.close()


async def test_ioinfo_server_mirrors_livekit_server(store: Store) -> None:
    bus, hooks, seen = FakeBus(), Hooks(), list[egress.EgressInfo]()
    server = IOInfoServer(bus, store, hooks, seen.append)  # type: ignore[arg-type]
    await server.start()
    client = RPCClient(bus, "IOInfo")  # type: ignore[arg-type]
    await client.start()
    for method, status in (("CreateEgress", Status.EGRESS_STARTING), ("CreateEgress", Status.EGRESS_STARTING),
                           ("UpdateEgress", Status.EGRESS_ACTIVE), ("UpdateEgress", Status.EGRESS_COMPLETE)):
        assert await client.call(method, info(status).SerializeToString()) == b""
    assert [status for status, _ in hooks.sent] == [Status.EGRESS_STARTING, Status.EGRESS_ACTIVE,
                                                    Status.EGRESS_COMPLETE]  # a repeated create sends nothing
    assert hooks.sent[0][1] == ("http://h/x",) and len(seen) == 3 and server.active_count == 0
    got = await client.call("GetEgress", GetEgressRequest("EG_1").encode())
    assert egress.EgressInfo.FromString(got).status == Status.EGRESS_COMPLETE
    listing = egress.ListEgressRequest(room_name="r", active=True).SerializeToString()
    assert egress.ListEgressResponse.FromString(await client.call("ListEgress", listing)).items == []
    for method, payload in (("GetEgress", GetEgressRequest("EG_2").encode()),
                            ("ListEgress", egress.ListEgressRequest(egress_id="EG_2").SerializeToString())):
        with pytest.raises(PsrpcError, match="egress does not exist") as error:
            await client.call(method, payload)
        assert error.value.code == "not_found"


async def test_ioinfo_server_refuses_a_redis_with_another_ioinfo_server(store: Store) -> None:
    bus = FakeBus()
    bus.redis.subscribers = 1
    with pytest.raises(RuntimeError, match="another IOInfo server"):
        await IOInfoServer(bus, store, Hooks(), lambda info: None).start()  # type: ignore[arg-type]


async def test_a_late_claimant_hears_at_once_that_it_lost() -> None:
    """The worker frees the capacity it reserved for a claim as soon as another worker is chosen."""
    bus, lost, handled = FakeBus(), [], []

    async def handle(request: Request, body: bytes) -> bytes:
        handled.append(request.request_id)
        return body

    for index, affinity in enumerate((1.0, 0.5)):
        async def score(request: Request, body: bytes, value: float = affinity) -> float:
            await asyncio.sleep(0.1 if value < 1 else 0)  # claims after the client has chosen
            return value

        server = RPCServer(bus, "Svc", f"SRV_{index}")  # type: ignore[arg-type]
        await server.register(Method("M", bytes, handle, score, unclaimed=lambda r: lost.append(r.request_id)))
    client = RPCClient(bus, "Svc")  # type: ignore[arg-type]
    await client.start()
    selection = psrpc.SelectionOpts(maximum_affinity=1, affinity_timeout=1, short_circuit_timeout=0.5)
    assert await client.call("M", b"x", timeout=5, selection=selection) == b"x"
    await asyncio.sleep(0.3)  # the request expires in 5 s
    assert lost == handled and len(lost) == 1


def test_psrpc_errors_become_twirp_errors() -> None:
    cases = {"not_found": "not_found", "malformed_request": "malformed", "data_loss": "dataloss",
             "unavailable": "unavailable", "upstream_client_error": "invalid_argument", "not_acceptable": "unknown"}
    assert {code: request_error(PsrpcError(code, "m")).code for code in cases} == cases
