"""``trackegress serve`` with the DEFAULT admission takes what a LiveKit deployment sends: bursts of egresses of one
room admitted by what they cost here, recorded in full, refused (never FAILED) past the process's capacity."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import pytest
from livekit import api
from livekit.protocol import egress
from support.egress_helpers import file_request, until
from support.egress_service import EgressService
from support.publisher import Publisher
from support.server import LiveKitServer, RoomFactory

Status = egress.EgressStatus
UNFINISHED = (Status.EGRESS_STARTING, Status.EGRESS_ACTIVE, Status.EGRESS_ENDING)
RECORD_SECONDS = 5.0


@pytest.fixture
def service(livekit_server: LiveKitServer, tmp_path: Path) -> Iterator[EgressService]:
    svc = EgressService(livekit_server, tmp_path, logging={"level": "info"}, processes=None)  # the defaults
    yield svc
    svc.stop()


@pytest.fixture
async def track(livekit_server: LiveKitServer, make_room: RoomFactory,
                sample_media: dict[str, Path]) -> AsyncIterator[tuple[str, str]]:
    """(room, track SID) of a looping Opus publisher."""
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, "alice", sample_media["opus"], loop=True) as pub:
        await until(lambda: pub.sent, timeout=10)  # sending already: an egress is ACTIVE on its first frame
        yield room, pub.track_sid


async def start_together(client: api.LiveKitAPI, room: str, track: str, count: int) -> list[object]:
    """``count`` StartTrackEgress calls sent at once: an EgressInfo or the TwirpError each."""
    calls = (client.egress.start_track_egress(file_request(room, track, f"n{n}.ogg")) for n in range(count))
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def listed(client: api.LiveKitAPI, room: str) -> dict[str, egress.EgressInfo]:
    """Every egress of ``room``, page after page."""
    infos: dict[str, egress.EgressInfo] = {}
    request = egress.ListEgressRequest(room_name=room)
    while True:
        page = await client.egress.list_egress(request)
        infos.update((i.egress_id, i) for i in page.items)
        if not page.next_page_token.token:
            return infos
        request.page_token.token = page.next_page_token.token


async def until_all(client: api.LiveKitAPI, room: str, ids: set[str], done: tuple[int, ...],
                    timeout: float) -> dict[str, egress.EgressInfo]:
    """Poll ListEgress until every egress of ``ids`` has left the statuses not in ``done``."""
    async with asyncio.timeout(timeout):
        while True:
            infos = {k: v for k, v in (await listed(client, room)).items() if k in ids}
            if len(infos) == len(ids) and all(i.status not in done for i in infos.values()):
                return infos
            await asyncio.sleep(0.05)


def opus_packets(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for p in container.demux() if p.size)


async def record_all(client: api.LiveKitAPI, room: str, ids: set[str]) -> dict[str, egress.EgressInfo]:
    """Wait until all are ACTIVE, record ``RECORD_SECONDS``, stop them all; their final infos."""
    active = await until_all(client, room, ids, (Status.EGRESS_STARTING,), 60)
    assert {Status.Name(i.status) for i in active.values()} == {"EGRESS_ACTIVE"}
    await asyncio.sleep(RECORD_SECONDS)
    await asyncio.gather(*(client.egress.stop_egress(egress.StopEgressRequest(egress_id=e)) for e in ids))
    return await until_all(client, room, ids, UNFINISHED, 60)


def assert_complete_and_full(infos: dict[str, egress.EgressInfo]) -> None:
    """Every egress COMPLETE, its file holding (nearly) every 20 ms frame of the time it recorded."""
    failed = {e: (Status.Name(i.status), i.error) for e, i in infos.items() if i.status != Status.EGRESS_COMPLETE}
    assert failed == {}
    short = []
    for info in infos.values():
        result = info.file_results[0]
        expected = result.duration / 1e9 * 50
        if opus_packets(Path(result.location)) < 0.95 * expected or result.duration < RECORD_SECONDS * 1e9:
            short.append((info.egress_id, opus_packets(Path(result.location)), expected))
    assert short == []


@pytest.mark.timing  # every core busy: alone, after the parallel run, so it starves no other test
@pytest.mark.xdist_group("cpu")
@pytest.mark.saturates_cpus
async def test_150_concurrent_opus_egresses_are_admitted_and_recorded_in_full_by_default(
    service: EgressService, client: api.LiveKitAPI, track: tuple[str, str],
) -> None:
    room, track_sid = track
    answers = await start_together(client, room, track_sid, 150)
    errors = [str(a) for a in answers if not isinstance(a, egress.EgressInfo)]
    assert errors == []
    ids = {a.egress_id for a in answers if isinstance(a, egress.EgressInfo)}
    health = service.health()
    assert health["active_egresses"] == 150 and health["available"]["audio_file"] > 0
    assert_complete_and_full(await record_all(client, room, ids))


@pytest.mark.timing  # every core busy: alone, after the parallel run, so it starves no other test
@pytest.mark.xdist_group("cpu")
@pytest.mark.saturates_cpus
async def test_250_at_once_are_admitted_or_refused_never_failed(
    service: EgressService, client: api.LiveKitAPI, track: tuple[str, str],
) -> None:
    room, track_sid = track
    answers = await start_together(client, room, track_sid, 250)
    refused = [a for a in answers if isinstance(a, api.TwirpError)]
    assert {(a.code, a.status) for a in refused} <= {("resource_exhausted", 429)}, refused[:3]
    assert all(a.message.startswith("at capacity:") for a in refused)
    ids = {a.egress_id for a in answers if isinstance(a, egress.EgressInfo)}
    assert len(ids) + len(refused) == 250 and len(ids) >= 150
    assert_complete_and_full(await record_all(client, room, ids))
    print(f"250 at once: {len(ids)} admitted, {len(refused)} refused")


@pytest.mark.timing
@pytest.mark.xdist_group("cpu")
async def test_ten_egresses_started_together_are_active_about_as_fast_as_one(
    service: EgressService, client: api.LiveKitAPI, track: tuple[str, str],
) -> None:
    """Issue 22's target is 0.5 s (bench/serve_capacity.py measures it, and N = 100); asserted at 1 s here for a
    shared machine (0.39-0.48 s measured)."""
    room, track_sid = track
    began = time.monotonic()
    answers = await start_together(client, room, track_sid, 10)
    ids = {a.egress_id for a in answers if isinstance(a, egress.EgressInfo)}
    assert len(ids) == 10
    await until_all(client, room, ids, (Status.EGRESS_STARTING,), 10)
    took = time.monotonic() - began
    print(f"10 egresses started together: all ACTIVE after {took:.2f} s")
    assert took < 1.0
    await asyncio.gather(*(client.egress.stop_egress(egress.StopEgressRequest(egress_id=e)) for e in ids))
    await until_all(client, room, ids, UNFINISHED, 30)


def child_pids(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


async def test_serve_on_two_processes_spreads_egresses_and_a_crashed_process_ends_only_its_own(
    livekit_server: LiveKitServer, track: tuple[str, str], tmp_path: Path,
) -> None:
    """``processes: 2``: one API, two egress processes; kill -9 of one: its egresses (only) are FAILED "Process
    killed" once it is started again, the other's record on and complete."""
    room, track_sid = track
    svc = EgressService(livekit_server, tmp_path / "node", processes=2, logging={"level": "info"})
    client = api.LiveKitAPI(svc.url, livekit_server.api_key, livekit_server.api_secret)
    try:
        await until_ready(svc)
        ids = {a.egress_id for a in await start_together(client, room, track_sid, 4)
               if isinstance(a, egress.EgressInfo)}
        assert len(ids) == 4
        await until_all(client, room, ids, (Status.EGRESS_STARTING,), 20)
        health = svc.health()
        assert [p["active_egresses"] for p in health["processes"]] == [2, 2], "spread over the processes"
        assert health["available"]["audio_file"] > 400
        assert 'trackegress_egress_active{process="1"} 2.0' in svc.metrics()
        victim = child_pids(svc.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        async with asyncio.timeout(30):  # its egresses are reported once it is started again
            while True:
                infos = await listed(client, room)
                if sum(i.status == Status.EGRESS_FAILED for i in infos.values()) >= 2:
                    break
                await asyncio.sleep(0.1)
        killed = {e for e, i in infos.items() if i.status == Status.EGRESS_FAILED}
        assert len(killed) == 2 and {infos[e].error for e in killed} == {"Process killed"}
        survivors = ids - killed
        assert {Status.Name(infos[e].status) for e in survivors} == {"EGRESS_ACTIVE"}
        await asyncio.sleep(1)
        for egress_id in survivors:
            await client.egress.stop_egress(egress.StopEgressRequest(egress_id=egress_id))
        done = await until_all(client, room, survivors, UNFINISHED, 30)
        assert {Status.Name(i.status) for i in done.values()} == {"EGRESS_COMPLETE"}
        assert all(i.file_results[0].duration > 2e9 for i in done.values())  # recorded on through the crash
        with pytest.raises(api.TwirpError) as missing:
            await client.egress.stop_egress(egress.StopEgressRequest(egress_id="EG_nonexistent0"))
        assert missing.value.code == "not_found"
        assert "exited with -9; starting it again" in svc.log_text()
    finally:
        await client.aclose()
        svc.stop()


async def until_ready(svc: EgressService) -> None:
    """Until every egress process answers the node's health."""
    def ready() -> bool:
        try:
            return all(p.get("status") == "ok" for p in svc.health().get("processes", [{}]))
        except OSError:  # 503 while none answers
            return False

    async with asyncio.timeout(20):
        while not ready():
            await asyncio.sleep(0.1)
