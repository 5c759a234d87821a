"""WebSocketSink against misbehaving receivers: the sink's status must tell what the receiver really read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from livekit.protocol import egress
from test_websocket_sink import feed
from websockets.asyncio.server import Server, ServerConnection, serve

from trackegress.sinks.websocket import WebSocketSink

pytestmark = [pytest.mark.timing, pytest.mark.xdist_group("clock")]  # asserts deadlines

Handler = Callable[[ServerConnection], Awaitable[None]]


class _Rx:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.received = 0  # PCM bytes the receiver's application read
        self._server: Server | None = None

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        await self.handler(ws)

    async def __aenter__(self) -> str:
        # close_timeout: the server's own close of a connection the handler stopped reading takes 1 s, not 10
        self._server = await serve(self._handle, "127.0.0.1", 0, close_timeout=1.0)
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/stt"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def _never_reads(ws: ServerConnection) -> None:
    ws.transport.pause_reading()  # accepts the connection, then reads nothing (pings included)
    await ws.wait_closed()


async def _oversized_frame(ws: ServerConnection) -> None:
    ws.transport.write(b"\x82\x7f" + (1 << 40).to_bytes(8, "big"))  # a binary frame announcing 1 TiB
    await ws.wait_closed()


async def _stream_until_failed(sink: WebSocketSink, seconds: float) -> float:
    """Feed real-time audio for up to ``seconds``; the time (since start) at which the sink failed."""
    t0 = time.monotonic()
    feeding = asyncio.create_task(feed(sink, range(int(seconds / 0.02)), t0))
    try:
        await asyncio.wait_for(asyncio.shield(sink.failed), seconds + 1)
    finally:
        feeding.cancel()
    return time.monotonic() - t0


async def test_a_receiver_that_never_reads_fails_the_sink_within_the_budget() -> None:
    async with _Rx(_never_reads) as url:
        sink = WebSocketSink(url, reconnect_deadline=1.5)
        await sink.start()
        elapsed = await _stream_until_failed(sink, 6)
        await sink.close()
    info = sink.stream_info()
    assert elapsed < 3.5
    assert info.status == egress.StreamInfo.FAILED
    assert "nothing delivered for 1.5s: receiver not reading" in info.error
    assert sink.bytes_sent == 0 and info.duration == 0  # written to the kernel is not delivered
    assert sink.stats.bytes_written > 0 and sink.stats.frames_lost > 0


async def test_a_receiver_answering_every_connection_with_an_oversized_frame_fails_within_the_budget() -> None:
    rx = _Rx(_oversized_frame)
    async with rx as url:
        sink = WebSocketSink(url, reconnect_deadline=2.0)
        await sink.start()
        elapsed = await _stream_until_failed(sink, 8)
        await sink.close()
    info = sink.stream_info()
    assert elapsed < 4.0  # one budget in total, not one per reconnect
    assert rx.connections >= 3 and sink.stats.reconnects >= 2
    assert info.status == egress.StreamInfo.FAILED and "nothing delivered for 2s" in info.error
    assert "1009" in info.error  # the receiver's frame was too big
    assert sink.bytes_sent == 0


async def test_a_close_handshake_the_receiver_never_completes_fails_the_sink() -> None:
    async def reads_then_stops(ws: ServerConnection) -> None:
        count = 0
        async for _ in ws:
            count += 1
            if count == 150:
                ws.transport.pause_reading()  # stops reading before the end of the stream
        await ws.wait_closed()

    async with _Rx(reads_then_stops) as url:
        sink = WebSocketSink(url, close_timeout=1.0)
        await sink.start()
        await feed(sink, range(100), time.monotonic())
        await sink.close()
    info = sink.stream_info()
    assert info.status == egress.StreamInfo.FAILED
    assert "the receiver did not read the end of the stream" in info.error
    assert 0 < sink.bytes_sent < sink.stats.bytes_written


async def test_a_well_behaved_receiver_confirms_everything() -> None:
    got: list[int] = []

    async def reads(ws: ServerConnection) -> None:
        async for message in ws:
            got.append(len(message))

    async with _Rx(reads) as url:
        sink = WebSocketSink(url)
        await sink.start()
        await feed(sink, range(50), time.monotonic())
        await sink.close()
    info = sink.stream_info()
    assert info.status == egress.StreamInfo.FINISHED and info.error == ""
    assert sink.bytes_sent == sink.stats.bytes_written == sum(got) and sink.stats.frames_lost == 0
