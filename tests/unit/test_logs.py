"""Log lines: JSON or text, tagged with the egress id of the task that logs (and its child tasks), secrets out."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from trackegress.logs import current_egress_id, setup_logging


@pytest.fixture
def reset_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    yield
    root.handlers, root.level = saved[0], saved[1]


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
