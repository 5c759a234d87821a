"""Webhooks in livekit-server's format: ``livekit.WebhookEvent`` as protobuf JSON, signed like LiveKit's.

``Content-Type: application/webhook+json``; ``Authorization`` is a JWT issued by the API key whose ``sha256``
claim is the base64 SHA-256 of the body, so ``livekit.api.WebhookReceiver`` verifies it. Each URL has its
own queue and worker: events reach a receiver in order, failures are retried with backoff, and nothing
here ever waits on a receiver in the caller's path.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import logging
import time
from collections.abc import Callable, Iterable

import aiohttp
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol import egress, models, webhook

from trackegress.backoff import Backoff
from trackegress.info import is_ended, new_egress_id
from trackegress.logs import context_of
from trackegress.redact import redact_url

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/webhook+json"
_TOKEN_TTL = datetime.timedelta(minutes=5)


def event_name(info: egress.EgressInfo) -> str:
    """``egress_started`` (STARTING), ``egress_updated`` (ACTIVE, ENDING) or ``egress_ended``."""
    if is_ended(info):
        return "egress_ended"
    if info.status == egress.EgressStatus.EGRESS_STARTING:
        return "egress_started"
    return "egress_updated"


def build_event(info: egress.EgressInfo) -> webhook.WebhookEvent:
    """The event livekit-server would send for this egress info."""
    return webhook.WebhookEvent(
        event=event_name(info),
        egress_info=info,
        id="EV_" + new_egress_id().removeprefix("EG_"),
        created_at=int(time.time()),
    )


def allows(params: models.FilterParams, event: str) -> bool:
    """upstream's webhook filter: ``include_events`` wins over ``exclude_events``; neither set allows all."""
    if params.include_events:
        return event in params.include_events
    return event not in params.exclude_events


def sign(body: bytes, api_key: str, api_secret: str) -> str:
    """The ``Authorization`` value for ``body``: a JWT carrying its SHA-256."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return api.AccessToken(api_key, api_secret).with_sha256(digest).with_ttl(_TOKEN_TTL).to_jwt()


class WebhookSender:
    """Delivers events to the configured URLs plus any per-call ones; ``close()`` drains briefly."""

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        urls: Iterable[str] = (),
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        timeout: float = 5.0,
        queue_size: int = 200,
        on_drop: Callable[[], None] = lambda: None,
    ) -> None:
        self._key, self._secret = api_key, api_secret
        self._on_drop = on_drop  # an event given up (undeliverable, failed, or pushed out of a full queue)
        self._urls = tuple(urls)
        self._attempts, self._backoff = attempts, Backoff(backoff)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._queue_size = queue_size
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def notify(self, info: egress.EgressInfo, request_hooks: Iterable[models.WebhookConfig] = ()) -> None:
        """Queue the event for ``info`` to the configured URLs and the request's own webhooks its filter allows.

        Never blocks; a full queue drops its oldest event.
        """
        event = build_event(info)
        allowed = (hook.url for hook in request_hooks if allows(hook.filter_params, event.event))
        urls = dict.fromkeys((*self._urls, *allowed))
        if not urls:
            return
        body = MessageToJson(event, indent=None).encode()
        for url in urls:
            self._enqueue(url, body)

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Give queued events ``drain_timeout`` seconds, then cancel the rest."""
        if self._workers:
            _, pending = await asyncio.wait(set(self._workers), timeout=drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _enqueue(self, url: str, body: bytes) -> None:
        queue = self._queues.get(url)
        if queue is None:
            queue = self._queues[url] = asyncio.Queue(self._queue_size)
            task = asyncio.create_task(self._work(url, queue), name=f"webhook {redact_url(url)}",
                                       context=context_of(""))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        if queue.full():
            queue.get_nowait()
            self._on_drop()
            log.warning("webhook %s: queue full, oldest event dropped", redact_url(url))
        queue.put_nowait(body)

    async def _work(self, url: str, queue: asyncio.Queue[bytes]) -> None:
        """Send the queue's events in order; the worker ends (and is forgotten) once the queue is empty. An event
        whose delivery raises is logged and dropped; the worker goes on with the next."""
        try:
            while not queue.empty():
                try:
                    await self._deliver(url, queue.get_nowait())
                except Exception as exc:
                    self._on_drop()
                    log.error("webhook %s: delivery failed (%s); event dropped", redact_url(url),
                              _describe(exc).replace(url, redact_url(url)))
        finally:
            del self._queues[url]

    async def _deliver(self, url: str, body: bytes) -> None:
        for attempt in range(1, self._attempts + 1):
            problem = await self._post(url, body)
            if problem is None:
                return
            if attempt < self._attempts:
                delay = self._backoff.delay(attempt)
                log.info("webhook %s: %s; retry %d in %.1fs", redact_url(url), problem, attempt, delay)
                await asyncio.sleep(delay)
            else:
                self._on_drop()
                log.warning("webhook %s: %s; event dropped after %d attempts", redact_url(url), problem, attempt)

    async def _post(self, url: str, body: bytes) -> str | None:
        """None on a 2xx answer, else what went wrong."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Content-Type": CONTENT_TYPE, "Authorization": sign(body, self._key, self._secret)}
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _describe(exc).replace(url, redact_url(url))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
