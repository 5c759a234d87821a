"""An in-memory stand-in for ``trackegress.psrpc.bus.RedisBus``, for psrpc tests without Redis."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any


class FakeRedis:
    """What ``IOInfoServer`` asks Redis directly: how many subscribers a channel has (``subscribers``, for all)."""

    def __init__(self) -> None:
        self.subscribers = 0

    async def pubsub_numsub(self, *channels: str) -> list[tuple[bytes, int]]:
        return [(c.encode(), self.subscribers) for c in channels]


class FakeBus:
    """Pub/sub in memory: every subscriber gets a message, only the first of a queue group does (a queue
    subscription takes it before the later subscribers of its channel). ``published`` lists every message."""

    def __init__(self) -> None:
        self.redis = FakeRedis()
        self.handlers: dict[str, list[tuple[Any, bool]]] = defaultdict(list)
        self.published: list[tuple[str, bytes]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def subscribe(self, channel: str, handler: Any, *, queue: bool = False) -> None:
        self.handlers[channel].append((handler, queue))

    async def unsubscribe(self, *channels: str) -> None:
        for name in channels:
            self.handlers.pop(name, None)

    async def publish(self, channel: str, payload: bytes) -> None:
        self.published.append((channel, payload))
        queued = False
        for handler, queue in list(self.handlers.get(channel, [])):
            if queue and queued:
                continue
            queued = queued or queue
            task = asyncio.create_task(handler(channel, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
