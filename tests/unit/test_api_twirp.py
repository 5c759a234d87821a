"""The Twirp layer and EgressManager without a LiveKit server: LiveKit's Python client and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from livekit import api
from livekit.protocol import egress, models

from trackegress.api.auth import Authenticator
from trackegress.api.twirp import TwirpServer
from trackegress.config import load_service_config
from trackegress.errors import RequestError
from trackegress.manager import EgressManager
from trackegress.reporting.store import Store

KEY, SECRET = "APIkey", "a-secret-that-is-long-enough-for-hs256!"
Status = egress.EgressStatus


@dataclass
class Setup:
    url: str
    manager: EgressManager
    store: Store
    local_dir: Path
    updates: list[egress.EgressInfo]


async def no_such_room(room: str, track: str) -> None:
    if room != "present":
        raise RequestError("not_found", "requested room does not exist")


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    body = f"api_key: {KEY}\napi_secret: {SECRET}\nws_url: ws://127.0.0.1:1\nlocal_dir: {tmp_path / 'rec'}\n"
    config = load_service_config(env={"EGRESS_CONFIG_BODY": body + "track_wait_timeout: 1s\n"})
    store = await Store.open(tmp_path / "egress.db")
    manager = EgressManager(config, store, no_such_room)
    updates: list[egress.EgressInfo] = []
    manager.add_listener(updates.append)
    server = TestServer(TwirpServer(manager, Authenticator(KEY, SECRET)).app(), host="127.0.0.1")
    await server.start_server()
    yield Setup(str(server.make_url("")).rstrip("/"), manager, store, tmp_path / "rec", updates)
    await manager.close()
    await server.close()
    await store.close()


@pytest.fixture
async def client(setup: Setup) -> AsyncIterator[api.LiveKitAPI]:
    lk = api.LiveKitAPI(url=setup.url, api_key=KEY, api_secret=SECRET, failover=False)
    yield lk
    await lk.aclose()


def stored(egress_id: str, room: str, status: int) -> egress.EgressInfo:
    return egress.EgressInfo(egress_id=egress_id, room_name=room, status=status, started_at=1,  # type: ignore[arg-type]
                             track=egress.TrackEgressRequest(room_name=room, track_id="TR_x"))


async def test_list_filters_and_json_codec(setup: Setup, client: api.LiveKitAPI) -> None:
    for item in (stored("EG_a", "r1", Status.EGRESS_COMPLETE), stored("EG_b", "r1", Status.EGRESS_ACTIVE),
                 stored("EG_c", "r2", Status.EGRESS_FAILED)):
        await setup.store.put(item)
    listed = await client.egress.list_egress(egress.ListEgressRequest(room_name="r1"))
    assert [i.egress_id for i in listed.items] == ["EG_a", "EG_b"]
    active = await client.egress.list_egress(egress.ListEgressRequest(active=True))
    assert [i.egress_id for i in active.items] == ["EG_b"]
    one = await client.egress.list_egress(egress.ListEgressRequest(egress_id="EG_c"))
    assert [(i.egress_id, i.status) for i in one.items] == [("EG_c", Status.EGRESS_FAILED)]

    token = api.AccessToken(KEY, SECRET).with_grants(api.VideoGrants(room_record=True)).to_jwt()
    async with aiohttp.ClientSession() as session, session.post(
        f"{setup.url}/twirp/livekit.Egress/ListEgress", data=json.dumps({"roomName": "r2"}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"},
    ) as response:
        assert (response.status, response.content_type) == (200, "application/json")
        answer = await response.json()
    assert answer["items"][0]["egress_id"] == "EG_c" and answer["items"][0]["status"] == "EGRESS_FAILED"


async def test_stop_and_update_stream_errors(setup: Setup, client: api.LiveKitAPI) -> None:
    await setup.store.put(stored("EG_done", "r", Status.EGRESS_COMPLETE))
    cases = [
        (client.egress.stop_egress(egress.StopEgressRequest(egress_id="EG_done")),
         ("failed_precondition", 412, "egress with status EGRESS_COMPLETE cannot be stopped")),
        (client.egress.stop_egress(egress.StopEgressRequest(egress_id="EG_none")),
         ("not_found", 404, "egress does not exist")),
        (client.egress.update_stream(egress.UpdateStreamRequest(egress_id="EG_done", add_output_urls=["rtmp://x"])),
         ("invalid_argument", 400, "UpdateStream called on non-streaming egress")),
        (client.egress.start_web_egress(egress.WebEgressRequest(url="https://x")),
         ("unimplemented", 501, "StartWebEgress is not supported: trackegress runs StartTrackEgress and StartEgress "
                                 "with preset PASSTHROUGH")),
        (client.egress.start_track_egress(egress.TrackEgressRequest(room_name="gone", track_id="TR_x",
                                                                    file=egress.DirectFileOutput())),
         ("not_found", 404, "requested room does not exist")),
    ]
    for call, expected in cases:
        with pytest.raises(api.TwirpError) as error:
            await call
        assert (error.value.code, error.value.status, error.value.message) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ("unauthenticated", 401, "missing Bearer token in the Authorization header")),
        ("Basic abc", ("unauthenticated", 401, "missing Bearer token in the Authorization header")),
        ("Bearer not.a.jwt", ("unauthenticated", 401, "invalid token: Invalid header padding")),
        ("wrong-secret", ("unauthenticated", 401, "invalid token: Signature verification failed")),
        ("wrong-key", ("unauthenticated", 401, "invalid token: Invalid issuer")),
        ("expired", ("unauthenticated", 401, "invalid token: Signature has expired")),
        ("no-record", ("permission_denied", 403, "permissions denied: the token lacks video.roomRecord")),
    ],
)
async def test_auth(setup: Setup, header: str | None, expected: tuple[str, int, str]) -> None:
    tokens = {
        "wrong-secret": api.AccessToken(KEY, "x" * 40), "wrong-key": api.AccessToken("other", SECRET),
        "expired": api.AccessToken(KEY, SECRET).with_ttl(datetime.timedelta(minutes=-5)),
        "no-record": api.AccessToken(KEY, SECRET).with_grants(api.VideoGrants(room_admin=True, room="r")),
    }
    if header in tokens:
        grants = api.VideoGrants(room_record=True)
        token = tokens[header]
        header = "Bearer " + (token.to_jwt() if token.claims.video else token.with_grants(grants).to_jwt())
    headers = {"Content-Type": "application/protobuf"} | ({"Authorization": header} if header else {})
    async with aiohttp.ClientSession() as session, session.post(
        f"{setup.url}/twirp/livekit.Egress/ListEgress", data=b"", headers=headers
    ) as response:
        answer = await response.json()
    assert (answer["code"], response.status, answer["msg"]) == expected


async def test_a_started_egress_is_stored_announced_and_ends_failed(
    setup: Setup, client: api.LiveKitAPI
) -> None:
    """Nothing listens on ws://127.0.0.1:1: the egress starts, then fails to join, and says so everywhere."""
    request = egress.TrackEgressRequest(room_name="present", track_id="TR_x", file=egress.DirectFileOutput())
    started = await client.egress.start_track_egress(request)
    assert started.status == Status.EGRESS_STARTING and started.egress_id.startswith("EG_")
    for _ in range(100):
        if setup.manager.active_count == 0:
            break
        await asyncio.sleep(0.05)
    final = (await client.egress.list_egress(egress.ListEgressRequest(egress_id=started.egress_id))).items[0]
    assert final.status == Status.EGRESS_FAILED and final.error_code == 503
    assert [u.status for u in setup.updates] == [Status.EGRESS_STARTING, Status.EGRESS_FAILED]
    assert not setup.local_dir.exists() or list(setup.local_dir.iterdir()) == []


async def test_recover_marks_unfinished_egresses_process_killed(setup: Setup, tmp_path: Path) -> None:
    partial = tmp_path / "partial.ogg"
    partial.write_bytes(b"x" * 1234)
    running = stored("EG_run", "r", Status.EGRESS_ACTIVE)
    running.file_results.add(filename="partial.ogg", location=str(partial), started_at=1_000)
    running.file_results.add(filename="gone.ogg", location=str(tmp_path / "gone.ogg"))
    await setup.store.put(running)
    await setup.store.put(stored("EG_old", "r", Status.EGRESS_COMPLETE))

    recovered = await setup.manager.recover()
    assert [i.egress_id for i in recovered] == ["EG_run"]
    info = await setup.store.get("EG_run")
    assert info is not None
    assert (info.status, info.error, info.details) == (Status.EGRESS_FAILED, "Process killed",
                                                       "End reason: Process killed")
    assert [(f.filename, f.size) for f in info.file_results] == [("partial.ogg", 1234)]
    assert info.file.filename == "partial.ogg" and info.file_results[0].ended_at > 1_000
    assert setup.updates == [info]


@pytest.mark.parametrize("cursor", ["99999999999999999999/x", "-9223372036854775809/x", "9223372036854775808/x",
                                    "-1/x", " 1/x", "1_0/x", "\u0661/x", "/x"])
async def test_page_tokens_out_of_range_are_invalid_argument(
    setup: Setup, client: api.LiveKitAPI, caplog: pytest.LogCaptureFixture, cursor: str
) -> None:
    token = base64.urlsafe_b64encode(cursor.encode()).decode()
    with pytest.raises(api.TwirpError) as error:
        await client.egress.list_egress(egress.ListEgressRequest(page_token=models.TokenPagination(token=token)))
    assert (error.value.code, error.value.status, error.value.message) == ("invalid_argument", 400,
                                                                           "invalid page_token")
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("url", ["http://u:pw@127.0.0.1:9/hook", "https://user@example.com/x", "http://:pw@h/x"])
async def test_webhook_urls_with_user_info_are_refused(
    setup: Setup, client: api.LiveKitAPI, caplog: pytest.LogCaptureFixture, url: str
) -> None:
    request = egress.TrackEgressRequest(room_name="present", track_id="TR_x", file=egress.DirectFileOutput(),
                                        webhooks=[models.WebhookConfig(url=url)])
    with pytest.raises(api.TwirpError) as error:
        await client.egress.start_track_egress(request)
    assert (error.value.code, error.value.status) == ("invalid_argument", 400)
    assert "has user info: the Authorization header carries the webhook signature" in error.value.message
    assert "pw" not in error.value.message and "pw" not in caplog.text
    assert await setup.store.query() == [] and setup.updates == []
