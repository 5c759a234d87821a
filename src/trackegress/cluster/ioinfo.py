"""IOInfo client: every EgressInfo change goes to livekit-server, which stores it and sends the webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from livekit.protocol import egress
from redis.exceptions import RedisError

from trackegress.cluster import psrpc
from trackegress.cluster.bus import RPCClient
from trackegress.egress import is_ended

log = logging.getLogger(__name__)

SERVICE = "IOInfo"
CALL_TIMEOUT = 5.0
RETRY_FOR = 60.0  # seconds an update is retried while livekit-server does not answer (upstream: 1 min)
_RETRYABLE = (psrpc.DEADLINE_EXCEEDED, psrpc.UNAVAILABLE)


class IOInfoReporter:
    """``report(info)`` queues an update; each egress's updates go out in order, retried on timeouts.

    STARTING becomes ``CreateEgress`` (livekit-server's ``egress_started``), anything else ``UpdateEgress``
    (``egress_updated`` / ``egress_ended``). ``on_final(egress_id)`` runs once the final status is sent.
    """

    def __init__(self, client: RPCClient, on_final: Callable[[str], None] = lambda egress_id: None) -> None:
        self._client = client
        self._on_final = on_final
        self._queues: dict[str, asyncio.Queue[egress.EgressInfo]] = {}
        self._created: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def report(self, info: egress.EgressInfo) -> None:
        """Queue ``info`` (never blocks)."""
        queue = self._queues.get(info.egress_id)
        if queue is None:
            queue = self._queues[info.egress_id] = asyncio.Queue()
            self._created[info.egress_id] = asyncio.Event()
            task = asyncio.create_task(self._send_all(info.egress_id, queue), name=f"ioinfo {info.egress_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.put_nowait(info)

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

    async def _send_all(self, egress_id: str, queue: asyncio.Queue[egress.EgressInfo]) -> None:
        try:
            while True:
                info = await queue.get()
                await self._send(info)
                self._created[egress_id].set()
                if is_ended(info):
                    self._on_final(egress_id)
                    return
        finally:
            self._queues.pop(egress_id, None)
            self._created.pop(egress_id, None)

    async def _send(self, info: egress.EgressInfo) -> None:
        method = "CreateEgress" if info.status == egress.EgressStatus.EGRESS_STARTING else "UpdateEgress"
        status = egress.EgressStatus.Name(info.status)
        loop = asyncio.get_running_loop()
        give_up, delay = loop.time() + RETRY_FOR, 0.5
        while True:
            try:
                await self._client.call(method, info.SerializeToString(), timeout=CALL_TIMEOUT)
                log.debug("egress %s: IOInfo.%s %s sent", info.egress_id, method, status)
                return
            except (psrpc.PsrpcError, RedisError, OSError) as exc:
                retryable = not isinstance(exc, psrpc.PsrpcError) or exc.code in _RETRYABLE
                if not retryable or loop.time() + delay > give_up:
                    log.error("egress %s: IOInfo.%s %s failed: %s", info.egress_id, method, status, exc)
                    return
                log.warning("egress %s: IOInfo.%s %s: %s; retrying in %.1fs", info.egress_id, method, status, exc,
                            delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)
