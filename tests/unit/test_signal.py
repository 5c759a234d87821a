"""The /rtc URL our signalling client dials, and how resumes back off."""

from urllib.parse import parse_qs, urlsplit

import pytest
from livekit.protocol import models, rtc
from websockets.asyncio.server import ServerConnection, serve

from trackegress.room.signal import Resume, SignalClient, SignalError, backoff, rtc_url


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_rtc_url_carries_protocol_17_and_subscriber_settings() -> None:
    url = urlsplit(rtc_url("https://lk.example/base/", "TOKEN"))
    assert (url.scheme, url.netloc, url.path) == ("wss", "lk.example", "/base/rtc")
    query = _query(url.geturl())
    assert query["access_token"] == "TOKEN"
    assert query["protocol"] == "17"
    assert query["auto_subscribe"] == "0"
    assert query["adaptive_stream"] == "0"
    assert query["subscriber_allow_pause"] == "0"
    assert "reconnect" not in query and "sid" not in query


def test_resume_url_names_the_participant_and_the_reason() -> None:
    joined = _query(rtc_url("ws://lk:7880", "TOKEN"))
    resumed = _query(rtc_url("ws://lk:7880", "TOKEN", Resume("PA_abc")))
    assert resumed == joined | {"reconnect": "1", "sid": "PA_abc", "reconnect_reason": "1"}
    assert models.ReconnectReason.RR_SIGNAL_DISCONNECTED == 1
    unknown = _query(rtc_url("ws://lk:7880", "TOKEN", Resume("PA_abc", models.ReconnectReason.RR_UNKNOWN)))
    assert unknown["reconnect_reason"] == "0"


def test_backoff_retries_at_once_then_doubles_up_to_the_cap() -> None:
    assert [backoff(n) for n in range(8)] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff(3, first=1.0, cap=3.0) == 3.0


def test_rtc_url_rejects_other_schemes() -> None:
    with pytest.raises(SignalError, match="scheme"):
        rtc_url("ftp://lk.example", "TOKEN")


async def test_a_resume_uses_the_token_the_server_refreshed() -> None:
    tokens: list[str] = []

    async def server(ws: ServerConnection) -> None:
        assert ws.request is not None
        tokens.append(_query(ws.request.path)["access_token"])
        if len(tokens) == 1:
            await ws.send(rtc.SignalResponse(join=rtc.JoinResponse()).SerializeToString())
            await ws.send(rtc.SignalResponse(refresh_token="NEW").SerializeToString())
        else:
            await ws.send(rtc.SignalResponse(reconnect=rtc.ReconnectResponse()).SerializeToString())
            await ws.wait_closed()

    async with serve(server, "127.0.0.1", 0) as listener:
        port = listener.sockets[0].getsockname()[1]
        client = await SignalClient.connect(f"ws://127.0.0.1:{port}", "OLD")
        kinds = [response.WhichOneof("message") async for response in client.responses()]
        assert kinds == ["refresh_token"]  # then the server closed the connection
        assert await client.resume(Resume("PA_abc"), timeout=5) is not None
        await client.close()
    assert tokens == ["OLD", "NEW"]
