"""WebSocket output: the track's Opus decoded to live s16le PCM, one 10 ms binary message at a time.

Wire format as upstream (``Content-Type: audio/x-raw``; 48 kHz stereo, 1920-byte messages;
``{"muted":bool}`` text frames), minus its bugs: pings are echoed (websockets does it), PCM leaves as
soon as it is decoded, the close is a normal 1000, and a dropped receiver is redialled with backoff
while audio is buffered, instead of failing the egress. This module is the PCM stream (decoding, the real-time
clock, mute); ``wslink.py`` the connection it rides on (dial, redial, delivery confirmed by pings).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from livekit.protocol import egress

from trackegress.media import g711
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.sinks.pcm import CHUNK_SAMPLES, ClockStats, PcmClock, PcmConverter
from trackegress.sinks.wslink import ACTIVE, FAILED, WebSocketLink, WebSocketSinkError, validate_websocket_url

log = logging.getLogger(__name__)

MUTED = '{"muted":true}'
UNMUTED = '{"muted":false}'
MESSAGES_PER_SECOND = 100  # 10 ms each
TICK_MIN = 0.002
TICK_MAX = 0.05


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
    ``headers`` gives the extra headers of each dial (``wsauth.caller_headers``: who calls, signed).
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
        headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        validate_websocket_url(url)
        self.url = url
        self._converter = PcmConverter(sample_rate, channels)
        self._link = WebSocketLink(
            url,
            message_size=max(1, self._converter.bytes_per_second // MESSAGES_PER_SECOND),
            reconnect_deadline=reconnect_deadline,
            max_queued=max(1, round(max_buffer * MESSAGES_PER_SECOND)),
            ping=(ping_interval, ping_timeout),
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            resend=MUTED,
            headers=headers,
            on_fail=self._link_failed,
            on_delay=on_delay,
        )
        self.redacted_url = self._link.redacted_url
        self._g711 = None if codec is Codec.OPUS else g711.G711Decoder(codec.name.lower())
        self._ticks = 1 if codec is Codec.OPUS else g711.RATIO  # 48 kHz timeline units per RTP timestamp unit
        self._clock = PcmClock(late_allowance=late_allowance)
        self._stall_timeout = stall_timeout
        self._on_error = on_error
        self._catch_up = catch_up
        self._ticker: asyncio.TimerHandle | None = None  # the real-time clock's next check
        self._closing = False
        self._publisher_muted = self._stalled = self._wire_muted = False
        self._last_frame_at = 0.0
        self._started_at = 0
        self._decode_errors = 0

    # Sink protocol

    def write(self, frame: EncodedFrame) -> None:
        """Queue the frame's PCM (plus any gap zeros) right away: Opus as the media core decoded it, G.711 decoded
        here."""
        if self._closing or self._link.status == FAILED:
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
        self._link.send()

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
        if self._closing or self._link.status == FAILED:
            return
        self._publisher_muted = muted
        self._update_mute()
        self._link.send()

    async def start(self) -> None:
        """Dial the receiver (once); raises ``WebSocketSinkError`` if it is unreachable."""
        if self._link.started:
            raise RuntimeError("WebSocketSink already started")
        await self._link.open()
        self._tick()

    async def close(self) -> None:
        """Flush the pending partial chunk and the queue (reconnecting if needed), then close with 1000."""
        if self._closing:
            return
        self._closing = True
        self._cancel_ticker()
        link = self._link
        if link.status == ACTIVE:
            now = time.monotonic()
            self._emit(self._clock.flush(), now)
            link.enqueue_all(self._converter.flush(), now)
        await link.close()
        log.info("websocket %s closed: %d bytes delivered (%d written), %d frames lost, %d reconnects",
                 self.redacted_url, link.bytes_delivered, link.bytes_written, link.frames_lost, link.reconnects)

    # results

    @property
    def failed(self) -> asyncio.Future[WebSocketSinkError]:
        """Resolves (with the error as its result, never raising) when the sink fails after start()."""
        return self._link.failed

    @property
    def bytes_sent(self) -> int:
        """PCM bytes the receiver confirmed reading (see ``wslink.py``)."""
        return self._link.bytes_delivered

    @property
    def message_size(self) -> int:
        """Bytes of one 10 ms PCM message."""
        return self._link.message_size

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
        link = self._link
        return SinkStats(
            bytes_sent=link.bytes_delivered,
            bytes_written=link.bytes_written,
            messages_sent=link.messages_sent,
            frames_lost=link.frames_lost,
            reconnects=link.reconnects,
            retries=link.retries,
            queued=link.queued_audio,
            decode_errors=self._decode_errors,
            clock=dataclasses.replace(self._clock.stats),
        )

    def stream_info(self) -> egress.StreamInfo:
        """Upstream's stream result; the URL's query values are redacted, duration is PCM delivered."""
        link = self._link
        return egress.StreamInfo(
            url=self.redacted_url,
            started_at=self._started_at,
            ended_at=link.ended_at,
            duration=self.duration_ns,
            status=link.status,
            error=link.error,
            retries=link.retries,
            last_retry_at=link.last_retry_at,
        )

    # PCM in

    def _emit(self, chunks: list[bytes], ready_at: float) -> None:
        """Queue PCM whose source arrived (or, for silence, was due) at ``ready_at`` (monotonic)."""
        for chunk in chunks:
            self._link.enqueue_all(self._converter.convert(chunk), ready_at)

    def _update_mute(self) -> None:
        muted = self._publisher_muted or self._stalled
        if muted != self._wire_muted:
            self._wire_muted = muted
            self._link.enqueue(MUTED if muted else UNMUTED)

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
            self._link.send()
            self._link.check_progress(now)
            if self._link.status == FAILED:
                return
        except Exception as exc:
            self._link.crashed("ticker", exc)
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

    def _link_failed(self, error: WebSocketSinkError) -> None:
        self._cancel_ticker()
        if self._on_error is not None:
            self._on_error(error)
