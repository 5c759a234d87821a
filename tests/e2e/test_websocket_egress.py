"""WebSocket audio egress against the real livekit-server: live PCM on a real websockets receiver."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress
from support.egress_helpers import until
from support.media import make_opus_ogg
from support.publisher import Publisher
from support.server import LiveKitServer, RoomFactory
from support.wsreceiver import LEFT_HZ, RIGHT_HZ, Receiver, channels, free_port, is_silent, peak_hz, steps

from trackegress.config import Config
from trackegress.egress import Egress
from trackegress.sinks.websocket import MUTED, UNMUTED

BYTES_PER_SECOND = 48_000 * 2 * 2
Scenario = Callable[[Publisher, Egress], Awaitable[None]]


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of 441 Hz left, 661 Hz right: phases tell where each 10 ms message sits."""
    return make_opus_ogg(tmp_path_factory.mktemp("tone") / "tone.ogg", 3.0, int(LEFT_HZ), int(RIGHT_HZ), "128k")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    await rx.start()
    yield rx
    await rx.stop()


def websocket_request(room: str, track: str, url: str) -> egress.TrackEgressRequest:
    return egress.TrackEgressRequest(room_name=room, track_id=track, websocket_url=url)


async def stream_while_publishing(
    server: LiveKitServer, room: str, path: Path, url: str, scenario: Scenario | None = None, *, loop: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> egress.EgressInfo:
    """Publish ``path`` once the recorder has joined, run ``scenario`` (default: the whole file), leave."""
    creds = (server.api_key, server.api_secret)
    config = Config(ws_url=server.url, api_key=server.api_key, api_secret=server.api_secret,
                    websocket_headers=headers)
    async with Publisher(server.url, creds, room, "speaker", path, start_delay=None, loop=loop) as pub:
        job = Egress(websocket_request(room, pub.track_sid, url), config)
        run = asyncio.create_task(job.run())
        await until(lambda: job.info.room_id)
        await asyncio.sleep(1.5)
        pub.begin()
        if scenario is None:
            await asyncio.wait_for(pub.done, 15)
            await asyncio.sleep(0.3)
        else:
            await scenario(pub, job)
    return await asyncio.wait_for(run, 30)


def audible(messages: list[bytes]) -> list[bytes]:
    return [m for m in messages if not is_silent(m)]


async def test_tone_arrives_as_48k_stereo_pcm(
    livekit_server: LiveKitServer, make_room: RoomFactory, receiver: Receiver, tone: Path
) -> None:
    url = receiver.url("/stt?token=s3cret&lang=en")
    info = await stream_while_publishing(livekit_server, await make_room(), tone, url)

    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    (conn,) = receiver.conns
    assert conn.headers["Content-Type"] == "audio/x-raw"
    assert conn.path == "/stt?token=s3cret&lang=en"
    await asyncio.wait_for(conn.done.wait(), 5)
    assert conn.close_code == 1000
    assert {len(m) for m in conn.binary} == {1920}
    tone_messages = audible(conn.binary)
    assert len(tone_messages) * 0.01 == pytest.approx(3.0, abs=0.1)
    pcm = channels(tone_messages)
    assert peak_hz(pcm[:, 0]) == pytest.approx(LEFT_HZ, abs=2)
    assert peak_hz(pcm[:, 1]) == pytest.approx(RIGHT_HZ, abs=2)
    assert set(steps(tone_messages)) == {1}, "every 10 ms once, in order"
    (result,) = info.stream_results
    assert result.url.endswith("/stt?token={...}&lang={...}") and "s3cret" not in str(info)
    assert result.status == egress.StreamInfo.FINISHED
    assert result.duration == pytest.approx(len(conn.binary) * 10_000_000, abs=20_000_000)


async def test_mute_and_unmute_through_the_server_api(
    livekit_server: LiveKitServer, make_room: RoomFactory, room_api: api.LiveKitAPI, receiver: Receiver, tone: Path
) -> None:
    room = await make_room()

    async def mute_for_a_second(pub: Publisher, job: Egress) -> None:
        await until(lambda: len(receiver.conns[0].binary) > 100)
        for muted in (True, False):
            await room_api.room.mute_published_track(
                api.MuteRoomTrackRequest(room=room, identity="speaker", track_sid=pub.track_sid, muted=muted)
            )
            await asyncio.sleep(1.0)

    info = await stream_while_publishing(
        livekit_server, room, tone, receiver.url(), mute_for_a_second, loop=True
    )
    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    conn = receiver.conns[0]
    kinds = [("text", m) if isinstance(m, str) else ("pcm", is_silent(m)) for _, m in conn.messages]
    assert [m for k, m in kinds if k == "text"][:2] == [MUTED, UNMUTED]
    start, end = kinds.index(("text", MUTED)), kinds.index(("text", UNMUTED))
    between = [silent for _, silent in kinds[start + 1 : end]]
    assert len(between) >= 80 and all(between), "zeros while muted"
    assert not all(silent for _, silent in kinds[end + 1 :]), "audio again after unmute"


async def test_receiver_outage_is_bridged(
    livekit_server: LiveKitServer, make_room: RoomFactory, receiver: Receiver, tone: Path
) -> None:
    async def drop_for_three_seconds(pub: Publisher, job: Egress) -> None:
        await until(lambda: receiver.conns and len(audible(receiver.conns[0].binary)) > 50)
        await receiver.stop()
        for conn in receiver.conns:
            await conn.ws.close(1001)
        await asyncio.sleep(3)
        await receiver.start()
        await asyncio.wait_for(pub.done, 15)
        await asyncio.sleep(0.5)

    info = await stream_while_publishing(
        livekit_server, await make_room(), tone, receiver.url(), drop_for_three_seconds
    )
    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    assert len(receiver.conns) == 2
    messages = [m for conn in receiver.conns for m in conn.binary]
    tone_messages = audible(messages)
    assert len(tone_messages) * 0.01 == pytest.approx(3.0, abs=0.1)
    assert set(steps(tone_messages)) <= {1, 2}, "in order, never twice (a frame in flight may be lost)"


async def test_unreachable_receiver_fails_with_the_dial_error(
    livekit_server: LiveKitServer, make_room: RoomFactory, tone: Path
) -> None:
    url = f"ws://127.0.0.1:{free_port()}/nobody?key=hidden"
    info = await stream_while_publishing(livekit_server, await make_room(), tone, url)
    assert egress.EgressStatus.Name(info.status) == "EGRESS_FAILED"
    assert info.error.startswith(f"failed to connect to websocket ws://127.0.0.1:{url.split(':')[2].split('/')[0]}")
    assert "hidden" not in str(info)


async def test_video_track_is_refused(
    livekit_server: LiveKitServer, make_room: RoomFactory, receiver: Receiver, sample_media: dict[str, Path]
) -> None:
    info = await stream_while_publishing(livekit_server, await make_room(), sample_media["vp8"], receiver.url())
    assert egress.EgressStatus.Name(info.status) == "EGRESS_FAILED"
    assert (info.error, info.error_code) == ("format websocket incompatible with codec video/vp8", 400)
    assert receiver.conns == []


def test_cli_refuses_a_bad_scheme() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trackegress.cli", "record", "--url", "ws://127.0.0.1:1", "--api-key", "k",
         "--api-secret", "s", "--room", "r", "--track", "TR_x", "--websocket-url", "http://host/x?key=hidden"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "trackegress: invalid_argument: invalid url http://host/x?key={...}: invalid scheme"


async def test_receiver_keepalive_pings_are_answered(
    livekit_server: LiveKitServer, make_room: RoomFactory, tone: Path
) -> None:
    """A receiver that pings and closes without a pong (websockets' keepalive) keeps the stream open.

    websockets' defaults (a ping every 20 s, closed without a pong within 20 s) over two minutes with
    ``KEEPALIVE_TEST_SECONDS=125``; by default the same check, compressed: a ping every 0.5 s for 8 s.
    """
    seconds = float(os.environ.get("KEEPALIVE_TEST_SECONDS", "8"))
    timing = {} if seconds >= 60 else {"ping_interval": 0.5, "ping_timeout": 1.0}
    receiver = Receiver(**timing)
    await receiver.start()

    async def hold(pub: Publisher, job: Egress) -> None:
        await asyncio.sleep(seconds)

    try:
        info = await stream_while_publishing(livekit_server, await make_room(), tone, receiver.url(), hold, loop=True)
    finally:
        await receiver.stop()
    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    (conn,) = receiver.conns
    assert conn.close_code == 1000 and conn.ws.latency > 0  # our pongs answered its pings
    assert len(conn.binary) * 0.01 >= seconds - 1
    assert info.stream_results[0].status == egress.StreamInfo.FINISHED


EXAMPLE_RECEIVER = Path(__file__).parents[2] / "examples" / "ws_receiver.py"


async def test_receiver_sees_the_configured_headers_and_verifies_the_token(
    livekit_server: LiveKitServer, make_room: RoomFactory, receiver: Receiver, tone: Path
) -> None:
    room = await make_room()
    info = await stream_while_publishing(livekit_server, room, tone, receiver.url(),
                                         headers=(("X-Api-Key", "k3y"), ("X-Tenant", "acme")))

    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    (conn,) = receiver.conns
    assert (conn.headers["X-Api-Key"], conn.headers["X-Tenant"]) == ("k3y", "acme")
    verifier = api.TokenVerifier(livekit_server.api_key, livekit_server.api_secret)
    claims = verifier.verify(conn.headers["Authorization"].removeprefix("Bearer "))
    assert (claims.identity, claims.video and claims.video.room) == (info.egress_id, room)
    assert claims.attributes == {"egress_id": info.egress_id, "room": room, "track_id": info.track.track_id}


async def _example_receiver(key: str, secret: str) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    env = {**os.environ, "LIVEKIT_API_KEY": key, "LIVEKIT_API_SECRET": secret}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(EXAMPLE_RECEIVER), str(port), env=env,
                                                stdout=asyncio.subprocess.PIPE)
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return proc, port
    proc.kill()
    raise AssertionError("the example receiver did not start")


@pytest.mark.parametrize("right_secret", [True, False], ids=["egress-accepted", "wrong-secret-rejected"])
async def test_example_receiver_accepts_the_egress_and_rejects_a_stranger(
    livekit_server: LiveKitServer, make_room: RoomFactory, tone: Path, right_secret: bool
) -> None:
    secret = livekit_server.api_secret if right_secret else "not-the-secret-of-this-livekit-server"
    proc, port = await _example_receiver(livekit_server.api_key, secret)
    try:
        info = await stream_while_publishing(livekit_server, await make_room(), tone, f"ws://127.0.0.1:{port}/pcm")
    finally:
        proc.terminate()
        out = (await proc.communicate())[0].decode()
    if right_secret:
        assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
        assert f"egress {info.egress_id} room {info.room_name} track {info.track.track_id}\n" in out
        assert int(out.split("pcm bytes ")[1].split()[0]) > 2.5 * BYTES_PER_SECOND
    else:
        assert egress.EgressStatus.Name(info.status) == "EGRESS_FAILED"
        assert "HTTP 401" in info.error, info.error
        assert "egress" not in out
