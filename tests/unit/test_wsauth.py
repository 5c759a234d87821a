"""Who calls a WebSocket receiver: the configured headers (egress.yaml), the signed token a receiver verifies with
livekit-api's TokenVerifier, and neither in any log line."""

from __future__ import annotations

import datetime
import logging

import jwt
import pytest
from livekit import api
from support.wsreceiver import Receiver

from trackegress.config import ConfigError, load_service_config
from trackegress.logs import setup_logging
from trackegress.sinks.wsauth import Caller, caller_headers, caller_token
from trackegress.sinks.wslink import WebSocketLink

BASE = "api_key: key\napi_secret: secret-of-32-characters-or-more!\nws_url: ws://localhost:7880\n"
SECRET = "secret-of-32-characters-or-more!"
CALLER = Caller("EG_abc", "standup", "TR_xyz")


def test_headers_from_the_service_config() -> None:
    body = BASE + "websocket:\n  headers: {X-Api-Key: k3y-v4lue, X-Tenant: acme}\n"
    config = load_service_config(env={"EGRESS_CONFIG_BODY": body}).egress
    assert config.websocket_headers == (("X-Api-Key", "k3y-v4lue"), ("X-Tenant", "acme"))
    assert set(config.log_secrets) == {SECRET, "k3y-v4lue"}, "a value as short as acme would garble every line"
    assert load_service_config(env={"EGRESS_CONFIG_BODY": BASE}).egress.websocket_headers == ()


@pytest.mark.parametrize(("headers", "message"), [
    ("{Authorization: x}", "websocket.headers: Authorization is set by trackegress, not configurable"),
    ("{Sec-WebSocket-Key: x}", "websocket.headers: Sec-WebSocket-Key is set by trackegress, not configurable"),
    ("{'bad name': x}", "websocket.headers: 'bad name' is not a valid header name"),
    ("{X-Count: 3}", "websocket.headers.X-Count: expected a one-line string"),
    ("{X-Evil: \"a\\r\\nHost: b\"}", "websocket.headers.X-Evil: expected a one-line string"),
    ("[X-A]", "websocket.headers: expected a mapping, got list"),
])
def test_bad_headers_are_clear_errors(headers: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_service_config(env={"EGRESS_CONFIG_BODY": BASE + f"websocket: {{headers: {headers}}}\n"})
    assert refused.value.message == message


def test_token_verifies_with_token_verifier_and_names_the_egress() -> None:
    claims = api.TokenVerifier("key", SECRET).verify(caller_token("key", SECRET, CALLER))
    assert (claims.identity, claims.kind, claims.video and claims.video.room) == ("EG_abc", "egress", "standup")
    assert claims.attributes == {"egress_id": "EG_abc", "room": "standup", "track_id": "TR_xyz"}
    assert claims.video is not None and not claims.video.room_join, "not a token to join the room with"


@pytest.mark.parametrize("verifier", [
    api.TokenVerifier("key", "another-secret-of-32-characters!!"), api.TokenVerifier("other-key", SECRET),
])
def test_token_fails_with_another_secret_or_key(verifier: api.TokenVerifier) -> None:
    with pytest.raises(jwt.InvalidTokenError):
        verifier.verify(caller_token("key", SECRET, CALLER))


def test_token_expires() -> None:
    token = caller_token("key", SECRET, CALLER, ttl=datetime.timedelta(seconds=-120))
    with pytest.raises(jwt.ExpiredSignatureError):
        api.TokenVerifier("key", SECRET).verify(token)


def test_each_dial_gets_a_fresh_token() -> None:
    headers = caller_headers((("X-Tenant", "acme"),), "key", SECRET, CALLER)
    first = headers()
    assert first["X-Tenant"] == "acme" and first["Authorization"].startswith("Bearer ")
    exp = jwt.decode(first["Authorization"][7:], SECRET, algorithms=["HS256"], issuer="key")["exp"]
    assert exp - datetime.datetime.now(datetime.UTC).timestamp() == pytest.approx(300, abs=5)


async def test_dial_sends_the_headers_and_logs_neither_them_nor_the_token(capfd: pytest.CaptureFixture[str]) -> None:
    config = load_service_config(env={"EGRESS_CONFIG_BODY": BASE + "websocket: {headers: {X-Api-Key: k3y-v4lue}}"})
    receiver = Receiver()
    await receiver.start()
    setup_logging("debug", secrets=config.egress.log_secrets)
    try:
        link = WebSocketLink(
            receiver.url(), message_size=1920, reconnect_deadline=5, max_queued=10, ping=(None, None),
            open_timeout=5, close_timeout=5,
            headers=caller_headers(config.egress.websocket_headers, "key", SECRET, CALLER),
        )
        await link.open()
        await link.close()
    finally:
        logging.getLogger().handlers.clear()
        await receiver.stop()
    (conn,) = receiver.conns
    assert conn.headers["X-Api-Key"] == "k3y-v4lue"
    token = conn.headers["Authorization"].removeprefix("Bearer ")
    assert api.TokenVerifier("key", SECRET).verify(token).identity == "EG_abc"
    logged = capfd.readouterr().err
    assert "trackegress.sinks.wslink.wire > GET /audio HTTP/1.1" in logged, "the handshake was logged"
    assert "> Authorization" not in logged and "> X-Api-Key" not in logged, "its header lines were not"
    assert "k3y-v4lue" not in logged and token not in logged and token.split(".")[1] not in logged
