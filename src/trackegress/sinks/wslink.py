"""The WebSocket link a PCM stream rides on: it dials the receiver, writes queued messages (dropping the oldest audio
past its buffer), confirms delivery with pings, redials a lost connection with backoff, and fails once nothing was
delivered for its deadline.

"Delivered" means the receiver read it: PCM counts as delivered once a ping written after it is answered
(pongs come back in stream order, after the receiver's WebSocket layer has read everything before them), or
once the receiver completes the close handshake. Bytes handed to the kernel are only written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from urllib.parse import urlsplit

from livekit.protocol import egress
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.speedups import apply_mask
from websockets.uri import parse_uri

from trackegress.backoff import Backoff
from trackegress.redact import redact_url

log = logging.getLogger(__name__)


class _NoHeaders(logging.Filter):
    """Drops websockets' debug lines of the handshake's headers (``> Authorization: ...``): ours carry secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in ("> %s: %s", "< %s: %s")


_wire_log = logging.getLogger(f"{__name__}.wire")  # the websockets connection's own lines, headers left out
_wire_log.addFilter(_NoHeaders())

CONTENT_TYPE = "audio/x-raw"
WRITE_BATCH = 16  # messages per transport write: ~30 KB, about websockets' default write limit (32 KiB)
REDIAL = Backoff(0.1, cap=2.0)  # at once, then 0.1 s doubling to 2 s
ACK_INTERVAL = 0.25  # seconds between the pings that confirm delivery
ACTIVE = egress.StreamInfo.ACTIVE
FINISHED = egress.StreamInfo.FINISHED
FAILED = egress.StreamInfo.FAILED

Message = bytes | str  # bytes: audio; str: a text frame


class WebSocketSinkError(Exception):
    """The receiver could not be reached at start, read nothing for longer than the reconnect deadline, or
    did not read the end of the stream."""


def validate_websocket_url(url: str) -> None:
    """ValueError ``invalid url <url>: invalid scheme`` unless ``url`` is a usable ws:// or wss:// URL."""
    redacted = redact_url(url)
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise ValueError(f"invalid url {redacted}: {exc}") from None
    if scheme not in ("ws", "wss"):
        raise ValueError(f"invalid url {redacted}: invalid scheme")
    try:
        parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(f"invalid url {redacted}: {exc.msg}") from None


class _MaskKeys:
    """Fresh masking keys for client frames (RFC 6455 §5.3: unpredictable, from a strong source), drawn from
    ``os.urandom`` 1024 at a time instead of one ``getrandom`` syscall per frame as websockets does."""

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        if self._next == len(self._pool):
            self._pool, self._next = os.urandom(4096), 0
        self._next += 4
        return self._pool[self._next - 4 : self._next]


_mask_keys = _MaskKeys()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented, masked client frame (RFC 6455 §5.2) for a payload under 64 KiB; what websockets'
    protocol would write for ``send()`` with no extensions (we never negotiate any)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126, size >> 8, size & 0xFF))
    mask = _mask_keys.take()
    return head + mask + apply_mask(payload, mask)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__



class WebSocketLink:
    """One receiver's connection, kept up while the stream runs (see the module docstring).

    ``open()`` dials once and raises ``WebSocketSinkError`` if that fails. Messages are queued with ``enqueue`` and
    written by ``send`` (or the sender task, when the connection is down or its buffer full); up to ``max_queued``
    audio messages wait (oldest dropped beyond). When nothing has been delivered for ``reconnect_deadline`` seconds
    while audio waits, the link is FAILED: ``on_fail`` is called and ``failed`` resolves with the error.
    ``resend``: a text frame that, when it was the last one written, goes first on a new connection.
    ``on_delay`` gets, for every audio message written, the seconds since it was ready.
    ``headers`` gives the extra handshake headers of each dial (never logged).
    """

    def __init__(
        self,
        url: str,
        *,
        message_size: int,
        reconnect_deadline: float,
        max_queued: int,
        ping: tuple[float | None, float | None],
        open_timeout: float,
        close_timeout: float,
        resend: str | None = None,
        headers: Callable[[], Mapping[str, str]] | None = None,
        on_fail: Callable[[WebSocketSinkError], None] | None = None,
        on_delay: Callable[[float], None] | None = None,
    ) -> None:
        self.url = url
        self.redacted_url = redact_url(url)
        self.message_size = message_size
        self._reconnect_deadline = reconnect_deadline
        self._max_queued = max_queued
        self._ping = ping
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._resend = resend
        self._headers = headers
        self._on_fail = on_fail
        self._on_delay = on_delay
        self._queue: collections.deque[Message] = collections.deque()
        self.queued_audio = 0
        self._ready_at: collections.deque[float] = collections.deque()  # per queued audio message
        self._wakeup = asyncio.Event()
        self._conn: ClientConnection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._failed: asyncio.Future[WebSocketSinkError] | None = None
        self._closing = False
        self._last_text_resent = False  # the last text frame written was ``resend``
        self._overflowing = False
        self.status: egress.StreamInfo.Status = ACTIVE
        self.error = ""
        self.ended_at = self.last_retry_at = 0
        self.bytes_written = self.messages_sent = self.frames_lost = 0  # bytes_written: to a transport
        self._conn_written = self._conn_acked = 0  # PCM bytes written to / confirmed on the current connection
        self._delivered_before = 0  # PCM bytes confirmed on earlier connections
        self._progress_at = 0.0  # monotonic: last time delivery advanced (or nothing was waiting)
        self._last_problem = "receiver not reading"
        self._redials = 0  # redials in this outage: the next one's delay (REDIAL); reset once delivery advances
        self.reconnects = self.retries = 0

    @property
    def started(self) -> bool:
        return self._sender is not None

    @property
    def bytes_delivered(self) -> int:
        """PCM bytes the receiver confirmed reading (see the module docstring)."""
        return self._delivered_before + self._conn_acked

    @property
    def failed(self) -> asyncio.Future[WebSocketSinkError]:
        """Resolves (with the error as its result, never raising) when the link fails after open()."""
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return self._failed

    async def open(self) -> None:
        """Dial the receiver (once); raises ``WebSocketSinkError`` if it is unreachable."""
        try:
            conn = await self._dial(self._open_timeout)
        except Exception as exc:
            error = WebSocketSinkError(f"failed to connect to websocket {self.redacted_url}: {self._why(exc)}")
            self._set_ended(FAILED, str(error))
            raise error from exc
        log.info("websocket %s connected", self.redacted_url)
        self._progress_at = time.monotonic()
        self._attach(conn)
        self._sender = self._spawn(self._send_loop(), "sender")

    async def close(self) -> None:
        """Deliver the queue (reconnecting if needed), then close with 1000; FINISHED unless it failed."""
        self._closing = True
        self._wakeup.set()
        if self._sender is not None:
            await self._drain_sender()
        await self._close_connection()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.status == ACTIVE:
            self._set_ended(FINISHED, "")

    # the queue

    def enqueue_all(self, messages: list[bytes], ready_at: float) -> None:
        for message in messages:
            self.enqueue(message, ready_at)

    def enqueue(self, message: Message, ready_at: float = 0.0) -> None:
        self._queue.append(message)
        if isinstance(message, bytes):
            self._ready_at.append(ready_at)
            self.queued_audio += 1
            if self.queued_audio > self._max_queued:
                self._drop_oldest_audio()

    def _drop_oldest_audio(self) -> None:
        """Drop the oldest queued audio message, keeping any text frames ahead of it."""
        texts: list[Message] = []
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, bytes):
                self.queued_audio -= 1
                self._ready_at.popleft()
                break
            texts.append(item)
        self._queue.extendleft(reversed(texts))
        if not self._overflowing:
            log.warning("websocket %s: buffer full (%d messages), dropping the oldest audio", self.redacted_url,
                        self._max_queued)
        self._overflowing = True
        self._lose(1, "buffer overflow")

    def _lose(self, count: int, why: str) -> None:
        self.frames_lost += count
        log.debug("websocket %s: lost %d frame(s) (%s), %d in total", self.redacted_url, count, why, self.frames_lost)

    def check_progress(self, now: float) -> None:
        """FAILED once audio has waited ``reconnect_deadline`` seconds on an open connection without any of it
        being confirmed (a receiver that does not read); the reconnect loop enforces the same budget when down."""
        conn = self._conn
        waiting = self.queued_audio > 0 or self._conn_written > self._conn_acked
        if not waiting:
            self._progress_at = now
        elif conn is not None and conn.state is State.OPEN and now - self._progress_at > self._reconnect_deadline:
            self.fail(
                f"websocket {self.redacted_url}: nothing delivered for {self._reconnect_deadline:g}s: "
                f"{self._last_problem}"
            )

    # connection

    def _dial(self, timeout: float) -> connect:
        ping_interval, ping_timeout = self._ping
        return connect(
            self.url,
            additional_headers={"Content-Type": CONTENT_TYPE, **(self._headers() if self._headers else {})},
            compression=None,
            open_timeout=timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=self._close_timeout,
            logger=_wire_log,
        )

    def _attach(self, conn: ClientConnection) -> None:
        self._conn = conn
        self._conn_written = self._conn_acked = 0
        self._last_problem = "receiver not reading"
        self._spawn(self._read_loop(conn), "reader")
        self._spawn(self._ack_loop(conn), "acker")

    async def _ack_loop(self, conn: ClientConnection) -> None:
        """Every ACK_INTERVAL, while PCM waits for confirmation, a ping: its pong confirms all PCM before it."""
        with contextlib.suppress(ConnectionClosed):
            while conn.state is State.OPEN:
                await asyncio.sleep(ACK_INTERVAL)
                mark = self._conn_written
                if self._conn is not conn or mark <= self._conn_acked:
                    continue
                pong = await conn.ping()
                await pong
                self._confirmed(conn, mark)

    def _confirmed(self, conn: ClientConnection, mark: int) -> None:
        """The receiver has read the first ``mark`` PCM bytes written to ``conn``."""
        if self.status == ACTIVE and self._conn is conn and mark > self._conn_acked:
            self._conn_acked = mark
            self._progress_at = time.monotonic()
            self._redials = 0

    def _detach_lost(self) -> None:
        """The current connection is gone: what it did not confirm is lost."""
        unconfirmed = self._conn_written - self._conn_acked
        if unconfirmed > 0:
            self._lose(-(-unconfirmed // self.message_size), "unconfirmed on a lost connection")
        self._delivered_before += self._conn_acked
        self._conn_written = self._conn_acked = 0

    async def _read_loop(self, conn: ClientConnection) -> None:
        """Discard what the receiver sends (so pings keep being answered) until the connection ends."""
        try:
            async for _ in conn:
                pass
        except ConnectionClosed:
            pass
        finally:
            self._wakeup.set()

    async def _send_loop(self) -> None:
        """Reconnects, waits out backpressure and flushes on close; PCM normally leaves from ``_send_queued``."""
        while self.status == ACTIVE:
            if self._closing and not self._queue:
                return
            conn = self._conn
            if conn is None or conn.state is not State.OPEN:
                if not await self._reconnect():
                    return
            elif conn.paused:
                with contextlib.suppress(OSError):  # lost meanwhile: the next turn sees it closed
                    await conn.drain()
            elif self._queue:
                self._write_queued(conn)
            else:
                self._wakeup.clear()
                await self._wakeup.wait()

    def send(self) -> None:
        """Write the queue now if the connection is open and its write buffer has room, else wake the sender."""
        conn = self._conn
        if conn is not None and conn.state is State.OPEN and not conn.paused:
            self._write_queued(conn)
        elif self._queue:
            self._wakeup.set()

    def _write_queued(self, conn: ClientConnection) -> None:
        """Write queued messages, up to WRITE_BATCH of them at once (one ``send()`` syscall), until the queue is
        empty or the transport's buffer is over its high-water mark."""
        queue = self._queue
        while queue and not conn.paused:
            frames: list[bytes] = []
            audio = size = 0
            for _ in range(min(len(queue), WRITE_BATCH)):
                item = queue.popleft()
                if isinstance(item, str):
                    frames.append(client_frame(Opcode.TEXT, item.encode()))
                    self._last_text_resent = item == self._resend
                else:
                    frames.append(client_frame(Opcode.BINARY, item))
                    audio += 1
                    size += len(item)
            conn.transport.write(b"".join(frames))
            self._sent(audio, size)

    def _sent(self, messages: int, size: int) -> None:
        """Account for ``messages`` PCM messages (``size`` bytes) just handed to a live connection."""
        if not messages:
            return
        self.queued_audio -= messages
        self.bytes_written += size
        self._conn_written += size
        self.messages_sent += messages
        self._overflowing = False
        ready = self._ready_at
        if self._on_delay is None:
            for _ in range(messages):
                ready.popleft()
            return
        now = time.monotonic()
        for _ in range(messages):
            self._on_delay(now - ready.popleft())

    async def _reconnect(self) -> bool:
        """Redial with exponential backoff until the budget (``reconnect_deadline`` since delivery last advanced,
        not since this outage began: a connection that confirmed nothing does not reset it) is spent; False (and
        FAILED) if it is."""
        last_error = self._close_description()
        if self._conn is not None:
            self._detach_lost()
        self._last_problem = last_error
        deadline = self._progress_at + self._reconnect_deadline
        log.warning("websocket %s: %s; reconnecting (deadline %gs)", self.redacted_url, last_error,
                    self._reconnect_deadline)
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(REDIAL.delay(self._redials), remaining))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._redials += 1
            self.retries += 1
            self.last_retry_at = time.time_ns()
            try:
                conn = await self._dial(min(self._open_timeout, remaining))
            except Exception as exc:
                last_error = self._why(exc)
                log.warning("websocket %s: reconnect attempt %d failed: %s", self.redacted_url, self.retries,
                            last_error)
                continue
            self.reconnects += 1
            log.warning("websocket %s: reconnected (%d so far); sending %d buffered messages, %d frames lost so far",
                        self.redacted_url, self.reconnects, self.queued_audio, self.frames_lost)
            self._attach(conn)
            if self._last_text_resent and self._resend is not None:
                self._queue.appendleft(self._resend)  # the new connection starts knowing what the last one was told
            return True
        self.fail(
            f"websocket {self.redacted_url} unreachable for {self._reconnect_deadline:g}s: {last_error}"
            if not self.reconnects else
            f"websocket {self.redacted_url}: nothing delivered for {self._reconnect_deadline:g}s "
            f"({self.reconnects} reconnects, the last {self._last_problem}): {last_error}"
        )
        return False

    def _close_description(self) -> str:
        conn = self._conn
        if conn is None:
            return "connection lost"
        received, sent = conn.protocol.close_rcvd, conn.protocol.close_sent
        if received is not None:
            return f"connection closed by the receiver with code {received.code}"
        if sent is not None:
            reason = f" ({sent.reason})" if sent.reason else ""
            return f"connection closed with code {sent.code}{reason}"
        return "connection lost"

    def _why(self, exc: BaseException) -> str:
        return _describe(exc).replace(self.url, self.redacted_url)

    async def _drain_sender(self) -> None:
        assert self._sender is not None
        budget = max(0.0, self._progress_at + self._reconnect_deadline - time.monotonic()) + self._close_timeout
        done, _ = await asyncio.wait({self._sender}, timeout=budget)
        if not done:
            self._sender.cancel()
            self.fail(f"websocket {self.redacted_url}: could not deliver buffered audio before closing")

    async def _close_connection(self) -> None:
        """Close with 1000; a receiver that does not answer the close did not read the end of the stream."""
        conn = self._conn
        if conn is None:
            return
        if self.status != ACTIVE or conn.state is not State.OPEN:
            conn.transport.abort()
            self._detach_lost()
            self._conn = None
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.close(code=1000), self._close_timeout)
        if conn.protocol.close_rcvd is not None and conn.protocol.close_sent is not None:
            self._confirmed(conn, self._conn_written)  # it read our close frame, so all PCM before it
        else:
            conn.transport.abort()
            self.fail(
                f"websocket {self.redacted_url}: the receiver did not read the end of the stream "
                f"(no close handshake within {self._close_timeout:g}s)"
            )
        self._detach_lost()
        self._conn = None

    # failure and tasks

    def fail(self, message: str) -> None:
        if self.status != ACTIVE:
            return
        if self.queued_audio:
            self._lose(self.queued_audio, "undeliverable")
        if self._conn is not None:
            self._detach_lost()
            self._conn.transport.abort()  # wakes a sender waiting for a receiver that does not read
        self._queue.clear()
        self.queued_audio = 0
        self._set_ended(FAILED, message)
        log.error("websocket sink failed: %s (%d bytes delivered)", message, self.bytes_delivered)
        error = WebSocketSinkError(message)
        if not self.failed.done():
            self.failed.set_result(error)
        if self._on_fail is not None:
            try:
                self._on_fail(error)
            except Exception:
                log.exception("websocket %s: on_error callback failed", self.redacted_url)

    def _set_ended(self, status: egress.StreamInfo.Status, error: str) -> None:
        self.status, self.error = status, error
        self.ended_at = time.time_ns()

    def _spawn(self, coro: Coroutine[None, None, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"websocket-sink-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.crashed(task.get_name(), exc)

    def crashed(self, what: str, exc: BaseException) -> None:
        log.error("websocket %s: %s crashed", self.redacted_url, what, exc_info=exc)
        with contextlib.suppress(Exception):
            self.fail(f"websocket {self.redacted_url}: internal error: {exc}")
