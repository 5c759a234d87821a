"""WebSocket output: the track's Opus decoded to live s16le PCM, one 10 ms binary message at a time.

Wire format as upstream (``Content-Type: audio/x-raw``; 48 kHz stereo, 1920-byte messages;
``{"muted":bool}`` text frames), minus its bugs: pings are echoed (websockets does it), PCM leaves as
soon as it is decoded, the close is a normal 1000, and a dropped receiver is redialled with backoff
while audio is buffered, instead of failing the egress.

"Delivered" means the receiver read it: PCM counts as delivered once a ping written after it is answered
(pongs come back in stream order, after the receiver's WebSocket layer has read everything before them), or
once the receiver completes the close handshake. Bytes handed to the kernel are only written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from urllib.parse import urlsplit

from livekit.protocol import egress
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.speedups import apply_mask
from websockets.uri import parse_uri

from trackegress.backoff import Backoff
from trackegress.media import g711
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.redact import redact_url
from trackegress.sinks.pcm import CHUNK_SAMPLES, ClockStats, PcmClock, PcmConverter

log = logging.getLogger(__name__)

CONTENT_TYPE = "audio/x-raw"
MUTED = '{"muted":true}'
UNMUTED = '{"muted":false}'
MESSAGES_PER_SECOND = 100  # 10 ms each
WRITE_BATCH = 16  # messages per transport write: ~30 KB, about websockets' default write limit (32 KiB)
REDIAL = Backoff(0.1, cap=2.0)  # at once, then 0.1 s doubling to 2 s
TICK_MIN = 0.002
TICK_MAX = 0.05
ACK_INTERVAL = 0.25  # seconds between the pings that confirm delivery
ACTIVE = egress.StreamInfo.ACTIVE
FINISHED = egress.StreamInfo.FINISHED
FAILED = egress.StreamInfo.FAILED

Message = bytes | str


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


@dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters of one WebSocket sink (messages are 10 ms of audio)."""

    bytes_sent: int
    bytes_written: int
    messages_sent: int
    frames_lost: int
    reconnects: int
    retries: int
    queued: int
    decode_errors: int
    clock: ClockStats


class WebSocketSink:
    """Streams one audio track (Opus, or G.711 ``codec``) as live PCM to a WebSocket receiver (see the module
    docstring).

    ``start()`` dials once and raises ``WebSocketSinkError`` if that fails. After that a lost
    connection is redialled (immediately, then 0.1 s doubling to 2 s) while up to ``max_buffer`` seconds
    of audio are kept (oldest dropped beyond). ``reconnect_deadline`` is a total budget: when nothing has
    been delivered for that long while audio waits (receiver gone, or connected but not reading, or
    every new connection failing at once), the sink is FAILED: ``on_error`` is called and ``failed``
    resolves with the error. A close handshake the receiver does not complete also fails the sink.
    ``sample_rate``/``channels`` select an opt-in output format (default 48000/2).
    ``on_delay`` gets, for every PCM message sent, the seconds since its audio arrived (or was due).
    ``catch_up`` delivers (``write``) frames already received but not yet handed over: called before silence
    fills in for late media, as an event loop that ran late may run this timer before the frames' I/O.
    """

    def __init__(
        self,
        url: str,
        *,
        codec: Codec = Codec.OPUS,
        sample_rate: int = 48_000,
        channels: int = 2,
        reconnect_deadline: float = 30.0,
        max_buffer: float = 30.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        late_allowance: float = 0.060,
        stall_timeout: float = 0.5,
        on_error: Callable[[WebSocketSinkError], None] | None = None,
        on_delay: Callable[[float], None] | None = None,
        catch_up: Callable[[], None] | None = None,
    ) -> None:
        validate_websocket_url(url)
        self.url = url
        self.redacted_url = redact_url(url)
        self._converter = PcmConverter(sample_rate, channels)
        self._g711 = None if codec is Codec.OPUS else g711.G711Decoder(codec.name.lower())
        self._ticks = 1 if codec is Codec.OPUS else g711.RATIO  # 48 kHz timeline units per RTP timestamp unit
        self._clock = PcmClock(late_allowance=late_allowance)
        self._reconnect_deadline = reconnect_deadline
        self._max_queued = max(1, round(max_buffer * MESSAGES_PER_SECOND))
        self._ping = (ping_interval, ping_timeout)
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._stall_timeout = stall_timeout
        self._on_error = on_error
        self._on_delay = on_delay
        self._catch_up = catch_up
        self._queue: collections.deque[Message] = collections.deque()
        self._queued_audio = 0
        self._ready_at: collections.deque[float] = collections.deque()  # per queued audio message
        self._wakeup = asyncio.Event()
        self._conn: ClientConnection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._ticker: asyncio.TimerHandle | None = None  # the real-time clock's next check
        self._failed: asyncio.Future[WebSocketSinkError] | None = None
        self._closing = False
        self._publisher_muted = self._stalled = self._wire_muted = False
        self._head_muted = False  # the mute state told by the text frames already taken off the queue
        self._overflowing = False
        self._last_frame_at = 0.0
        self._status: egress.StreamInfo.Status = ACTIVE
        self._error = ""
        self._started_at = self._ended_at = self._last_retry_at = 0
        self._bytes_sent = self._messages_sent = self._frames_lost = 0  # _bytes_sent: written to a transport
        self._conn_written = self._conn_acked = 0  # PCM bytes written to / confirmed on the current connection
        self._delivered_before = 0  # PCM bytes confirmed on earlier connections
        self._progress_at = 0.0  # monotonic: last time delivery advanced (or nothing was waiting)
        self._last_problem = "receiver not reading"
        self._redials = 0  # redials in this outage: the next one's delay (REDIAL); reset once delivery advances
        self._reconnects = self._retries = self._decode_errors = 0

    # Sink protocol

    def write(self, frame: EncodedFrame) -> None:
        """Queue the frame's PCM (plus any gap zeros) right away: Opus as the media core decoded it, G.711 decoded
        here."""
        if self._closing or self._status == FAILED:
            return
        now = time.monotonic()
        self._last_frame_at = now
        resumed, self._stalled = self._stalled, False
        chunks, lead = self._place(frame, now)
        arrival = frame.arrival or now
        self._emit(chunks[:lead], arrival)
        if resumed:
            self._update_mute()  # {"muted":false} goes right before the first chunk of the frame's audio
        self._emit(chunks[lead:], arrival)
        self._send_queued()

    def _place(self, frame: EncodedFrame, now: float) -> tuple[list[bytes], int]:
        """The chunks completed by this frame, and how many of them come before its audio."""
        try:
            pcm = self._decode(frame)
        except ValueError as exc:
            self._decode_errors += 1
            log.warning(
                "websocket %s: dropping undecodable frame (ts %d): %s",
                self.redacted_url,
                frame.timestamp,
                exc,
            )
            return [], 0
        if self._publisher_muted:  # the SFU forwards nothing while muted: what still arrives was in flight
            pcm = bytes(len(pcm))
        if not self._started_at:
            self._started_at = time.time_ns()
        first = self._clock.emitted
        chunks = self._clock.push(frame.timestamp * self._ticks, pcm, now)
        return chunks, max(0, (self._clock.frame_position - first) // CHUNK_SAMPLES) if chunks else 0

    def _decode(self, frame: EncodedFrame) -> bytes:
        """48 kHz stereo s16le PCM for a frame; ValueError if there is none."""
        if self._g711 is not None:
            return self._g711.decode(frame.data)
        if not frame.pcm:
            raise ValueError("libopus refused it" if frame.pcm is not None else "not decoded by the media core")
        return frame.pcm

    def set_muted(self, muted: bool) -> None:
        """Publisher mute state; the receiver gets ``{"muted":…}`` when muted-or-stalled changes."""
        if self._closing or self._status == FAILED:
            return
        self._publisher_muted = muted
        self._update_mute()
        self._send_queued()

    async def start(self) -> None:
        """Dial the receiver (once); raises ``WebSocketSinkError`` if it is unreachable."""
        if self._sender is not None:
            raise RuntimeError("WebSocketSink already started")
        try:
            conn = await self._dial(self._open_timeout)
        except Exception as exc:
            error = WebSocketSinkError(
                f"failed to connect to websocket {self.redacted_url}: {self._why(exc)}"
            )
            self._set_ended(FAILED, str(error))
            raise error from exc
        log.info("websocket %s connected", self.redacted_url)
        self._progress_at = time.monotonic()
        self._attach(conn)
        self._sender = self._spawn(self._send_loop(), "sender")
        self._tick()

    async def close(self) -> None:
        """Flush the pending partial chunk and the queue (reconnecting if needed), then close with 1000."""
        if self._closing:
            return
        self._closing = True
        self._cancel_ticker()
        if self._status == ACTIVE:
            now = time.monotonic()
            self._emit(self._clock.flush(), now)
            self._enqueue_all(self._converter.flush(), now)
        self._wakeup.set()
        if self._sender is not None:
            await self._drain_sender()
        await self._close_connection()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._status == ACTIVE:
            self._set_ended(FINISHED, "")
        log.info(
            "websocket %s closed: %d bytes delivered (%d written), %d frames lost, %d reconnects",
            self.redacted_url,
            self.bytes_sent,
            self._bytes_sent,
            self._frames_lost,
            self._reconnects,
        )

    # results

    @property
    def failed(self) -> asyncio.Future[WebSocketSinkError]:
        """Resolves (with the error as its result, never raising) when the sink fails after start()."""
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return self._failed

    @property
    def bytes_sent(self) -> int:
        """PCM bytes the receiver confirmed reading (see the module docstring)."""
        return self._delivered_before + self._conn_acked

    @property
    def jitter_depth(self) -> float:
        """Seconds audio may be late before silence stands in for it (the adaptive jitter buffer's depth now)."""
        return self._clock.buffer.depth

    @property
    def duration_ns(self) -> int:
        """Duration of the PCM delivered so far."""
        return self.bytes_sent * 1_000_000_000 // self._converter.bytes_per_second

    @property
    def stats(self) -> SinkStats:
        return SinkStats(
            bytes_sent=self.bytes_sent,
            bytes_written=self._bytes_sent,
            messages_sent=self._messages_sent,
            frames_lost=self._frames_lost,
            reconnects=self._reconnects,
            retries=self._retries,
            queued=self._queued_audio,
            decode_errors=self._decode_errors,
            clock=dataclasses.replace(self._clock.stats),
        )

    def stream_info(self) -> egress.StreamInfo:
        """Upstream's stream result; the URL's query values are redacted, duration is PCM delivered."""
        return egress.StreamInfo(
            url=self.redacted_url,
            started_at=self._started_at,
            ended_at=self._ended_at,
            duration=self.duration_ns,
            status=self._status,
            error=self._error,
            retries=self._retries,
            last_retry_at=self._last_retry_at,
        )

    # PCM in

    def _emit(self, chunks: list[bytes], ready_at: float) -> None:
        """Queue PCM whose source arrived (or, for silence, was due) at ``ready_at`` (monotonic)."""
        for chunk in chunks:
            self._enqueue_all(self._converter.convert(chunk), ready_at)

    def _enqueue_all(self, messages: list[bytes], ready_at: float) -> None:
        for message in messages:
            self._enqueue(message, ready_at)

    def _enqueue(self, message: Message, ready_at: float = 0.0) -> None:
        self._queue.append(message)
        if isinstance(message, bytes):
            self._ready_at.append(ready_at)
            self._queued_audio += 1
            if self._queued_audio > self._max_queued:
                self._drop_oldest_audio()

    def _drop_oldest_audio(self) -> None:
        """Drop the oldest queued audio message, keeping any mute text frames ahead of it."""
        texts: list[Message] = []
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, bytes):
                self._queued_audio -= 1
                self._ready_at.popleft()
                break
            texts.append(item)
        self._queue.extendleft(reversed(texts))
        if not self._overflowing:
            log.warning(
                "websocket %s: buffer full (%d messages), dropping the oldest audio",
                self.redacted_url,
                self._max_queued,
            )
        self._overflowing = True
        self._lose(1, "buffer overflow")

    def _lose(self, count: int, why: str) -> None:
        self._frames_lost += count
        log.debug(
            "websocket %s: lost %d frame(s) (%s), %d in total",
            self.redacted_url,
            count,
            why,
            self._frames_lost,
        )

    def _update_mute(self) -> None:
        muted = self._publisher_muted or self._stalled
        if muted != self._wire_muted:
            self._wire_muted = muted
            self._enqueue(MUTED if muted else UNMUTED)

    # real-time clock

    def _tick(self) -> None:
        """Zeros if media is late, the stall check; then the next check (a timer, not a task: cheaper to wake)."""
        try:
            now = time.monotonic()
            if self._catch_up is not None and self._late(now):
                self._catch_up()
                now = time.monotonic()
            self._emit(self._clock.tick(now), now)
            self._check_stall(now)
            self._send_queued()
            self._check_progress(now)
            if self._status == FAILED:
                return
        except Exception as exc:
            self._crashed("ticker", exc)
            return
        self._ticker = asyncio.get_running_loop().call_later(self._tick_delay(now), self._tick)

    def _late(self, now: float) -> bool:
        """Whether the media is late enough for ``tick`` to fill silence in."""
        deadline = self._clock.deadline()
        return deadline is not None and now > deadline

    def _check_stall(self, now: float) -> None:
        if self._stalled or not self._clock.started or now - self._last_frame_at < self._stall_timeout:
            return
        log.info(
            "websocket %s: no media for %.1fs, sending silence", self.redacted_url, now - self._last_frame_at
        )
        self._stalled = True
        self._update_mute()

    def _check_progress(self, now: float) -> None:
        """FAILED once audio has waited ``reconnect_deadline`` seconds on an open connection without any of it
        being confirmed (a receiver that does not read); the reconnect loop enforces the same budget when down."""
        conn = self._conn
        waiting = self._queued_audio > 0 or self._conn_written > self._conn_acked
        if not waiting:
            self._progress_at = now
        elif conn is not None and conn.state is State.OPEN and now - self._progress_at > self._reconnect_deadline:
            self._fail(
                f"websocket {self.redacted_url}: nothing delivered for {self._reconnect_deadline:g}s: "
                f"{self._last_problem}"
            )

    def _tick_delay(self, now: float) -> float:
        wake = now + TICK_MAX
        deadline = self._clock.deadline()
        if deadline is not None:
            wake = min(wake, deadline + 0.001)
        if self._clock.started and not self._stalled:
            wake = min(wake, self._last_frame_at + self._stall_timeout)
        return max(TICK_MIN, wake - now)

    def _cancel_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()

    # connection

    def _dial(self, timeout: float) -> connect:
        ping_interval, ping_timeout = self._ping
        return connect(
            self.url,
            additional_headers={"Content-Type": CONTENT_TYPE},
            compression=None,
            open_timeout=timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=self._close_timeout,
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
        if self._status == ACTIVE and self._conn is conn and mark > self._conn_acked:
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

    @property
    def message_size(self) -> int:
        """Bytes of one 10 ms PCM message."""
        return max(1, self._converter.bytes_per_second // MESSAGES_PER_SECOND)

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
        while self._status == ACTIVE:
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

    def _send_queued(self) -> None:
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
                    self._head_muted = item == MUTED
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
        self._queued_audio -= messages
        self._bytes_sent += size
        self._conn_written += size
        self._messages_sent += messages
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
        log.warning(
            "websocket %s: %s; reconnecting (deadline %gs)",
            self.redacted_url,
            last_error,
            self._reconnect_deadline,
        )
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(REDIAL.delay(self._redials), remaining))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._redials += 1
            self._retries += 1
            self._last_retry_at = time.time_ns()
            try:
                conn = await self._dial(min(self._open_timeout, remaining))
            except Exception as exc:
                last_error = self._why(exc)
                log.warning(
                    "websocket %s: reconnect attempt %d failed: %s",
                    self.redacted_url,
                    self._retries,
                    last_error,
                )
                continue
            self._reconnects += 1
            log.warning(
                "websocket %s: reconnected (%d so far); sending %d buffered messages, %d frames lost so far",
                self.redacted_url,
                self._reconnects,
                self._queued_audio,
                self._frames_lost,
            )
            self._attach(conn)
            if self._head_muted:
                self._queue.appendleft(MUTED)  # the new connection starts knowing the stream is muted
            return True
        self._fail(
            f"websocket {self.redacted_url} unreachable for {self._reconnect_deadline:g}s: {last_error}"
            if not self._reconnects else
            f"websocket {self.redacted_url}: nothing delivered for {self._reconnect_deadline:g}s "
            f"({self._reconnects} reconnects, the last {self._last_problem}): {last_error}"
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
            self._fail(f"websocket {self.redacted_url}: could not deliver buffered audio before closing")

    async def _close_connection(self) -> None:
        """Close with 1000; a receiver that does not answer the close did not read the end of the stream."""
        conn = self._conn
        if conn is None:
            return
        if self._status != ACTIVE or conn.state is not State.OPEN:
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
            self._fail(
                f"websocket {self.redacted_url}: the receiver did not read the end of the stream "
                f"(no close handshake within {self._close_timeout:g}s)"
            )
        self._detach_lost()
        self._conn = None

    # failure and tasks

    def _fail(self, message: str) -> None:
        if self._status != ACTIVE:
            return
        if self._queued_audio:
            self._lose(self._queued_audio, "undeliverable")
        if self._conn is not None:
            self._detach_lost()
            self._conn.transport.abort()  # wakes a sender waiting for a receiver that does not read
        self._queue.clear()
        self._queued_audio = 0
        self._cancel_ticker()
        self._set_ended(FAILED, message)
        log.error("websocket sink failed: %s (%d bytes delivered)", message, self.bytes_sent)
        error = WebSocketSinkError(message)
        if not self.failed.done():
            self.failed.set_result(error)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                log.exception("websocket %s: on_error callback failed", self.redacted_url)

    def _set_ended(self, status: egress.StreamInfo.Status, error: str) -> None:
        self._status, self._error = status, error
        self._ended_at = time.time_ns()

    def _spawn(self, coro: Coroutine[None, None, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"websocket-sink-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._crashed(task.get_name(), exc)

    def _crashed(self, what: str, exc: BaseException) -> None:
        log.error("websocket %s: %s crashed", self.redacted_url, what, exc_info=exc)
        with contextlib.suppress(Exception):
            self._fail(f"websocket {self.redacted_url}: internal error: {exc}")
