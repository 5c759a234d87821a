"""IOInfo client: every EgressInfo change goes to livekit-server, which stores it and sends the webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from livekit.protocol import egress
from redis.exceptions import RedisError

from trackegress.backoff import Backoff
from trackegress.errors import DEADLINE_EXCEEDED, UNAVAILABLE
from trackegress.info import is_ended
from trackegress.logs import context_of
from trackegress.psrpc import wire as psrpc
from trackegress.psrpc.bus import RPCClient

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0
RETRY_FOR = 60.0  # seconds an update is retried while livekit-server does not answer (upstream: 1 min)
_RETRYABLE = (DEADLINE_EXCEEDED, UNAVAILABLE)
CREATE, UPDATE = "CreateEgress", "UpdateEgress"
_BACKOFF = Backoff(0.5, cap=8.0)


def retry_until(give_up: float, now: float, exc: Exception, redis_up: bool) -> float | None:
    """When to stop retrying after ``exc`` (``give_up`` so far), or None to stop now (not retryable).

    The budget is for livekit-server not answering: a failure while Redis itself is down (an error from Redis, or
    a timeout while the bus has no connection) does not use it up, so a report waits for Redis to come back.
    """
    if isinstance(exc, psrpc.PsrpcError) and exc.code not in _RETRYABLE:
        return None
    if isinstance(exc, RedisError | OSError) or not redis_up:
        return max(give_up, now + RETRY_FOR)
    return give_up


class IOInfoReporter:
    """``report(info)`` queues an update; each egress's updates go out in order, retried on timeouts.

    STARTING becomes ``CreateEgress`` (livekit-server's ``egress_started``), anything else ``UpdateEgress``
    (``egress_updated`` / ``egress_ended``). ``on_final(egress_id)`` runs once the final status is sent.
    ``resync(info)`` queues a ``CreateEgress`` of the current state, which livekit-server ignores for an egress
    it knows and stores for one it lost (a Redis that restarted empty).
    """

    def __init__(
        self, client: RPCClient, on_final: Callable[[str], None] = lambda egress_id: None,
        redis_up: Callable[[], bool] = lambda: True,
    ) -> None:
        self._client = client
        self._on_final = on_final
        self._redis_up = redis_up
        self._queues: dict[str, asyncio.Queue[tuple[str, egress.EgressInfo]]] = {}
        self._created: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._finals: dict[str, egress.EgressInfo] = {}  # final statuses queued and not sent yet

    def report(self, info: egress.EgressInfo) -> None:
        """Queue ``info`` (never blocks)."""
        self._queue(CREATE if info.status == egress.EgressStatus.EGRESS_STARTING else UPDATE, info)

    def resync(self, info: egress.EgressInfo) -> None:
        """Queue ``info`` as a ``CreateEgress``, after what is already queued for the egress (never blocks)."""
        self._queue(CREATE, info)

    def _queue(self, method: str, info: egress.EgressInfo) -> None:
        queue = self._queues.get(info.egress_id)
        if queue is None:
            queue = self._queues[info.egress_id] = asyncio.Queue()
            self._created[info.egress_id] = asyncio.Event()
            task = asyncio.create_task(self._send_all(info.egress_id, queue), name=f"ioinfo {info.egress_id}",
                                       context=context_of(info.egress_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if is_ended(info):
            self._finals[info.egress_id] = info
        queue.put_nowait((method, info))

    def unsent(self) -> list[egress.EgressInfo]:
        """The final statuses not sent yet (after ``drain``: what livekit-server never heard)."""
        return list(self._finals.values())

    async def wait_created(self, egress_id: str, timeout: float) -> None:
        """Until the first report of ``egress_id`` has been answered (or ``timeout`` seconds)."""
        created = self._created.get(egress_id)
        if created is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(created.wait(), timeout)

    async def drain(self, timeout: float) -> None:
        """Give queued reports ``timeout`` seconds, then cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _send_all(self, egress_id: str, queue: asyncio.Queue[tuple[str, egress.EgressInfo]]) -> None:
        try:
            while True:
                method, info = await queue.get()
                await self._send(method, info)
                self._created[egress_id].set()
                if is_ended(info):
                    self._finals.pop(egress_id, None)
                    self._on_final(egress_id)
                    return
        finally:
            self._queues.pop(egress_id, None)
            self._created.pop(egress_id, None)

    async def _send(self, method: str, info: egress.EgressInfo) -> None:
        status = egress.EgressStatus.Name(info.status)
        loop = asyncio.get_running_loop()
        give_up, failures = loop.time() + RETRY_FOR, 0
        while True:
            try:
                await self._client.call(method, info.SerializeToString(), timeout=CALL_TIMEOUT)
                level = logging.INFO if failures else logging.DEBUG
                log.log(level, "egress %s: IOInfo.%s %s sent%s", info.egress_id, method, status,
                        f" after {failures} failed attempt(s)" if failures else "")
                return
            except Exception as exc:  # whatever it was, the report stays queued (a dead task would drop them all)
                until = retry_until(give_up, loop.time(), exc, self._redis_up())
                delay = _BACKOFF.delay(failures + 1)
                if until is None or loop.time() + delay > until:
                    log.error("egress %s: IOInfo.%s %s failed: %s", info.egress_id, method, status, exc)
                    return
                give_up, failures = until, failures + 1
                log.warning("egress %s: IOInfo.%s %s: %s; retrying in %.1fs", info.egress_id, method, status,
                            exc or type(exc).__name__, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def wake(self) -> None:
        """Redis is back: retry the reports waiting out a backoff now."""
        self._wake.set()
        self._wake = asyncio.Event()
