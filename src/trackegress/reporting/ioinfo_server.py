"""serve's ``IOInfo`` server: where workers report their egresses when ``trackegress serve`` dispatches to them.

Mirrors livekit-server's (pkg/service/ioservice.go): ``CreateEgress`` stores a new egress and sends
``egress_started`` (a repeat is ignored), ``UpdateEgress`` overwrites it and sends ``egress_updated`` (ACTIVE,
ENDING) or ``egress_ended``, ``GetEgress`` / ``ListEgress`` read the store. Every method is psrpc's claim +
queue kind, so exactly one IOInfo server on the Redis handles each request: serve refuses to start when
another one (livekit-server's, or another serve's) is already listening.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from livekit.protocol import egress

from trackegress.errors import NOT_FOUND
from trackegress.info import is_ended, request_webhooks
from trackegress.psrpc import wire as psrpc
from trackegress.psrpc.bus import Method, RedisBus, RPCServer
from trackegress.psrpc.wire import GetEgressRequest, PsrpcError, Request
from trackegress.reporting.store import Store
from trackegress.reporting.webhooks import WebhookSender

log = logging.getLogger(__name__)

Status = egress.EgressStatus
Listener = Callable[[egress.EgressInfo], None]


class IOInfoServer:
    """``await start()`` (checks that no other IOInfo server is on the Redis), ``await stop()``."""

    def __init__(self, bus: RedisBus, store: Store, webhooks: WebhookSender, on_update: Listener) -> None:
        self._bus = bus
        self._store = store
        self._webhooks = webhooks
        self._on_update = on_update
        self._server = RPCServer(bus, psrpc.IOINFO)
        self._write = asyncio.Lock()
        self._active: set[str] = set()
        self._methods = (
            Method("CreateEgress", psrpc.parser(egress.EgressInfo), self._create_egress, queue=True),
            Method("UpdateEgress", psrpc.parser(egress.EgressInfo), self._update_egress, queue=True),
            Method("GetEgress", GetEgressRequest.decode, self._get_egress, queue=True),
            Method("ListEgress", psrpc.parser(egress.ListEgressRequest), self._list_egress, queue=True),
        )

    @property
    def active_count(self) -> int:
        """Egresses stored as STARTING, ACTIVE or ENDING."""
        return len(self._active)

    async def start(self) -> None:
        channel = psrpc.request_channel(psrpc.IOINFO, "UpdateEgress")
        listening = dict(await self._bus.redis.pubsub_numsub(channel))
        if any(listening.values()):
            raise RuntimeError("another IOInfo server (livekit-server's or another trackegress serve's) uses this "
                               "Redis; trackegress serve needs a Redis of its own")
        self._active = {info.egress_id for info in await self._store.unfinished()}
        for method in self._methods:
            await self._server.register(method)

    async def stop(self) -> None:
        for method in self._methods:
            await self._server.unregister(method)

    async def create(self, info: egress.EgressInfo) -> None:
        """Store a new egress and send ``egress_started``; an egress already stored is left as it is."""
        async with self._write:
            if await self._store.get(info.egress_id) is not None:
                return
            await self._store.put(info)
        self._announce(info)

    async def update(self, info: egress.EgressInfo) -> None:
        """Store ``info`` as it is now; webhooks for every status but STARTING."""
        async with self._write:
            await self._store.put(info)
        if info.status != Status.EGRESS_STARTING:
            self._announce(info)

    def _announce(self, info: egress.EgressInfo) -> None:
        if is_ended(info):
            self._active.discard(info.egress_id)
        else:
            self._active.add(info.egress_id)
        self._webhooks.notify(info, request_webhooks(info))
        try:
            self._on_update(info)
        except Exception:
            log.exception("egress %s: update listener failed", info.egress_id)

    # psrpc handlers

    async def _create_egress(self, request: Request, info: egress.EgressInfo) -> bytes:
        await self.create(info)
        return b""  # google.protobuf.Empty

    async def _update_egress(self, request: Request, info: egress.EgressInfo) -> bytes:
        await self.update(info)
        log.debug("egress %s: %s reported", info.egress_id, Status.Name(info.status))
        return b""

    async def _get_egress(self, request: Request, get: GetEgressRequest) -> bytes:
        info = await self._store.get(get.egress_id)
        if info is None:
            raise PsrpcError(NOT_FOUND, "egress does not exist")
        return info.SerializeToString()

    async def _list_egress(self, request: Request, listing: egress.ListEgressRequest) -> bytes:
        if listing.egress_id:
            found = await self._store.get(listing.egress_id)
            if found is None:
                raise PsrpcError(NOT_FOUND, "egress does not exist")
            items = [found]
        else:
            items = await self._store.query(room_name=listing.room_name, active=listing.active)
        return egress.ListEgressResponse(items=items).SerializeToString()
