"""Log lines: JSON or text, tagged with the egress id of the task that logs (and its child tasks), secrets out."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest
from livekit import api
from trackegress_native import EV_FRAME, EV_STATE

from trackegress.logs import context_of, current_egress_id, setup_logging
from trackegress.room import native


@pytest.fixture
def reset_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    yield
    root.handlers, root.level = saved[0], saved[1]
    logging.captureWarnings(False)


async def test_json_lines_carry_the_egress_id_of_the_running_egress(
    reset_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", json_lines=True, secrets=("hunter2",))
    log = logging.getLogger("trackegress.test")

    async def egress() -> None:
        current_egress_id.set("EG_abcdefghijkl")
        log.info("joined with secret %s", "hunter2")
        await asyncio.create_task(asyncio.to_thread(lambda: None))
        await asyncio.create_task(child())

    async def child() -> None:
        log.warning("child task line")

    await asyncio.create_task(egress())
    log.info("service line")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["msg"], e.get("egress_id")) for e in lines] == [
        ("joined with secret {secret}", "EG_abcdefghijkl"),
        ("child task line", "EG_abcdefghijkl"),
        ("service line", None),
    ]
    assert lines[1]["level"] == "warning" and lines[0]["logger"] == "trackegress.test"


def test_text_lines_end_with_the_egress_id(reset_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    log = logging.getLogger("trackegress.test")
    log.info("explicit", extra={"egress_id": "EG_zzzzzzzzzzzz"})
    log.info("none")
    first, second = capsys.readouterr().err.splitlines()
    assert first.endswith("trackegress.test explicit [EG_zzzzzzzzzzzz]")
    assert second.endswith("trackegress.test none")


def test_tokens_are_redacted_at_every_level_even_in_tracebacks(
    reset_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    token = api.AccessToken("key", "a-long-enough-secret-for-hs256-signing!").with_identity("eg").to_jwt()
    setup_logging("debug", secrets=("s3cr\"t",))
    log = logging.getLogger("websockets.client")
    log.debug("> GET /rtc?access_token=%s&auto_subscribe=0 HTTP/1.1", token)
    log.debug("> Authorization: Bearer %s", token)
    try:
        raise ValueError(f"wss://h/x?token=abc&other=1 {token}")
    except ValueError:
        log.exception("failed")
    setup_logging("debug", json_lines=True, secrets=("s3cr\"t",))
    log.info("in json: %s s3cr\"t", token)
    text = capsys.readouterr().err
    assert token not in text and token.split(".")[1] not in text and "abc" not in text and 's3cr"t' not in text
    assert "access_token={...}&auto_subscribe=0" in text and "Bearer {token}" in text and "token={...}&other=1" in text
    assert json.loads(text.splitlines()[-1])["msg"] == "in json: {token} {secret}"


def test_the_media_core_hands_each_peer_s_events_over_in_that_peer_s_egress_context() -> None:
    """One I/O callback serves every peer: each peer's events must log with its own egress id, not with the id of
    the egress whose peer happened to add the callback."""
    seen: list[tuple[str, str]] = []

    class Peer:
        def __init__(self, egress_id: str) -> None:
            self.context = context_of(egress_id)
            self.egress_id = egress_id

        def queue_frame(self, event: tuple[object, ...]) -> None:
            seen.append(("frame", current_egress_id.get()))

        def flush_frames(self) -> None:
            seen.append((f"flush {self.egress_id}", current_egress_id.get()))

        def handle(self, event: tuple[object, ...]) -> None:
            seen.append((f"event {self.egress_id}", current_egress_id.get()))

    core = object.__new__(native._Core)
    core.peers = {1: Peer("EG_one"), 2: Peer("EG_two")}  # type: ignore[dict-item]
    events = [(EV_STATE, 1, 2), (EV_FRAME, 2), (EV_STATE, 2, 2)]
    context_of("EG_first_to_watch").run(core._dispatch, events)
    assert [(what, egress_id) for what, egress_id in seen if what != "frame"] == [
        ("flush EG_one", "EG_one"), ("event EG_one", "EG_one"),
        ("flush EG_two", "EG_two"), ("event EG_two", "EG_two"), ("flush EG_two", "EG_two"),
    ]
