"""psrpc's wire format (envelopes, field numbers, channel names) and claim logic, without Redis."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from google.protobuf import any_pb2
from livekit.protocol import egress
from support.fake_bus import FakeBus

from trackegress.cluster.worker import CLAIM, CLAIM_SPREAD, REFUSAL, claim_delay
from trackegress.cpuload import CpuAdmission
from trackegress.psrpc import wire as psrpc
from trackegress.psrpc.bus import Method, RPCClient, RPCServer
from trackegress.psrpc.wire import (
    ClaimRequest,
    ClaimResponse,
    MalformedMessage,
    PsrpcError,
    Request,
    Response,
    Selection,
    SelectionOpts,
    StartEgressRequest,
)

# envelopes and field numbers


def test_request_bytes_match_upstream_field_numbers() -> None:
    request = Request("REQ_1", "CLI_x", sent_at=1, expiry=2, multi=True, raw_request=b"abc")
    # 1: request_id, 2: client_id, 3: sent_at, 4: expiry, 5: multi, 8: raw_request
    assert request.encode().hex() == "0a055245515f31" "1205434c495f78" "1801" "2002" "2801" "4203616263"


def test_response_claim_request_and_claim_response_field_numbers() -> None:
    response = Response("REQ_1", "SRV_y", sent_at=3, error="e", code="not_found", raw_response=b"r")
    assert response.encode().hex() == (
        "0a055245515f31" "1205535256" "5f79" "1803" "2a0165" "32096e6f745f666f756e64" "3a0172"
    )
    assert ClaimRequest("R", "S", 0.5).encode().hex() == "0a0152" "120153" "1d0000003f"  # 3: float32
    assert ClaimResponse("R", "S").encode().hex() == "0a0152120153"


def test_envelope_is_an_any_with_the_internal_type_url() -> None:
    claim = ClaimResponse("REQ_1", "SRV_1")
    payload = psrpc.wrap(claim)
    envelope = any_pb2.Any.FromString(payload)
    assert envelope.type_url == "type.googleapis.com/internal.ClaimResponse"
    assert envelope.value == claim.encode()
    assert psrpc.unwrap(payload, ClaimResponse) == claim


def test_unknown_fields_from_go_are_tolerated() -> None:
    metadata = bytes.fromhex("3a06" "0a016b120176")  # field 7: map entry {"k": "v"}, which we do not model
    request = Request.decode(Request("R", "C", 1, 2).encode() + metadata)
    assert (request.request_id, request.client_id, request.expiry) == ("R", "C", 2)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05abc", psrpc.wrap(Response("R", "S", 1))])
def test_garbage_and_wrong_types_are_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedMessage):
        psrpc.unwrap(payload, Request)


def test_start_egress_request_round_trip_and_field_numbers() -> None:
    track = egress.TrackEgressRequest(room_name="r", track_id="TR_1", file=egress.DirectFileOutput(filepath="f"))
    start = StartEgressRequest("EG_1", "track", track, room_id="RM_1", room_name="r", estimated_cpu=0.5)
    data = start.encode()
    assert data.startswith(bytes.fromhex("0a04") + b"EG_1")  # 1: egress_id
    assert bytes([7 << 3 | 2]) + bytes([len(track.SerializeToString())]) + track.SerializeToString() in data
    assert bytes.fromhex("9201") + b"\x01r" in data  # 18: room_name
    assert bytes.fromhex("71") in data  # 14: estimated_cpu, double
    decoded = StartEgressRequest.decode(data)
    assert decoded.kind == "track" and decoded.track == track
    assert (decoded.egress_id, decoded.room_id, decoded.estimated_cpu) == ("EG_1", "RM_1", 0.5)


def test_other_egress_kinds_are_recognised_but_not_track() -> None:
    composite = egress.RoomCompositeEgressRequest(room_name="r")
    decoded = StartEgressRequest.decode(StartEgressRequest("EG_1", "room_composite", composite).encode())
    assert decoded.kind == "room_composite" and decoded.track is None
    assert StartEgressRequest.decode(b"").kind is None


def test_list_active_egress_response() -> None:
    data = psrpc.ListActiveEgressResponse(("EG_a", "EG_b")).encode()
    assert data == bytes.fromhex("0a04") + b"EG_a" + bytes.fromhex("0a04") + b"EG_b"
    assert psrpc.ListActiveEgressResponse.decode(data).egress_ids == ("EG_a", "EG_b")


# channel names (psrpc pkg/info/channels_test.go)


def test_channel_names() -> None:
    assert psrpc.response_channel("foo", "bar") == "foo|bar|RES"
    assert psrpc.claim_request_channel("foo", "bar") == "foo|bar|CLAIM"
    assert psrpc.request_channel("foo", "bar") == "foo|bar|REQ"
    assert psrpc.claim_response_channel("foo", "bar", "") == "foo|bar|RCLAIM"
    assert psrpc.request_channel("EgressInternal", "StartEgress", "") == "EgressInternal|StartEgress|REQ"
    assert psrpc.request_channel("EgressHandler", "StopEgress", "EG_x1") == "EgressHandler|StopEgress|EG_x1|REQ"
    assert psrpc.channel("foo", "bar", "a", "b", "c", "REQ") == "foo|bar|a|b|c|REQ"


def test_channel_parts_are_escaped() -> None:
    assert psrpc.channel("🚀_É", "🛰_bar", "软件", "END") == "U+0001f680_u+00c9|U+0001f6f0_bar|u+8f6fu+4ef6|END"
    assert psrpc.request_channel("S", "M", "my-cluster.1") == "S|M|myu+002dclusteru+002e1|REQ"


def test_ids_look_like_psrpc_ids() -> None:
    server_id = psrpc.new_id("SRV_")
    assert server_id.startswith("SRV_") and len(server_id) == 16 and server_id[4:].isalnum()


# server selection (psrpc selectServer) and our affinity


def claim(server: str, value: float) -> ClaimRequest:
    return ClaimRequest("R", server, value)


def test_livekit_server_start_egress_selection() -> None:
    selection = Selection(SelectionOpts(maximum_affinity=1, affinity_timeout=1, short_circuit_timeout=0.5))
    assert selection.offer(claim("a", 0.5)) is None
    assert selection.offer(claim("b", 0.75)) is None
    assert selection.best() == "b"
    assert selection.offer(claim("c", 1.0)) == "c"  # at maximum affinity: chosen at once


def test_zero_affinity_never_wins() -> None:
    selection = Selection(SelectionOpts())
    selection.offer(claim("a", 0.0))
    with pytest.raises(PsrpcError, match=r"no servers available \(received 1 responses\)") as error:
        selection.best()
    assert error.value.code == "unavailable"


def test_no_claims_is_no_response() -> None:
    with pytest.raises(PsrpcError, match="no response from servers"):
        Selection(SelectionOpts()).best()


def test_minimum_affinity_and_first_available() -> None:
    selection = Selection(SelectionOpts(minimum_affinity=0.5, accept_first_available=True))
    assert selection.offer(claim("a", 0.2)) is None
    assert selection.offer(claim("b", 0.6)) == "b"


def test_a_worker_that_can_take_the_egress_claims_with_the_affinity_livekit_picks_at_once() -> None:
    """livekit-server's StartEgress selection (max affinity 1) takes our claim without waiting; the busier worker
    claims later, by up to CLAIM_SPREAD, so the least busy of several is picked."""
    selection = Selection(SelectionOpts(maximum_affinity=1, affinity_timeout=1.0, short_circuit_timeout=0.5))
    assert selection.offer(claim("worker", CLAIM)) == "worker"
    def admission(budget: float) -> CpuAdmission:
        return CpuAdmission(budget, 0.5, 0.5, 0.5)

    assert claim_delay(admission(1.6), reserved=0.0, measured=0.01, cost=0.5, busy=0) == 0.0
    assert claim_delay(admission(1.6), reserved=0.8, measured=0.01, cost=0.5, busy=1) == pytest.approx(CLAIM_SPREAD / 2)
    assert claim_delay(admission(1.6), reserved=1.0, measured=0.01, cost=0.5, busy=3) == pytest.approx(
        CLAIM_SPREAD * 3 / 4)
    assert claim_delay(admission(1.6), reserved=1.5, measured=0.01, cost=0.5, busy=3) is None  # exceeds the budget
    assert claim_delay(admission(1.0), reserved=1.0, measured=0.0, cost=1.0, busy=1) is None
    assert claim_delay(admission(0.0), reserved=0.0, measured=0.0, cost=0.5, busy=0) is None
    # a process that really uses its budget claims nothing, whatever its egresses were reserved at
    assert claim_delay(admission(1.6), reserved=0.1, measured=1.2, cost=0.5, busy=1) is None
    # the least busy claims first, however small each egress's price
    tiny = CpuAdmission(0.8, 0.003, 0.005, 0.01)
    assert claim_delay(tiny, 0.0, 0.0, 0.003, busy=0) < claim_delay(tiny, 0.003, 0.0, 0.003, busy=1)  # type: ignore[operator]


def test_a_refusal_claim_loses_to_any_worker_that_can_run_the_request() -> None:
    """A StartEgress shape we cannot run is claimed at REFUSAL: an upstream worker's 0.5 (idle) or 1 (busy) wins."""
    idle = Selection(SelectionOpts(maximum_affinity=1, affinity_timeout=1.0, short_circuit_timeout=0.5))
    assert idle.offer(claim("ours", REFUSAL)) is None
    assert idle.offer(claim("upstream", 0.5)) is None
    assert idle.best() == "upstream"
    busy = Selection(SelectionOpts(maximum_affinity=1, affinity_timeout=1.0, short_circuit_timeout=0.5))
    assert busy.offer(claim("ours", REFUSAL)) is None
    assert busy.offer(claim("upstream", 1.0)) == "upstream"
    alone = Selection(SelectionOpts(maximum_affinity=1, affinity_timeout=1.0, short_circuit_timeout=0.5))
    alone.offer(claim("ours", REFUSAL))
    assert alone.best() == "ours"  # and answers with the reason: no timeout


# the server's claim protocol over an in-memory bus


def echo_method(value: float, calls: list[str]) -> Method[bytes]:
    async def handle(request: Request, body: bytes) -> bytes:
        calls.append(request.request_id)
        return body.upper()

    async def score(request: Request, body: bytes) -> float:
        return value

    def decode(data: bytes) -> bytes:
        if data.startswith(b"!"):
            raise MalformedMessage("bad request")
        return data

    return Method("Echo", decode, handle, score)


async def make_servers(bus: FakeBus, *affinities: float) -> list[list[str]]:
    calls: list[list[str]] = []
    for index, value in enumerate(affinities):
        calls.append([])
        server = RPCServer(bus, "Svc", f"SRV_{index}")  # type: ignore[arg-type]
        await server.register(echo_method(value, calls[-1]), "topic")
    return calls


async def test_highest_claim_handles_and_others_stay_silent() -> None:
    bus = FakeBus()
    calls = await make_servers(bus, 0.3, 0.9, -1.0)
    client = RPCClient(bus, "Svc", "CLI_test")  # type: ignore[arg-type]
    await client.start()
    opts = SelectionOpts(affinity_timeout=0.5, short_circuit_timeout=0.1)
    assert await client.call("Echo", b"hi", topic="topic", selection=opts) == b"HI"
    assert [len(c) for c in calls] == [0, 1, 0]
    claims = [psrpc.unwrap(p, ClaimRequest) for ch, p in bus.published if ch == "Svc|CLI_test|CLAIM"]
    assert sorted(c.server_id for c in claims) == ["SRV_0", "SRV_1"]  # affinity -1: no claim at all
    chosen = [psrpc.unwrap(p, ClaimResponse) for ch, p in bus.published if ch == "Svc|Echo|topic|RCLAIM"]
    assert [c.server_id for c in chosen] == ["SRV_1"]


async def test_no_claim_means_unavailable() -> None:
    bus = FakeBus()
    await make_servers(bus, -1.0)
    client = RPCClient(bus, "Svc")  # type: ignore[arg-type]
    await client.start()
    with pytest.raises(PsrpcError) as error:
        await client.call("Echo", b"x", topic="topic", selection=SelectionOpts(affinity_timeout=0.2))
    assert (error.value.code, error.value.message) == ("unavailable", "no response from servers")


async def test_malformed_request_body_is_answered_malformed_request() -> None:
    bus = FakeBus()
    calls = await make_servers(bus, 1.0)
    client = RPCClient(bus, "Svc")  # type: ignore[arg-type]
    await client.start()
    with pytest.raises(PsrpcError) as error:
        await client.call("Echo", b"!oops", topic="topic", selection=SelectionOpts(affinity_timeout=0.2))
    assert error.value.code == "malformed_request" and calls == [[]]


async def test_expired_requests_and_garbage_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    bus = FakeBus()
    calls = await make_servers(bus, 1.0)
    expired = Request("REQ_old", "CLI_x", time.time_ns() - 2_000_000_000, time.time_ns() - 1, raw_request=b"x")
    with caplog.at_level(logging.WARNING):
        await bus.publish("Svc|Echo|topic|REQ", psrpc.wrap(expired))
        await bus.publish("Svc|Echo|topic|REQ", b"\x00garbage")
        await bus.publish("Svc|Echo|topic|RCLAIM", b"\xff")
        await asyncio.sleep(0.05)
    assert calls == [[]]
    assert [ch for ch, _ in bus.published if ch.endswith("CLAIM") and not ch.endswith("RCLAIM")] == []
    assert caplog.text.count("ignored a malformed message") == 2


async def test_queue_methods_reach_one_server() -> None:
    bus = FakeBus()
    calls: list[str] = []
    for index in range(2):
        server = RPCServer(bus, "Svc", f"SRV_{index}")  # type: ignore[arg-type]
        await server.register(Method("Echo", bytes, echo_method(1.0, calls).handle, queue=True), "t")
    client = RPCClient(bus, "Svc")  # type: ignore[arg-type]
    await client.start()
    assert await client.call("Echo", b"q", topic="t") == b"Q"
    assert len(calls) == 1
