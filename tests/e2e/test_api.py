"""``trackegress serve`` driven by LiveKit's own clients, against the real livekit-server."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit import api
from livekit.protocol import egress, models
from support.egress_helpers import file_request, until, wait_status
from support.egress_service import EgressService, WebhookSink
from support.process import stop_process
from support.publisher import Publisher
from support.server import LiveKitServer, RoomFactory

from trackegress.errors import HTTP_STATUS

Status = egress.EgressStatus
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def service(livekit_server: LiveKitServer, hooks: WebhookSink, tmp_path: Path) -> Iterator[EgressService]:
    svc = EgressService(livekit_server, tmp_path, webhook={"urls": [hooks.url]})
    yield svc
    svc.stop()


async def test_python_client_start_list_stop_with_webhooks(
    service: EgressService, client: api.LiveKitAPI, hooks: WebhookSink, livekit_server: LiveKitServer,
    make_room: RoomFactory, sample_media: dict[str, Path],
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, "alice", sample_media["opus"], loop=True) as pub:
        started = await client.egress.start_track_egress(file_request(room, pub.track_sid, "{room_name}/alice"))
        assert started.egress_id.startswith("EG_") and len(started.egress_id) == 15
        assert (started.status, started.room_name, started.track.track_id) == (Status.EGRESS_STARTING, room,
                                                                               pub.track_sid)
        assert started.source_type == egress.EgressSourceType.EGRESS_SOURCE_TYPE_SDK
        active = await wait_status(client, started.egress_id, Status.EGRESS_ACTIVE, interval=0.1)
        assert active.room_id.startswith("RM_") and active.updated_at > started.updated_at
        assert active.file_results[0].filename == f"{room}/alice.ogg"
        health = service.health()
        assert (health["status"], health["active_egresses"], health["accepting"]) == ("ok", 1, True)
        room_left = health["available"]  # default admission: one process's share of a core, priced per kind
        assert 100 < room_left["audio_file"] < 300 and room_left["websocket"] < room_left["video_file"] > 50
        assert f'trackegress_egress_available{{kind="audio_file"}} {room_left["audio_file"]}' in service.metrics()
        assert "trackegress_egress_active 1.0" in service.metrics()
        assert "trackegress_packets_lost_total 0.0" in service.metrics()
        listed = await client.egress.list_egress(egress.ListEgressRequest(room_name=room, active=True))
        assert [i.egress_id for i in listed.items] == [started.egress_id]
        await asyncio.sleep(1.5)

        stopping = await client.egress.stop_egress(egress.StopEgressRequest(egress_id=started.egress_id))
        assert stopping.status in (Status.EGRESS_ENDING, Status.EGRESS_COMPLETE)
        assert stopping.details == "End reason: StopEgress API"
        done = await wait_status(client, started.egress_id, Status.EGRESS_COMPLETE, interval=0.1)

    out = service.local_dir / room / "alice.ogg"
    result = done.file_results[0]
    assert (result.filename, result.location, result.size) == (f"{room}/alice.ogg", str(out), out.stat().st_size)
    assert result.size > 1000 and result.duration > 1e9
    assert done.ended_at >= done.updated_at > active.updated_at
    with pytest.raises(api.TwirpError) as again:
        await client.egress.stop_egress(egress.StopEgressRequest(egress_id=started.egress_id))
    assert (again.value.code, again.value.status) == ("failed_precondition", 412)
    assert again.value.message == "egress with status EGRESS_COMPLETE cannot be stopped"
    assert (await client.egress.list_egress(egress.ListEgressRequest(room_name=room, active=True))).items == []

    await hooks.wait_for(started.egress_id, "egress_ended")
    assert hooks.for_egress(started.egress_id) == [
        ("egress_started", Status.EGRESS_STARTING),
        ("egress_updated", Status.EGRESS_ACTIVE),
        ("egress_updated", Status.EGRESS_ENDING),
        ("egress_ended", Status.EGRESS_COMPLETE),
    ]
    assert hooks.rejected == [] and set(hooks.content_types) == {"application/webhook+json"}
    assert hooks.events[-1].egress_info.file_results[0].size == result.size
    assert 'trackegress_egress_ended_total{status="EGRESS_COMPLETE"} 1.0' in service.metrics()


def token(server: LiveKitServer, *, secret: str | None = None, ttl: float = 600, record: bool = True) -> str:
    grants = api.VideoGrants(room_record=True) if record else api.VideoGrants(room_list=True, room_create=True)
    return (
        api.AccessToken(server.api_key, secret or server.api_secret)
        .with_grants(grants)
        .with_ttl(datetime.timedelta(seconds=ttl))
        .to_jwt()
    )


async def post(
    url: str, method: str, body: bytes, *, auth: str | None, content_type: str = "application/json"
) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = f"Bearer {auth}"
    async with aiohttp.ClientSession() as session, session.post(
        f"{url}/twirp/livekit.Egress/{method}", data=body, headers=headers
    ) as response:
        return response.status, await response.json(content_type=None)


async def test_bad_requests_get_twirp_errors_and_start_nothing(
    service: EgressService, client: api.LiveKitAPI, hooks: WebhookSink, livekit_server: LiveKitServer,
    make_room: RoomFactory, sample_media: dict[str, Path],
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    good = token(livekit_server)

    def start_json(**fields: object) -> bytes:
        return json.dumps(fields).encode()

    async with Publisher(livekit_server.url, creds, room, "bob", sample_media["opus"], loop=True) as pub:
        track = pub.track_sid
        ok_body = start_json(room_name=room, track_id=track, file={"filepath": "x.ogg"})
        cases: list[tuple[str, bytes, dict[str, object], tuple[int, str, str]]] = [
            ("malformed JSON", b'{"room_name": ', {}, (400, "malformed", "")),
            ("malformed protobuf", b"\xff\xff\xff", {"content_type": "application/protobuf"}, (400, "malformed", "")),
            ("wrong field type", start_json(room_name=5), {}, (400, "malformed", "")),
            ("deep nesting", b'{"file": ' * 100_000, {}, (400, "malformed", "")),
            ("missing room", start_json(track_id=track, file={}), {},
             (400, "invalid_argument", "room_name is required")),
            ("missing track", start_json(room_name=room, file={}), {},
             (400, "invalid_argument", "track_id is required")),
            ("missing output", start_json(room_name=room, track_id=track), {},
             (400, "invalid_argument", "output is required: file or websocket_url")),
            ("bad scheme", start_json(room_name=room, track_id=track, websocket_url="http://127.0.0.1:1/x"), {},
             (400, "invalid_argument", "")),
            ("traversal", start_json(room_name=room, track_id=track, file={"filepath": "../../escape.ogg"}), {},
             (400, "invalid_argument", "invalid filepath")),
            ("bad webhook", start_json(room_name=room, track_id=track, file={}, webhooks=[{"url": "ftp://x"}]), {},
             (400, "invalid_argument", "webhook url")),
            ("unknown room", start_json(room_name="no-such-room", track_id=track, file={}), {},
             (404, "not_found", "requested room does not exist")),
            ("unknown track", start_json(room_name=room, track_id="TR_nope", file={}), {},
             (404, "not_found", f"track TR_nope not found in room {room}")),
            ("oversized body", b'{"room_name": "' + b"r" * (2 << 20) + b'"}', {}, (400, "malformed", "larger than")),
            ("no token", ok_body, {"auth": None}, (401, "unauthenticated", "")),
            ("wrong secret", ok_body, {"auth": token(livekit_server, secret="not-the-secret")},
             (401, "unauthenticated", "Signature verification failed")),
            ("expired token", ok_body, {"auth": token(livekit_server, ttl=-300)},
             (401, "unauthenticated", "Signature has expired")),
            ("wrong grant", ok_body, {"auth": token(livekit_server, record=False)},
             (403, "permission_denied", "roomRecord")),
            ("text body", ok_body, {"content_type": "text/plain"}, (404, "bad_route", "Content-Type")),
        ]
        for name, body, options, (status, code, msg) in cases:
            got_status, error = await post(service.url, "StartTrackEgress", body, **{"auth": good} | options)
            assert (got_status, error["code"]) == (status, code), name
            assert msg in str(error["msg"]), (name, error)

        for method, body, (status, code) in [
            ("StartRoomCompositeEgress", b"{}", (501, "unimplemented")),
            ("NoSuchMethod", b"{}", (404, "bad_route")),
            ("StopEgress", b'{"egress_id": "EG_nonexistent0"}', (404, "not_found")),
            ("UpdateStream", b'{"egress_id": "EG_nonexistent0"}', (404, "not_found")),
        ]:
            got_status, error = await post(service.url, method, body, auth=good)
            assert (got_status, error["code"]) == (status, code), method

    assert (await client.egress.list_egress(egress.ListEgressRequest())).items == []
    assert service.health()["active_egresses"] == 0
    assert not service.local_dir.exists() or list(service.local_dir.rglob("*")) == []
    assert hooks.events == []
    assert "secret" not in service.log_text().replace("not-the-secret", "")


async def test_restart_mid_recording_reports_the_old_egress_failed_with_its_partial_file(
    livekit_server: LiveKitServer, hooks: WebhookSink, make_room: RoomFactory, sample_media: dict[str, Path],
    tmp_path: Path,
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    settings = {"webhook": {"urls": [hooks.url]}}
    first = EgressService(livekit_server, tmp_path, **settings)
    try:
        async with Publisher(livekit_server.url, creds, room, "carol", sample_media["opus"], loop=True) as pub:
            lk = api.LiveKitAPI(url=first.url, api_key=creds[0], api_secret=creds[1])
            started = await lk.egress.start_track_egress(file_request(room, pub.track_sid, "carol.ogg"))
            await wait_status(lk, started.egress_id, Status.EGRESS_ACTIVE, interval=0.1)
            await lk.aclose()
            out = first.local_dir / "carol.ogg"
            await until(lambda: out.exists() and out.stat().st_size >= 5000, interval=0.1)
            first.kill()
    finally:
        first.stop()
    size = out.stat().st_size

    second = EgressService(livekit_server, tmp_path, **settings)
    try:
        lk = api.LiveKitAPI(url=second.url, api_key=creds[0], api_secret=creds[1])
        items = (await lk.egress.list_egress(egress.ListEgressRequest(room_name=room))).items
        await lk.aclose()
    finally:
        second.stop()
    assert [i.egress_id for i in items] == [started.egress_id]
    info = items[0]
    assert (info.status, info.error, info.details) == (Status.EGRESS_FAILED, "Process killed",
                                                       "End reason: Process killed")
    assert info.ended_at >= info.updated_at > started.updated_at
    assert [(f.filename, f.location, f.size) for f in info.file_results] == [("carol.ogg", str(out), size)]
    assert info.file_results[0].duration > 0
    await hooks.wait_for(started.egress_id, "egress_ended")
    assert hooks.for_egress(started.egress_id)[-1] == ("egress_ended", Status.EGRESS_FAILED)


async def test_sigterm_ends_running_egresses_complete_with_a_shutdown_reason_not_process_killed(
    livekit_server: LiveKitServer, hooks: WebhookSink, make_room: RoomFactory, sample_media: dict[str, Path],
    tmp_path: Path,
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    settings = {"webhook": {"urls": [hooks.url]}}
    first = EgressService(livekit_server, tmp_path, **settings)
    try:
        async with Publisher(livekit_server.url, creds, room, "erin", sample_media["opus"], loop=True) as pub:
            lk = api.LiveKitAPI(url=first.url, api_key=creds[0], api_secret=creds[1])
            started = await lk.egress.start_track_egress(file_request(room, pub.track_sid, "erin.ogg"))
            await wait_status(lk, started.egress_id, Status.EGRESS_ACTIVE, interval=0.1)
            await lk.aclose()
            out = first.local_dir / "erin.ogg"
            await until(lambda: out.exists() and out.stat().st_size >= 5000, interval=0.1)
            await asyncio.to_thread(stop_process, first.proc, 15)  # SIGTERM; the webhook sink answers meanwhile
            assert first.proc.returncode == 0
    finally:
        first.stop()
    await hooks.wait_for(started.egress_id, "egress_ended")
    assert hooks.for_egress(started.egress_id)[-1] == ("egress_ended", Status.EGRESS_COMPLETE)

    second = EgressService(livekit_server, tmp_path, **settings)
    try:
        lk = api.LiveKitAPI(url=second.url, api_key=creds[0], api_secret=creds[1])
        items = (await lk.egress.list_egress(egress.ListEgressRequest(room_name=room))).items
        await lk.aclose()
    finally:
        second.stop()
    assert [(i.egress_id, i.status, i.error) for i in items] == [(started.egress_id, Status.EGRESS_COMPLETE, "")]
    assert items[0].details.startswith("End reason: Server shutting down"), items[0].details
    assert "Process killed" not in items[0].details
    assert items[0].file_results[0].size == out.stat().st_size > 5000


def cli(service: EgressService, server: LiveKitServer, *args: str) -> list[str]:
    return [sys.executable, "-m", "trackegress.cli", args[0], "--url", service.url, "--api-key", server.api_key,
            "--api-secret", server.api_secret, *args[1:]]


async def test_session_limit_and_cli_client(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    svc = EgressService(livekit_server, tmp_path, session_limits={"file_output_max_duration": "3s"})
    try:
        async with Publisher(livekit_server.url, creds, room, "dave", sample_media["opus"], loop=True) as pub:
            request = tmp_path / "request.json"
            request.write_text(json.dumps({"room_name": room, "track_id": pub.track_sid,
                                           "file": {"filepath": "dave.webm"}}))
            proc = await asyncio.create_subprocess_exec(
                *cli(svc, livekit_server, "start", str(request), "--wait"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1, stderr.decode()
        info = json.loads(stdout)
        assert (info["status"], info["error"], info["errorCode"]) == ("EGRESS_LIMIT_REACHED", "Session limit reached",
                                                                      413)
        assert "EGRESS_ACTIVE" in stderr.decode() and "EGRESS_LIMIT_REACHED" in stderr.decode(), stderr.decode()
        out = svc.local_dir / "dave.ogg"
        assert info["fileResults"][0]["location"] == str(out) and out.stat().st_size > 0
        assert 1.5e9 < int(info["fileResults"][0]["duration"]) < 3.5e9

        listed = subprocess.run(cli(svc, livekit_server, "list", "--room", room), capture_output=True, text=True)
        assert listed.returncode == 0 and info["egressId"] in listed.stdout and "LIMIT_REACHED" in listed.stdout
        stopped = subprocess.run(cli(svc, livekit_server, "stop", info["egressId"]), capture_output=True, text=True)
        assert stopped.returncode == 1
        assert "failed_precondition: egress with status EGRESS_LIMIT_REACHED cannot be stopped" in stopped.stderr
    finally:
        svc.stop()


FIELDS = ["room_name", "roomName", "track_id", "trackId", "file", "filepath", "websocket_url", "websocketUrl",
          "webhooks", "url", "signing_key", "s3", "disable_manifest", "egress_id", "active", "page_token"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8),
                                                                inner, max_size=5),
    max_leaves=20,
)
TEXT = st.text(max_size=30) | st.sampled_from(["", "../x", "/etc/passwd", "{room_name}/", "ws://h/?a=b", "\0"])
REQUESTS = st.builds(
    egress.TrackEgressRequest, room_name=TEXT, track_id=TEXT,
    websocket_url=st.just("") | TEXT, webhooks=st.lists(st.builds(models.WebhookConfig, url=TEXT), max_size=2),
)
BODIES = (
    st.tuples(st.just("application/json"), JSON_VALUES.map(lambda v: json.dumps(v).encode()))
    | st.tuples(st.just("application/json"), st.binary(max_size=200))
    | st.tuples(st.just("application/protobuf"), st.binary(max_size=200))
    | st.tuples(st.just("application/protobuf"), REQUESTS.map(lambda r: r.SerializeToString()))
)
METHODS = st.sampled_from(["StartTrackEgress", "ListEgress", "StopEgress", "UpdateStream", "StartEgress"])


def post_sync(url: str, auth: str, method: str, content_type: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{url}/twirp/livekit.Egress/{method}", data=body, method="POST",
                                     headers={"Content-Type": content_type, "Authorization": f"Bearer {auth}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def test_fuzzed_request_bodies_never_get_a_server_error(
    service: EgressService, livekit_server: LiveKitServer
) -> None:
    auth = token(livekit_server)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(method=METHODS, body=BODIES)
    def fuzz(method: str, body: tuple[str, bytes]) -> None:
        status, answer = post_sync(service.url, auth, method, *body)
        assert status != 500, answer
        if status != 200:
            error = json.loads(answer)
            assert set(error) == {"code", "msg"} and HTTP_STATUS[error["code"]] == status
            assert error["code"] not in ("internal", "unknown", "unavailable"), error

    await asyncio.to_thread(fuzz)
    assert service.proc.poll() is None
    assert service.health()["active_egresses"] == 0


JS_CLIENT = REPO / "tests" / "js" / "egress_client.mjs"


async def test_js_client_start_list_stop(
    service: EgressService, livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path]
) -> None:
    if not (JS_CLIENT.parent / "node_modules" / "livekit-server-sdk").is_dir():
        pytest.skip("livekit-server-sdk not installed in tests/js (run scripts/install-test.sh)")
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, "erin", sample_media["opus"], loop=True) as pub:
        proc = await asyncio.create_subprocess_exec(
            "node", str(JS_CLIENT), service.url, *creds, room, pub.track_sid, "js/{track_id}",
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await asyncio.wait_for(proc.communicate(), 30)
    result = json.loads(stdout)
    assert "error" not in result, result
    started, stopped = result["started"], result["stopped"]
    assert started["egressId"].startswith("EG_")
    assert started.get("status", "EGRESS_STARTING") == "EGRESS_STARTING"  # toJson() omits the zero enum
    assert started["track"] == {"roomName": room, "trackId": pub.track_sid, "file": {"filepath": "js/{track_id}"}}
    assert [i["egressId"] for i in result["listed"]] == [started["egressId"]]
    assert result["listed"][0]["status"] == "EGRESS_ACTIVE"
    assert stopped["status"] in ("EGRESS_ENDING", "EGRESS_COMPLETE")
    assert stopped["details"].split("; sync: ")[0] == "End reason: StopEgress API"
    await until((service.local_dir / "js" / f"{pub.track_sid}.ogg").exists, interval=0.1)
