"""``RedisBus`` reading a pub/sub connection that fails without an error (redis-py 8.1 on a kernel timeout)."""

from __future__ import annotations

import asyncio
from typing import Any

from trackegress.psrpc.bus import RedisBus


class _Connection:
    is_connected = True

    def __init__(self) -> None:
        self.disconnects = 0

    async def disconnect(self, nowait: bool = False) -> None:
        self.disconnects += 1

    def register_connect_callback(self, callback: Any) -> None:
        pass


class _DeadPubSub:
    """What redis-py's PubSub does once the kernel timed its socket out: None at once, every time."""

    def __init__(self) -> None:
        self.connection = _Connection()
        self.reads = 0

    async def subscribe(self, *channels: str) -> None:
        pass

    async def get_message(self, timeout: float | None = 0.0, **_: Any) -> None:
        self.reads += 1
        await asyncio.sleep(0)
        return None

    async def aclose(self) -> None:
        pass


class _Redis:
    def __init__(self) -> None:
        self.pubsub_object = _DeadPubSub()

    def pubsub(self) -> _DeadPubSub:
        return self.pubsub_object


async def _noop(channel: str, payload: bytes) -> None:
    pass


async def test_a_read_that_returns_without_waiting_drops_the_connection_and_backs_off() -> None:
    redis = _Redis()
    bus = RedisBus(redis)  # type: ignore[arg-type]
    await bus.subscribe("ch", _noop)
    await asyncio.sleep(1.0)
    await bus.close()
    pubsub = redis.pubsub_object
    assert pubsub.reads <= 6, f"{pubsub.reads} reads in 1 s: the reader spins"
    assert pubsub.connection.disconnects == pubsub.reads
