"""psrpc on Redis pub/sub with asyncio: the bus, a server (claims, queue lock) and a client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from trackegress.backoff import Backoff
from trackegress.errors import DEADLINE_EXCEEDED, INTERNAL, MALFORMED_REQUEST, UNKNOWN
from trackegress.psrpc import wire as psrpc
from trackegress.psrpc.wire import ClaimRequest, ClaimResponse, PsrpcError, Request, Response, SelectionOpts

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[None]]
T = TypeVar("T")
Reply = TypeVar("Reply", ClaimRequest, Response)  # what a client receives
_RECEIVE_BACKOFF = Backoff(0.1, cap=1.0)  # reading the Redis pub/sub connection again
_POLL = 1.0  # seconds one read of the pub/sub connection waits for a message
FIRST_AVAILABLE = SelectionOpts(accept_first_available=True)  # psrpc's choice for methods without affinity


class RedisBus:
    """One pub/sub connection for every subscription, messages dispatched to per-channel handlers.

    A queue subscription only hands a message on after winning psrpc's lock on it, so one subscriber in the
    whole cluster (Go or Python) handles it.

    When Redis goes away, redis-py reconnects the pub/sub connection and subscribes again to every channel;
    ``on_reconnect`` listeners then run (what was published meanwhile is lost, and a restarted Redis may have
    lost every key).
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pubsub = redis.pubsub()
        self._handlers: dict[str, tuple[Handler, bool]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._watched: AbstractConnection | None = None
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._last_read = 0.0  # loop time the reader last heard from Redis (a message or a quiet poll)
        self._lost = False  # the reader has seen the connection fail since it last worked

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up (False from the moment it fails until redis-py reconnects it)."""
        connection = self._pubsub.connection
        return connection is not None and connection.is_connected

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` each time the pub/sub connection is back after a loss, subscriptions restored."""
        self._reconnect_listeners.append(listener)

    async def subscribe(self, channel: str, handler: Handler, *, queue: bool = False) -> None:
        """Deliver ``channel``'s messages to ``handler(channel, payload)``; returns once Redis confirms."""
        self._handlers[channel] = (handler, queue)
        await self._pubsub.subscribe(channel)
        self._watch()
        if self._reader is None:
            self._last_read = asyncio.get_running_loop().time()
            self._reader = asyncio.create_task(self._read(), name="psrpc-bus")

    async def unsubscribe(self, *channels: str) -> None:
        for name in channels:
            self._handlers.pop(name, None)
        if channels:
            await self._pubsub.unsubscribe(*channels)

    async def publish(self, channel: str, payload: bytes) -> None:
        try:
            await self.redis.publish(channel, payload)
        except RuntimeError as exc:  # uvloop: writing to a transport the kernel closed (redis-py passes it on)
            raise RedisConnectionError(f"Redis connection lost: {exc}") from exc

    async def close(self) -> None:
        """Stop reading; in-flight handlers are cancelled."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` in the background, logged if it fails, cancelled by ``close()``."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _watch(self) -> None:
        """Hear about reconnects of the pub/sub connection (after redis-py's own callback has resubscribed)."""
        connection = self._pubsub.connection
        if connection is not None and connection is not self._watched:
            connection.register_connect_callback(self._reconnected)
            self._watched = connection

    async def _reconnected(self, connection: AbstractConnection) -> None:
        silent = asyncio.get_running_loop().time() - self._last_read
        self._lost = False
        log.warning("psrpc: reconnected to Redis at %s after %.1fs without it; %d subscriptions restored",
                    _address(connection), silent, len(self._handlers))
        for listener in self._reconnect_listeners:
            try:
                listener()
            except Exception:
                log.exception("psrpc: reconnect listener failed")

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("psrpc: %s failed", task.get_name(), exc_info=task.exception())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            try:
                message = await self._next_message(loop)
            except (RedisError, OSError) as exc:
                if not self._lost:
                    log.warning("psrpc: lost the Redis connection (%s); reconnecting", exc)
                self._lost = True
                failures += 1
                delay = _RECEIVE_BACKOFF.delay(failures)
                log.debug("psrpc: redis receive failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._last_read = loop.time()
            if message is None or message.get("type") != "message":
                continue
            name = message["channel"].decode(errors="replace")
            entry = self._handlers.get(name)
            if entry is not None:
                self.spawn(self._deliver(name, bytes(message["data"]), *entry), f"psrpc {name}")

    async def _next_message(self, loop: asyncio.AbstractEventLoop) -> dict[str, Any] | None:
        """The next message, or None after ``_POLL`` seconds without one.

        redis-py 8.1 reads the socket's own ETIMEDOUT (the kernel giving up on a dead peer) as its read timeout
        elapsing: ``get_message`` then returns None at once, forever, on a connection it still calls connected (a
        worker cut off from Redis spun at 100 % CPU there, its memory growing by 100 MB/s in re-raised tracebacks).
        A None that came without waiting is that: the connection is dropped and redis-py's reconnect takes over.
        """
        began = loop.time()
        message: dict[str, Any] | None = await self._pubsub.get_message(timeout=_POLL)
        if message is None and loop.time() - began < _POLL / 2:
            connection = self._pubsub.connection
            if connection is not None:
                await connection.disconnect(nowait=True)
            raise RedisConnectionError("the pub/sub connection failed without an error (timed out by the kernel)")
        return message

    async def _deliver(self, channel: str, payload: bytes, handler: Handler, queue: bool) -> None:
        if queue and not await self._lock(payload):
            return
        await handler(channel, payload)

    async def _lock(self, payload: bytes) -> bool:
        key = base64.b64encode(hashlib.sha256(payload).digest()).decode()
        return bool(await self.redis.set(key, secrets.randbits(63), nx=True, px=psrpc.LOCK_TTL_MS))


@dataclass(frozen=True)
class Method(Generic[T]):
    """One RPC a server serves: how to parse its request, handle it and (optionally) how much it wants it."""

    name: str
    decode: Callable[[bytes], T]
    handle: Callable[[Request, T], Awaitable[bytes]]
    affinity: Callable[[Request, T], Awaitable[float]] | None = None
    claim: bool = True
    queue: bool = False
    unclaimed: Callable[[Request], None] | None = None  # the request went to another server (or none was made)


class RPCServer:
    """The server side of one psrpc service: ``await register(method, topic)`` per method and topic."""

    def __init__(self, bus: RedisBus, service: str, server_id: str | None = None) -> None:
        self.bus = bus
        self.service = service
        self.server_id = server_id or psrpc.new_id("SRV_")
        self._claims: dict[str, asyncio.Future[ClaimResponse]] = {}
        self._methods: dict[str, tuple[Method[Any], str]] = {}

    async def register(self, method: Method[Any], topic: str = "") -> None:
        """Subscribe to the method's RCLAIM (if it claims) and then REQ channels."""
        if method.claim:
            await self.bus.subscribe(psrpc.claim_response_channel(self.service, method.name, topic), self._on_claim)
        req = psrpc.request_channel(self.service, method.name, topic)
        self._methods[req] = (method, topic)
        await self.bus.subscribe(req, self._on_request, queue=method.queue)

    async def unregister(self, method: Method[Any], topic: str = "") -> None:
        req = psrpc.request_channel(self.service, method.name, topic)
        self._methods.pop(req, None)
        channels = [req]
        if method.claim:
            channels.append(psrpc.claim_response_channel(self.service, method.name, topic))
        await self.bus.unsubscribe(*channels)

    async def _on_request(self, channel: str, payload: bytes) -> None:
        entry = self._methods.get(channel)
        if entry is None:
            return
        method = entry[0]
        request = _unwrap(channel, payload, Request)
        if request is None:
            return
        if time.time_ns() >= request.expiry:
            log.debug("psrpc: %s %s expired", channel, request.request_id)
            return
        try:
            body = method.decode(request.raw_request)
        except psrpc.MalformedMessage as exc:
            log.warning("psrpc: malformed %s request %s: %s", method.name, request.request_id, exc)
            await self._respond(request, error=PsrpcError(MALFORMED_REQUEST, str(exc)))
            return
        if method.claim and not await self._claim(method, request, body):
            if method.unclaimed is not None:
                method.unclaimed(request)
            return
        await self._serve(method, request, body)

    async def _claim(self, method: Method[Any], request: Request, body: Any) -> bool:
        # listen for the client's choice before the first await: a claim sent after another server has already
        # been chosen then learns at once that it lost, instead of waiting for the request to expire
        won: asyncio.Future[ClaimResponse] = asyncio.get_running_loop().create_future()
        self._claims[request.request_id] = won
        try:
            affinity = 1.0 if method.affinity is None else await method.affinity(request, body)
            if affinity < 0:
                return False
            claim = ClaimRequest(request.request_id, self.server_id, affinity)
            await self.bus.publish(psrpc.claim_request_channel(self.service, request.client_id), psrpc.wrap(claim))
            timeout = max(0.0, (request.expiry - time.time_ns()) / 1e9)
            response = await asyncio.wait_for(won, timeout)
        except TimeoutError:
            return False
        finally:
            self._claims.pop(request.request_id, None)
        return response.server_id == self.server_id

    async def _on_claim(self, channel: str, payload: bytes) -> None:
        response = _unwrap(channel, payload, ClaimResponse)
        if response is None:
            return
        waiter = self._claims.get(response.request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    async def _serve(self, method: Method[Any], request: Request, body: Any) -> None:
        try:
            raw = await method.handle(request, body)
        except PsrpcError as exc:
            await self._respond(request, error=exc)
        except Exception as exc:
            log.exception("psrpc: %s.%s failed", self.service, method.name)
            await self._respond(request, error=PsrpcError(INTERNAL, str(exc)))
        else:
            await self._respond(request, raw=raw)

    async def _respond(self, request: Request, raw: bytes = b"", error: PsrpcError | None = None) -> None:
        response = Response(
            request.request_id, self.server_id, time.time_ns(), raw_response=raw,
            error=error.message if error else "", code=error.code if error else "",
        )
        await self.bus.publish(psrpc.response_channel(self.service, request.client_id), psrpc.wrap(response))


class RPCClient:
    """The client side of one psrpc service; ``await start()`` before the first call."""

    def __init__(self, bus: RedisBus, service: str, client_id: str | None = None) -> None:
        self.bus = bus
        self.service = service
        self.client_id = client_id or psrpc.new_id("CLI_")
        self._claims: dict[str, asyncio.Queue[ClaimRequest]] = {}
        self._responses: dict[str, asyncio.Queue[Response]] = {}

    async def start(self) -> None:
        await self.bus.subscribe(psrpc.claim_request_channel(self.service, self.client_id), self._on_claim)
        await self.bus.subscribe(psrpc.response_channel(self.service, self.client_id), self._on_response)

    async def call(
        self, method: str, payload: bytes, *, topic: str = "", timeout: float = 3.0, claim: bool = True,
        selection: SelectionOpts = FIRST_AVAILABLE,
    ) -> bytes:
        """One unary RPC; returns the raw response, raises ``PsrpcError`` (``deadline_exceeded`` on timeout)."""
        request = self._request(payload, timeout, multi=False)
        claims: asyncio.Queue[ClaimRequest] = asyncio.Queue()
        responses: asyncio.Queue[Response] = asyncio.Queue()
        self._claims[request.request_id], self._responses[request.request_id] = claims, responses
        try:
            async with asyncio.timeout(timeout):
                await self.bus.publish(psrpc.request_channel(self.service, method, topic), psrpc.wrap(request))
                if claim:
                    server_id = await _select(claims, responses, selection)
                    chosen = ClaimResponse(request.request_id, server_id)
                    await self.bus.publish(psrpc.claim_response_channel(self.service, method, topic),
                                           psrpc.wrap(chosen))
                return _result(await responses.get())
        except TimeoutError:
            raise PsrpcError(DEADLINE_EXCEEDED, "request timed out") from None
        finally:
            self._claims.pop(request.request_id, None)
            self._responses.pop(request.request_id, None)

    async def multi(self, method: str, payload: bytes, *, topic: str = "", timeout: float = 1.0) -> list[bytes]:
        """A multi RPC: every server answers; returns the successful responses received within ``timeout``."""
        request = self._request(payload, timeout, multi=True)
        responses: asyncio.Queue[Response] = asyncio.Queue()
        self._responses[request.request_id] = responses
        results: list[bytes] = []
        try:
            await self.bus.publish(psrpc.request_channel(self.service, method, topic), psrpc.wrap(request))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while True:
                        response = await responses.get()
                        if not response.error:
                            results.append(response.raw_response)
        finally:
            self._responses.pop(request.request_id, None)
        return results

    def _request(self, payload: bytes, timeout: float, *, multi: bool) -> Request:
        now = time.time_ns()
        return Request(psrpc.new_id("REQ_"), self.client_id, now, now + int(timeout * 1e9), multi, payload)

    async def _on_claim(self, channel: str, payload: bytes) -> None:
        _deliver(channel, payload, ClaimRequest, self._claims)

    async def _on_response(self, channel: str, payload: bytes) -> None:
        _deliver(channel, payload, Response, self._responses)


def _address(connection: AbstractConnection) -> str:
    host, port = getattr(connection, "host", None), getattr(connection, "port", None)
    return f"{host}:{port}" if host is not None else "redis"


def _unwrap(channel: str, payload: bytes, expected: type[psrpc.M]) -> psrpc.M | None:
    """The ``expected`` message in a payload received on ``channel``; None (and a warning) if it is malformed."""
    try:
        return psrpc.unwrap(payload, expected)
    except psrpc.MalformedMessage as exc:
        log.warning("psrpc: ignored a malformed message on %s: %s", channel, exc)
        return None


def _deliver(channel: str, payload: bytes, expected: type[Reply], queues: dict[str, asyncio.Queue[Reply]]) -> None:
    """Queue a claim or response for the call waiting on its request id (dropped if none waits any more)."""
    message = _unwrap(channel, payload, expected)
    if message is not None and (queue := queues.get(message.request_id)) is not None:
        queue.put_nowait(message)


async def _select(
    claims: asyncio.Queue[ClaimRequest], responses: asyncio.Queue[Response], opts: SelectionOpts
) -> str:
    """psrpc's selection phase: claims until one wins outright or the affinity/short-circuit timer ends."""
    selection = psrpc.Selection(opts)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + opts.affinity_timeout
    while (left := deadline - loop.time()) > 0:
        try:
            claim = await asyncio.wait_for(claims.get(), left)
        except TimeoutError:
            break
        if (winner := selection.offer(claim)) is not None:
            return winner
        if selection.claims == 1 and opts.short_circuit_timeout > 0:
            deadline = min(deadline, loop.time() + opts.short_circuit_timeout)
    if not responses.empty():  # only a malformed-request error can arrive before a claim is answered
        _result(responses.get_nowait())
    return selection.best()


def _result(response: Response) -> bytes:
    if response.error:
        raise PsrpcError(response.code or UNKNOWN, response.error)
    return response.raw_response
