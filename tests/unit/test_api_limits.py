"""Hostile and unlucky requests to the Twirp API: each gets a Twirp error and changes nothing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from livekit import api
from livekit.protocol import egress
from support.server import free_port

from trackegress.api.auth import Authenticator
from trackegress.api.twirp import PAGE_SIZE, TwirpRunner, TwirpServer
from trackegress.avegress import AvEgress
from trackegress.config import load_service_config
from trackegress.cpuload import CpuAdmission
from trackegress.egress import Egress
from trackegress.manager import EgressManager
from trackegress.ops.ports import listen
from trackegress.reporting.store import Store

KEY, SECRET = "APIkey", "a-secret-that-is-long-enough-for-hs256!"
Status = egress.EgressStatus


@dataclass
class Api:
    url: str
    port: int
    manager: EgressManager
    store: Store
    local_dir: Path

    def token(self) -> str:
        return api.AccessToken(KEY, SECRET).with_grants(api.VideoGrants(room_record=True)).to_jwt()

    async def post(self, method: str, body: bytes, headers: dict[str, str] | None = None,
                   auth: bool = True) -> tuple[int, dict[str, str], dict[str, str]]:
        sent = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {self.token()}"} if auth else {})
        async with aiohttp.ClientSession() as session, session.post(
            f"{self.url}/twirp/livekit.Egress/{method}", data=body, headers=sent | (headers or {})
        ) as response:
            return response.status, dict(response.headers), await response.json(content_type=None)


async def present(room: str, track: str) -> None:
    """Every room and track exists (no LiveKit server: the egresses themselves fail to join)."""


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Api]:
    body = f"api_key: {KEY}\napi_secret: {SECRET}\nws_url: ws://127.0.0.1:1\nlocal_dir: {tmp_path / 'rec'}\n"
    config = load_service_config(env={"EGRESS_CONFIG_BODY": body + "track_wait_timeout: 1s\n"})
    store = await Store.open(tmp_path / "egress.db")
    manager = EgressManager(config, store, present, admission=CpuAdmission(1.6, 0.5, 0.5, 0.5))  # 3 fit
    port = free_port()
    runner = await listen(TwirpServer(manager, Authenticator(KEY, SECRET)).app(), "127.0.0.1", port,
                          runner_class=TwirpRunner, idle_timeout=1.0)
    yield Api(f"http://127.0.0.1:{port}", port, manager, store, tmp_path / "rec")
    await manager.close()
    await runner.cleanup()
    await store.close()


def track_request(filepath: str) -> bytes:
    return json.dumps({"room_name": "r", "track_id": "TR_x", "file": {"filepath": filepath}}).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"room_name": "r", "track_id": "TR_x", "file": "abc"}', "file must be a JSON object"),
        (b"[]", "the request body must be a JSON object"),
        (b'{"room_name": "r", "track_id": "TR_x", "file": {"s3": []}}', "file.s3 must be a JSON object"),
        (b'{"room_name": "r", "track_id": "TR_x", "webhooks": {}}', "webhooks must be a JSON array"),
    ],
)
async def test_json_of_the_wrong_shape_is_refused(served: Api, body: bytes, message: str) -> None:
    status, _, answer = await served.post("StartTrackEgress", body)
    assert (status, answer) == (400, {"code": "invalid_argument", "msg": message})
    assert served.manager.active_count == 0


@pytest.mark.parametrize(
    ("filepath", "fragment"),
    [
        ("a" * 300 + "/x", "a path component is 300 bytes long (at most 255)"),
        ("{room_name}/" + "é" * 128, "a path component is 256 bytes long (at most 255)"),
        ("/".join(["d" * 200] * 21), "the path is 4220 bytes long (at most 4095)"),
    ],
)
async def test_paths_the_filesystem_cannot_take_are_refused(served: Api, filepath: str, fragment: str) -> None:
    status, _, answer = await served.post("StartTrackEgress", track_request(filepath))
    assert (status, answer["code"]) == (400, "invalid_argument") and fragment in answer["msg"]
    assert str(served.local_dir.parent) not in answer["msg"]
    assert served.manager.active_count == 0 and not served.local_dir.exists()


async def test_object_keys_over_1024_bytes_are_refused(served: Api) -> None:
    body = {"room_name": "r", "track_id": "TR_x", "file": {"filepath": "/".join(["k" * 100] * 11),
                                                           "s3": {"bucket": "b", "region": "us-east-1"}}}
    status, _, answer = await served.post("StartTrackEgress", json.dumps(body).encode())
    assert (status, answer["code"]) == (400, "invalid_argument") and "(at most 1024)" in answer["msg"]


async def test_errors_do_not_show_the_servers_paths(served: Api) -> None:
    status, _, answer = await served.post("StartTrackEgress", track_request("/"))
    assert status == 400 and str(served.local_dir) not in answer["msg"] and "/tmp" not in answer["msg"]


async def test_oversized_headers_get_a_twirp_error(served: Api) -> None:
    status, headers, answer = await served.post("ListEgress", b"{}", headers={"X-Big": "x" * 9000})
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert answer == {"code": "malformed", "msg": "request headers too large"}


async def test_a_connection_that_sends_nothing_is_closed(served: Api) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"POST /twirp/livekit.Egress/ListEgress HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    t0 = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    assert time.monotonic() - t0 < 3
    writer.close()


async def test_failed_authentications_are_throttled_per_address(served: Api) -> None:
    answers = [await served.post("ListEgress", b"{}", headers={"Authorization": "Bearer bad"}) for _ in range(12)]
    assert [a[2]["code"] for a in answers[:10]] == ["unauthenticated"] * 10
    status, headers, answer = answers[10]
    assert (status, answer["code"]) == (429, "resource_exhausted") and int(headers["Retry-After"]) >= 1
    assert "too many failed authentications" in answer["msg"]
    status, _, _ = await served.post("ListEgress", b"{}")  # even a good token waits out the penalty
    assert status == 429
    await asyncio.sleep(1.1)
    assert (await served.post("ListEgress", b"{}"))[0] == 200


async def test_list_egress_is_paged(served: Api) -> None:
    for n in range(PAGE_SIZE + 5):
        await served.store.put(egress.EgressInfo(egress_id=f"EG_{n:04d}", room_name="r", started_at=n,
                                                 status=Status.EGRESS_COMPLETE))
    status, _, first = await served.post("ListEgress", b"{}")
    assert status == 200 and len(first["items"]) == PAGE_SIZE
    token = first["next_page_token"]["token"]
    _, _, second = await served.post("ListEgress", json.dumps({"page_token": {"token": token}}).encode())
    assert [i["egress_id"] for i in second["items"]] == [f"EG_{n:04d}" for n in range(PAGE_SIZE, PAGE_SIZE + 5)]
    assert "next_page_token" not in second
    status, _, bad = await served.post("ListEgress", b'{"page_token": {"token": "@@"}}')
    assert (status, bad["code"]) == (400, "invalid_argument")


async def test_serve_admits_egresses_by_cpu_cost(served: Api) -> None:
    gate = asyncio.Event()

    async def blocked_run(self: Egress) -> egress.EgressInfo:
        await gate.wait()
        return self.info

    monkey = pytest.MonkeyPatch()
    monkey.setattr(Egress, "run", blocked_run)
    try:
        codes = [(await served.post("StartTrackEgress", track_request(f"f{n}")))[2].get("code") for n in range(4)]
    finally:
        gate.set()
        monkey.undo()
    assert codes == [None, None, None, "resource_exhausted"]


async def test_an_av_egress_is_admitted_at_the_price_of_both_its_tracks(served: Api) -> None:
    """An A/V egress (``StartEgress`` PASSTHROUGH naming a video and an audio track) reserves a video and an audio
    egress's price: 1.0 of the 1.6 budget here, so a second does not fit where a single track still does."""
    gate = asyncio.Event()

    async def blocked_run(self: Egress | AvEgress) -> egress.EgressInfo:
        await gate.wait()
        return self.info

    def av(n: int) -> bytes:
        media = {"video_track_id": f"TR_v{n}", "audio": {"routes": [{"track_id": f"TR_a{n}"}]}}
        return json.dumps({"room_name": "r", "preset": "PASSTHROUGH", "media": media,
                           "outputs": [{"file": {"filepath": f"av{n}"}}]}).encode()

    monkey = pytest.MonkeyPatch()
    monkey.setattr(Egress, "run", blocked_run)
    monkey.setattr(AvEgress, "run", blocked_run)
    try:
        first, second = [(await served.post("StartEgress", av(n)))[2] for n in range(2)]
        single = (await served.post("StartTrackEgress", track_request("f")))[2]
    finally:
        gate.set()
        monkey.undo()
    assert first.get("code") is None and first["egress_id"].startswith("EG_"), first
    assert second["code"] == "resource_exhausted" and "a video_file + audio_file egress costs 1" in second["msg"]
    assert single.get("code") is None, single


async def test_a_failing_store_is_retried_until_the_status_is_saved(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "egress.db")
    info = egress.EgressInfo(egress_id="EG_x", room_name="r", status=Status.EGRESS_ACTIVE, started_at=1)
    await store.put(info)
    locker = sqlite3.connect(tmp_path / "egress.db", timeout=0)
    locker.execute("BEGIN EXCLUSIVE")  # every write fails ("database is locked") until released
    info.status = Status.EGRESS_COMPLETE
    store.save(info)
    await asyncio.sleep(0.5)
    assert store.unsaved == 1
    listed = await store.query(active=True)  # reads show the newest status meanwhile, not the stale ACTIVE
    assert listed == [] and (await store.get("EG_x")).status == Status.EGRESS_COMPLETE  # type: ignore[union-attr]
    locker.rollback()
    locker.close()
    assert await store.flush(10)
    await store.close()
    reopened = await Store.open(tmp_path / "egress.db")
    assert (await reopened.get("EG_x")).status == Status.EGRESS_COMPLETE  # type: ignore[union-attr]
    await reopened.close()


async def test_an_update_callback_that_raises_cannot_leave_an_egress_unended(served: Api) -> None:
    """As with a 300-byte file name: reading the partial file raised inside the status callback."""

    async def run(self: Egress) -> egress.EgressInfo:
        self._set_status(Status.EGRESS_ACTIVE)
        self._set_status(Status.EGRESS_COMPLETE, ended=True)
        return self.info

    def unreadable(self: Egress) -> egress.FileInfo:
        raise OSError(36, "File name too long")

    monkey = pytest.MonkeyPatch()
    monkey.setattr(Egress, "run", run)
    monkey.setattr(Egress, "partial_file", property(unreadable))
    try:
        status, _, started = await served.post("StartTrackEgress", track_request("x"))
        assert status == 200
        async with asyncio.timeout(10):
            while served.manager.active_count:
                await asyncio.sleep(0.05)
        assert await served.store.flush(5)
    finally:
        monkey.undo()
    info = await served.store.get(started["egress_id"])
    assert info is not None and info.status == Status.EGRESS_COMPLETE
