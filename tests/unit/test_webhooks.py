"""Webhooks: LiveKit's WebhookReceiver accepts them; order, retries, and a dead receiver blocks nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import egress, models
from support.server import free_port

from trackegress.reporting import webhooks
from trackegress.reporting.webhooks import CONTENT_TYPE, WebhookSender, allows, event_name, sign

KEY, SECRET = "APIkey", "a-secret-that-is-long-enough-for-hs256!"
Status = egress.EgressStatus


class Receiver:
    """Answers ``fail_first`` requests with 503, then verifies and records events."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.events: list[tuple[str, int]] = []
        self.content_types: set[str] = set()
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?token=abc"

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        self.content_types.add(request.headers["Content-Type"])
        event = api.WebhookReceiver(api.TokenVerifier(KEY, SECRET)).receive(
            await request.text(), request.headers["Authorization"]
        )
        self.events.append((event.event, event.egress_info.status))
        return web.Response()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rx.port).start()
    yield rx
    await runner.cleanup()


def info(status: int) -> egress.EgressInfo:
    return egress.EgressInfo(egress_id="EG_abcdefghijkl", status=status)  # type: ignore[arg-type]


def test_event_names() -> None:
    assert [event_name(info(s)) for s in Status.values()] == [
        "egress_started", "egress_updated", "egress_updated", "egress_ended", "egress_ended", "egress_ended",
        "egress_ended",
    ]


async def test_events_arrive_signed_and_in_order(receiver: Receiver) -> None:
    sender = WebhookSender(KEY, SECRET, [receiver.url])
    for status in (Status.EGRESS_STARTING, Status.EGRESS_ACTIVE, Status.EGRESS_ENDING, Status.EGRESS_COMPLETE):
        sender.notify(info(status))
    await sender.close()
    assert receiver.events == [
        ("egress_started", Status.EGRESS_STARTING), ("egress_updated", Status.EGRESS_ACTIVE),
        ("egress_updated", Status.EGRESS_ENDING), ("egress_ended", Status.EGRESS_COMPLETE),
    ]
    assert receiver.content_types == {CONTENT_TYPE}


async def test_failures_are_retried_with_backoff(receiver: Receiver) -> None:
    receiver.fail_first = 2
    sender = WebhookSender(KEY, SECRET, backoff=0.05)
    sender.notify(info(Status.EGRESS_COMPLETE), [models.WebhookConfig(url=receiver.url)])
    await sender.close()
    assert receiver.attempts == 3
    assert receiver.events == [("egress_ended", Status.EGRESS_COMPLETE)]


async def test_a_dead_receiver_never_blocks_and_is_given_up(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook?token=secret-value"
    sender = WebhookSender(KEY, SECRET, [dead], attempts=3, backoff=0.01)
    began = time.monotonic()
    for _ in range(10):
        sender.notify(info(Status.EGRESS_ACTIVE))
    assert time.monotonic() - began < 0.1
    await asyncio.sleep(0.5)
    await sender.close(drain_timeout=0.1)
    assert "event dropped after 3 attempts" in caplog.text
    assert "secret-value" not in caplog.text


async def test_request_webhooks_follow_their_filter(receiver: Receiver) -> None:
    ended = models.FilterParams(include_events=["egress_ended"])
    only_ended = models.WebhookConfig(url=receiver.url, filter_params=ended)
    sender = WebhookSender(KEY, SECRET)
    for status in (Status.EGRESS_STARTING, Status.EGRESS_ACTIVE, Status.EGRESS_COMPLETE):
        sender.notify(info(status), [only_ended])
    await sender.close()
    assert receiver.events == [("egress_ended", Status.EGRESS_COMPLETE)]


def test_filter_rules_are_upstreams() -> None:
    assert allows(models.FilterParams(), "egress_started")
    assert not allows(models.FilterParams(exclude_events=["egress_started"]), "egress_started")
    assert allows(models.FilterParams(exclude_events=["egress_started"]), "egress_ended")
    both = models.FilterParams(include_events=["egress_started"], exclude_events=["egress_started"])
    assert allows(both, "egress_started")  # include wins


async def test_a_delivery_that_raises_is_logged_and_the_next_event_still_arrives(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def sign_once_broken(body: bytes, key: str, secret: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("Cannot combine AUTHORIZATION header with AUTH argument")
        return sign(body, key, secret)

    monkeypatch.setattr(webhooks, "sign", sign_once_broken)
    dropped: list[None] = []
    sender = WebhookSender(KEY, SECRET, [receiver.url], on_drop=lambda: dropped.append(None))
    sender.notify(info(Status.EGRESS_STARTING))
    await asyncio.sleep(0.2)  # the first delivery has raised
    sender.notify(info(Status.EGRESS_COMPLETE), [models.WebhookConfig(url=receiver.url)])
    await sender.close()
    assert receiver.events == [("egress_ended", Status.EGRESS_COMPLETE)]
    assert len(dropped) == 1, "the dropped event is counted (trackegress_webhooks_dropped)"
    assert "ValueError: Cannot combine AUTHORIZATION header" in caplog.text and "event dropped" in caplog.text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("trackegress")]
    assert ours and not [m for m in ours if "token=abc" in m]  # the receiver's own access log may show it
    assert "Task exception was never retrieved" not in caplog.text
