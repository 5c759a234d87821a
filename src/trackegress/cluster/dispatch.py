"""``trackegress serve`` with ``redis:``: the livekit.Egress API dispatched to ``trackegress worker`` processes.

The same psrpc calls livekit-server makes (pkg/service/egress.go): ``EgressInternal.StartEgress`` on topic
``cluster_id`` (workers claim by affinity), ``EgressHandler.StopEgress`` / ``UpdateStream`` on topic = egress id,
with livekit-server's fallback to the stored status when no worker answers. Workers report to serve's own
``IOInfo`` server (``reporting/ioinfo_server.py``), which keeps the store that ``ListEgress`` reads and sends the
webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from livekit.protocol import egress
from redis.exceptions import RedisError

from trackegress.backoff import Backoff
from trackegress.cluster.settings import ClusterSettings
from trackegress.config import ServiceConfig
from trackegress.errors import FAILED_PRECONDITION, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE, RequestError, twirp_code
from trackegress.info import new_egress_id
from trackegress.psrpc import wire as psrpc
from trackegress.psrpc.bus import RedisBus, RPCClient
from trackegress.psrpc.wire import PsrpcError, SelectionOpts, StartEgressRequest
from trackegress.reporting.ioinfo_server import IOInfoServer
from trackegress.reporting.store import Store
from trackegress.reporting.webhooks import WebhookSender
from trackegress.request import av_audio_track, check_track_request
from trackegress.roomservice import LiveKitRooms

log = logging.getLogger(__name__)

Status = egress.EgressStatus
START_SELECTION = SelectionOpts(maximum_affinity=1, affinity_timeout=1.0, short_circuit_timeout=0.5)  # livekit's
START_TIMEOUT = 8.0  # a worker answers once its CreateEgress is through (track check + CREATE_WAIT, about 6 s)
START_ATTEMPTS = 3  # as livekit-server: retried while no worker claims, backoff 1 s * 2^n * [1, 2)
_START_BACKOFF = Backoff(1.0, jitter=True)
HANDLER_TIMEOUT = 5.0  # a worker answers StopEgress within 2 s
_RETRYABLE = (UNAVAILABLE, RESOURCE_EXHAUSTED)


def request_error(exc: PsrpcError) -> RequestError:
    """The Twirp error for a psrpc one (``unknown`` for codes Twirp has no name for)."""
    return RequestError(twirp_code(exc.code), exc.message)


class ClusterDispatcher:
    """A ``Dispatcher`` whose egresses run on the workers of ``cluster_id``; ``await start()`` first."""

    def __init__(self, config: ServiceConfig, cluster_id: str, bus: RedisBus, io: IOInfoServer, store: Store,
                 rooms: LiveKitRooms) -> None:
        self._config = config
        self._cluster_id = cluster_id
        self._io = io
        self._store = store
        self._rooms = rooms
        self._internal = RPCClient(bus, psrpc.EGRESS_INTERNAL)
        self._handler = RPCClient(bus, psrpc.EGRESS_HANDLER)
        self._accepting = True

    @property
    def active_count(self) -> int:
        """Egresses not yet ended, cluster-wide."""
        return self._io.active_count

    @property
    def accepting(self) -> bool:
        return self._accepting

    def available(self) -> None:
        """Each worker knows its own room (its health and metrics ports say it), not serve."""
        return None

    async def start_clients(self) -> None:
        await self._internal.start()
        await self._handler.start()

    async def start(self, request: egress.TrackEgressRequest, egress_id: str | None = None, *,
                    source: egress.StartEgressRequest | None = None) -> egress.EgressInfo:
        """Validate, pick a worker by affinity, store the STARTING info it answers (``egress_started``). With
        ``source`` (the unified ``StartEgress`` that ``request`` was made from) that is what goes to the worker, as
        livekit-server sends it (``egress`` field)."""
        if not self._accepting:
            raise RequestError(UNAVAILABLE, "the egress service is shutting down")
        check_track_request(request, self._config.egress.local_dir)
        kind, message = ("track", request) if source is None else ("egress", source)
        room_id = await self._rooms.track_room_sid(request.room_name, request.track_id)  # the workers do not check
        audio_track = av_audio_track(source) if source is not None else None
        if audio_track is not None:
            await self._rooms.check_av_pair(request.room_name, request.track_id, audio_track)
        start = StartEgressRequest(egress_id or new_egress_id(), kind, message, room_id=room_id,
                                   room_name=request.room_name)
        info = egress.EgressInfo.FromString(await self._start(start))
        await self._io.create(info)  # livekit-server's launcher does the same; the worker's report may be first
        log.info("egress %s dispatched for track %s in room %s", info.egress_id, request.track_id, request.room_name)
        return info

    async def list(self, room_name: str = "", egress_id: str = "", active: bool = False, *, limit: int = 0,
                   after: tuple[int, str] | None = None) -> list[egress.EgressInfo]:
        return await self._store.query(room_name=room_name, egress_id=egress_id, active=active, limit=limit,
                                       after=after)

    async def stop(self, egress_id: str) -> egress.EgressInfo:
        """``StopEgress`` to the worker running ``egress_id``; its info once it has left ACTIVE."""
        stop = egress.StopEgressRequest(egress_id=egress_id)
        return await self._to_worker("StopEgress", egress_id, stop.SerializeToString(), "stopped")

    async def update_stream(self, egress_id: str) -> egress.EgressInfo:
        update = egress.UpdateStreamRequest(egress_id=egress_id)
        return await self._to_worker("UpdateStream", egress_id, update.SerializeToString(), "updated")

    async def close(self) -> None:
        """Stop accepting; the egresses keep running on their workers."""
        self._accepting = False

    async def _start(self, start: StartEgressRequest) -> bytes:
        payload, attempt = start.encode(), 1
        while True:
            call = self._internal.call("StartEgress", payload, topic=self._cluster_id, timeout=START_TIMEOUT,
                                       selection=START_SELECTION)
            try:
                return await _call(call)
            except PsrpcError as exc:
                if exc.code not in _RETRYABLE or attempt == START_ATTEMPTS:
                    raise request_error(exc) from None
                delay = _START_BACKOFF.delay(attempt)
                log.info("egress %s: StartEgress: %s; retrying in %.1fs", start.egress_id, exc.message, delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def _to_worker(self, method: str, egress_id: str, payload: bytes, verb: str) -> egress.EgressInfo:
        """One EgressHandler call; without an answer, livekit-server's fallback to the stored status."""
        try:
            raw = await _call(self._handler.call(method, payload, topic=egress_id, timeout=HANDLER_TIMEOUT))
        except PsrpcError as exc:
            info = await self._store.get(egress_id)
            if info is None:
                raise RequestError(NOT_FOUND, "egress does not exist") from None
            if info.status in (Status.EGRESS_STARTING, Status.EGRESS_ACTIVE):
                raise request_error(exc) from None
            raise RequestError(FAILED_PRECONDITION,
                               f"egress with status {Status.Name(info.status)} cannot be {verb}") from None
        return egress.EgressInfo.FromString(raw)


async def _call(call: Awaitable[bytes]) -> bytes:
    """``await call``; Redis failures become ``PsrpcError`` unavailable."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        raise PsrpcError(UNAVAILABLE, f"Redis unreachable: {type(exc).__name__}") from None


async def open_cluster(
    stack: contextlib.AsyncExitStack, config: ServiceConfig, settings: ClusterSettings, store: Store,
    rooms: LiveKitRooms, webhooks: WebhookSender, on_update: Callable[[egress.EgressInfo], None],
) -> ClusterDispatcher:
    """Connect to Redis, serve IOInfo and return the dispatcher; ``stack`` closes them. ``RuntimeError`` if not."""
    redis = settings.redis.connect()
    stack.push_async_callback(redis.aclose)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise RuntimeError(f"cannot reach Redis at {settings.redis.host}:{settings.redis.port}: {exc}") from None
    bus = RedisBus(redis)
    stack.push_async_callback(bus.close)
    io = IOInfoServer(bus, store, webhooks, on_update)
    await io.start()
    stack.push_async_callback(io.stop)
    dispatcher = ClusterDispatcher(config, settings.cluster_id, bus, io, store, rooms)
    await dispatcher.start_clients()
    log.info("dispatching to the workers of cluster_id %r on Redis %s:%d", settings.cluster_id, settings.redis.host,
             settings.redis.port)
    return dispatcher
