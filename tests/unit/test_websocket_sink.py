"""WebSocketSink against real local websockets servers: bytes on the wire, mute, reconnects, failures."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import av
import numpy as np
import pytest
from livekit.protocol import egress
from support.wsreceiver import LEFT_HZ, RATE, RIGHT_HZ, Receiver, channels, free_port, is_silent, peak_hz, steps
from websockets.protocol import State

from trackegress.media.frames import EncodedFrame
from trackegress.sinks.websocket import MUTED, UNMUTED, WebSocketSink
from trackegress.sinks.wslink import WebSocketSinkError, validate_websocket_url

pytestmark = [pytest.mark.timing, pytest.mark.xdist_group("clock")]  # asserts latency and deadlines
FRAME = 0.02  # 20 ms Opus packets
FIRST_TS = 3_000_000_000  # near the 32-bit wrap; the sink gets unwrapped timestamps


# signal


@functools.cache
def packets() -> list[bytes]:
    """6 s of Opus (20 ms packets): 441 Hz left, 661 Hz right, encoded by PyAV's libopus."""
    t = np.arange(6 * RATE) / RATE
    signal = np.stack([np.sin(2 * np.pi * LEFT_HZ * t), np.sin(2 * np.pi * RIGHT_HZ * t)]) * 8000
    pcm = signal.astype(np.int16)
    enc = av.CodecContext.create("libopus", "w")
    assert isinstance(enc, av.AudioCodecContext)
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = RATE, "stereo", "s16", 96_000
    enc.open()
    out: list[bytes] = []
    for i in range(0, pcm.shape[1], 960):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm[:, i : i + 960].T).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = RATE, i
        out += [bytes(p) for p in enc.encode(frame)]
    return out


@functools.cache
def pcms() -> list[bytes]:
    """``packets()`` decoded to 48 kHz stereo s16le (PyAV's libopus), as the media core hands them over."""
    dec = av.CodecContext.create("libopus", "r")
    assert isinstance(dec, av.AudioCodecContext)
    dec.sample_rate, dec.layout = RATE, "stereo"
    to_s16 = av.AudioResampler(format="s16", layout="stereo", rate=RATE)
    return [
        b"".join(out.to_ndarray().tobytes() for frame in dec.decode(av.Packet(p)) for out in to_s16.resample(frame))
        for p in packets()
    ]


def opus_frame(k: int, arrival: float = 0.0) -> EncodedFrame:
    """Packet k of the tone (looped) with RTP timestamp FIRST_TS + k*960 and its PCM."""
    n = len(packets())
    return EncodedFrame(packets()[k % n], FIRST_TS + k * 960, True, arrival, pcm=pcms()[k % n])


async def feed(sink: WebSocketSink, indices: Sequence[int], t0: float) -> None:
    """Write packet k at t0 + k*20 ms (real time) with RTP timestamp FIRST_TS + k*960."""
    pcms()
    for k in indices:
        delay = t0 + k * FRAME - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sink.write(opus_frame(k, time.monotonic()))


# receiver


@pytest.fixture
async def receiver() -> Any:
    rx = Receiver()
    await rx.start()
    yield rx
    await rx.stop()


# analysis


# URL handling


def test_validate_websocket_url() -> None:
    validate_websocket_url("ws://h/p?token=x")
    validate_websocket_url("WSS://h:8443/p")
    for url in ("http://h/p", "https://h/p?token=secret", "h/p", "rtmp://h/live"):
        with pytest.raises(ValueError, match=r"^invalid url .*: invalid scheme$"):
            validate_websocket_url(url)


def test_bad_scheme_fails_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="invalid scheme") as exc:
        WebSocketSink("https://h/p?token=secret")
    assert "secret" not in str(exc.value)


async def test_start_raises_when_the_receiver_is_unreachable() -> None:
    port = free_port()
    sink = WebSocketSink(f"ws://127.0.0.1:{port}/x?token=secret")
    with pytest.raises(
        WebSocketSinkError, match=rf"failed to connect to websocket ws://127.0.0.1:{port}/x\?token="
    ):
        await sink.start()
    info = sink.stream_info()
    assert info.status == egress.StreamInfo.FAILED
    assert "secret" not in info.error and "Connect call failed" in info.error
    await sink.close()


# streaming


async def test_streams_48k_stereo_pcm_in_10ms_messages(receiver: Receiver) -> None:
    delays: list[float] = []
    sink = WebSocketSink(receiver.url("/audio?token=abc&call=7"), on_delay=delays.append)
    await sink.start()
    t0 = time.monotonic()
    writes = [t0 + k * FRAME for k in range(75)]
    await feed(sink, range(75), t0)  # 1.5 s
    await sink.close()
    await asyncio.wait_for(receiver.conns[0].done.wait(), 2)

    (conn,) = receiver.conns
    assert conn.headers["Content-Type"] == "audio/x-raw"
    assert conn.path == "/audio?token=abc&call=7"  # query string kept
    assert conn.texts == []
    assert {len(m) for m in conn.binary} == {1920}
    assert abs(len(b"".join(conn.binary)) - 1.5 * 192_000) <= 1920  # duration x 192000, within 10 ms
    pcm = channels(conn.binary)[RATE // 10 :]
    assert peak_hz(pcm[:, 0]) == pytest.approx(LEFT_HZ, abs=3)
    assert peak_hz(pcm[:, 1]) == pytest.approx(RIGHT_HZ, abs=3)
    assert set(steps(conn.binary)) == {1}
    assert conn.close_code == 1000

    # latency: a frame's two messages reach the receiver right after write(), no mixer delay
    arrivals = [t for t, m in conn.messages if isinstance(m, bytes)][1::2]
    latency = np.array(arrivals[: len(writes)]) - np.array(writes[: len(arrivals)])
    assert float(np.median(latency)) < 0.02
    assert len(delays) == len(conn.binary) and 0 <= float(np.median(delays)) < 0.02  # what the metric sees

    info = sink.stream_info()
    assert info.status == egress.StreamInfo.FINISHED and info.error == ""
    assert info.url == f"ws://127.0.0.1:{receiver.port}/audio?token={{...}}&call={{...}}"
    assert info.duration == len(b"".join(conn.binary)) * 1_000_000_000 // 192_000
    assert 0 < info.started_at <= info.ended_at
    assert sink.stats.frames_lost == 0 and sink.stats.reconnects == 0 and sink.bytes_sent == len(b"".join(conn.binary))


async def test_a_frame_libopus_refused_is_dropped_and_its_time_is_silence(receiver: Receiver) -> None:
    sink = WebSocketSink(receiver.url())
    await sink.start()
    t0 = time.monotonic()
    await feed(sink, range(10), t0)
    sink.write(dataclasses.replace(opus_frame(10, time.monotonic()), pcm=b""))  # the core could not decode it
    await feed(sink, range(11, 20), t0)
    await sink.close()
    await asyncio.wait_for(receiver.conns[0].done.wait(), 2)

    (conn,) = receiver.conns
    assert len(conn.binary) == 40 and conn.texts == []
    assert [is_silent(m) for m in conn.binary[18:24]] == [False, False, True, True, False, False]
    assert sink.stats.decode_errors == 1 and sink.stats.clock.gap_samples == 960


async def test_mute_sends_text_frames_with_silence_between(receiver: Receiver) -> None:
    sink = WebSocketSink(receiver.url())
    await sink.start()
    t0 = time.monotonic()
    await feed(sink, range(20), t0)  # 0.4 s of audio
    sink.set_muted(True)
    sink.set_muted(True)  # no change, no frame
    await asyncio.sleep(t0 + 60 * FRAME - time.monotonic())  # 0.8 s muted: no packets at all
    sink.set_muted(False)
    await feed(sink, range(60, 80), t0)  # timestamps kept running
    await sink.close()
    await asyncio.wait_for(receiver.conns[0].done.wait(), 2)

    (conn,) = receiver.conns
    assert conn.texts == [MUTED, UNMUTED]
    kinds = [m if isinstance(m, str) else ("zero" if is_silent(m) else "audio") for _, m in conn.messages]
    first, last = kinds.index(MUTED), kinds.index(UNMUTED)
    assert set(kinds[:first]) == {"audio"} and len(kinds[:first]) == 40
    between = kinds[first + 1 : last]
    assert set(between) == {"zero"} and 80 <= len(between) <= 85  # the muted 0.8 s, as silence
    assert set(kinds[last + 1 :]) == {"audio"} and len(kinds[last + 1 :]) == 40
    assert {len(m) for m in conn.binary} == {1920}
    assert abs(len(b"".join(conn.binary)) - 1.6 * 192_000) <= 1920  # 1.6 s of timestamps, no more


async def test_audio_arriving_while_muted_goes_out_as_silence(receiver: Receiver) -> None:
    sink = WebSocketSink(receiver.url())
    await sink.start()
    t0 = time.monotonic()
    await feed(sink, range(20), t0)
    sink.set_muted(True)
    await feed(sink, range(20, 40), t0)  # the packets in flight when the SFU muted the track, and any after
    sink.set_muted(False)
    await feed(sink, range(40, 60), t0)
    await sink.close()
    await asyncio.wait_for(receiver.conns[0].done.wait(), 2)

    kinds = [m if isinstance(m, str) else ("zero" if is_silent(m) else "audio") for _, m in receiver.conns[0].messages]
    first, last = kinds.index(MUTED), kinds.index(UNMUTED)
    assert set(kinds[:first]) == {"audio"} and set(kinds[last + 1 :]) == {"audio"}
    assert set(kinds[first + 1 : last]) == {"zero"} and len(kinds[first + 1 : last]) == 40


@pytest.mark.parametrize("catch_up", [True, False], ids=["catch-up", "without"])
async def test_a_late_event_loop_takes_the_frames_that_arrived_before_filling_silence(
    receiver: Receiver, catch_up: bool
) -> None:
    # The event loop is blocked for 300 ms while 15 frames arrive in the media core. The real-time clock's timer
    # then runs before their I/O (uvloop runs due timers first): with catch_up it takes them, and no silence is
    # made up; without it, 240 ms of silence fill in and the audio lands behind them.
    waiting: list[int] = []

    def deliver() -> None:
        while waiting:
            k = waiting.pop(0)
            sink.write(opus_frame(k, time.monotonic()))

    sink = WebSocketSink(receiver.url("/late"), catch_up=deliver if catch_up else None)
    await sink.start()
    t0 = time.monotonic()
    await feed(sink, range(25), t0)
    time.sleep(0.3)
    waiting.extend(range(25, 40))
    await asyncio.sleep(0.05)  # the timer, overdue, runs first
    deliver()  # then the frames' I/O
    await feed(sink, range(40, 60), t0)
    await sink.close()
    clock = sink.stats.clock
    if catch_up:
        assert (clock.stall_samples, clock.resyncs) == (0, 0), clock
    else:
        assert clock.stall_samples >= 0.2 * RATE and clock.resyncs == 1, clock


async def test_media_stall_is_signalled_as_muted(receiver: Receiver) -> None:
    sink = WebSocketSink(receiver.url())
    await sink.start()
    pcms()  # encoded and decoded before the clock starts: the first frame must not be late
    t0 = time.monotonic()
    await feed(sink, range(15), t0)  # 0.3 s
    depth = sink.jitter_depth  # 60 ms, more if this machine's load made the frames late
    await feed(sink, range(55, 70), t0)  # 0.8 s stall, then 0.3 s
    await sink.close()
    await asyncio.wait_for(receiver.conns[0].done.wait(), 2)

    (conn,) = receiver.conns
    assert conn.texts == [MUTED, UNMUTED]
    kinds = [m if isinstance(m, str) else ("zero" if is_silent(m) else "audio") for _, m in conn.messages]
    first, last = kinds.index(MUTED), kinds.index(UNMUTED)
    # silence once the audio is later than the jitter buffer's depth, "muted" 0.5 s after the last frame
    expected = (0.5 - depth) * 100
    assert expected - 6 <= kinds[:first].count("zero") <= expected + 6, (kinds[:first].count("zero"), depth)
    assert set(kinds[first + 1 : last]) <= {"zero"}
    assert abs(len(b"".join(conn.binary)) - 1.4 * 192_000) <= 1920


@pytest.mark.parametrize(("rate", "nch"), [(16_000, 1), (8_000, 2)])
async def test_transcription_format(receiver: Receiver, rate: int, nch: int) -> None:
    sink = WebSocketSink(receiver.url(), sample_rate=rate, channels=nch)
    await sink.start()
    await feed(sink, range(50), time.monotonic())  # 1 s
    await sink.close()
    await asyncio.wait_for(receiver.conns[0].done.wait(), 2)

    (conn,) = receiver.conns
    size = rate // 100 * nch * 2
    assert {len(m) for m in conn.binary} == {size}
    assert abs(len(conn.binary) - 100) <= 1
    pcm = channels(conn.binary, nch)[rate // 10 :]
    if nch == 2:
        assert peak_hz(pcm[:, 0], rate) == pytest.approx(LEFT_HZ, abs=5)
        assert peak_hz(pcm[:, 1], rate) == pytest.approx(RIGHT_HZ, abs=5)
    else:
        spectrum = np.abs(np.fft.rfft(pcm[:, 0] * np.hanning(len(pcm))))
        top2 = sorted(np.argsort(spectrum)[-2:] * rate / len(pcm))
        assert top2[0] == pytest.approx(LEFT_HZ, abs=5) and top2[1] == pytest.approx(RIGHT_HZ, abs=5)


# receiver outages


async def test_receiver_outage_is_bridged_in_order_without_duplicates(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trackegress.sinks")
    sink = WebSocketSink(receiver.url("/audio?token=abc"), late_allowance=0.3)
    await sink.start()
    t0 = time.monotonic()
    feeding = asyncio.create_task(feed(sink, range(250), t0))  # 5 s
    await asyncio.sleep(t0 + 1.0 - time.monotonic())
    receiver.conns[0].ws.transport.abort()  # TCP reset mid-stream, then a 3 s outage while audio keeps coming
    await receiver.stop()
    await asyncio.sleep(3.0)
    await receiver.start()
    await feeding
    await sink.close()
    await asyncio.wait_for(receiver.conns[-1].done.wait(), 2)

    assert len(receiver.conns) == 2 and sink.stats.reconnects == 1
    for conn in receiver.conns:
        assert conn.headers["Content-Type"] == "audio/x-raw" and conn.path == "/audio?token=abc"
        assert {len(m) for m in conn.binary} == {1920} and conn.texts == []
    first, second = receiver.conns[0].binary, receiver.conns[1].binary
    assert len(first) >= 90 and len(second) >= 200  # the buffered outage went to the new connection
    assert set(steps(first)) == {1} and set(steps(second)) == {1}
    (boundary,) = steps(first[-1:] + second[:1])
    assert 1 <= boundary <= 10  # in order, nothing twice; at most what was in flight is missing
    assert len(first) + len(second) + boundary - 1 == sink.stats.messages_sent  # written; no buffer overflow
    # what the dropped connection had not confirmed counts as lost (an upper bound of what really was)
    assert boundary - 1 <= sink.stats.frames_lost and sink.bytes_sent <= 1920 * (len(first) + len(second))
    assert sink.stats.clock.stall_samples == 0
    assert receiver.conns[1].close_code == 1000
    assert any("reconnected" in r.getMessage() for r in caplog.records)
    info = sink.stream_info()
    assert info.status == egress.StreamInfo.FINISHED and info.retries >= 1 and info.last_retry_at > 0


async def test_buffer_overflow_drops_the_oldest_audio_and_mute_state_survives(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "trackegress.sinks")
    sink = WebSocketSink(receiver.url(), max_buffer=0.3, late_allowance=0.3)
    await sink.start()
    t0 = time.monotonic()
    feeding = asyncio.create_task(feed(sink, range(150), t0))  # 3 s
    await asyncio.sleep(t0 + 0.3 - time.monotonic())
    sink.set_muted(True)  # packets keep coming (stragglers, DTX): they go out as silence
    await asyncio.sleep(0.05)
    await receiver.stop()
    await asyncio.sleep(1.0)
    await receiver.start()
    while len(receiver.conns) < 2:
        await asyncio.sleep(0.01)
    sink.set_muted(False)
    await feeding
    await sink.close()
    await asyncio.wait_for(receiver.conns[-1].done.wait(), 2)

    first, second = receiver.conns[0].binary, receiver.conns[1].binary
    assert receiver.conns[0].texts == [MUTED]
    assert receiver.conns[1].messages[0][1] == MUTED  # the new connection is told the current state first
    assert receiver.conns[1].texts == [MUTED, UNMUTED]
    assert not any(map(any, first[first.index(next(m for m in first if not any(m))):]))  # silence once muted
    assert sink.stats.frames_lost >= 60
    assert any("buffer full" in r.getMessage() for r in caplog.records)
    assert set(steps(first)) == {1} and set(steps(second)) == {1}  # kept audio is contiguous and in order
    accounted = len(first) + len(second) + sink.stats.frames_lost
    assert 290 <= accounted <= 300 + 40  # unconfirmed on the cut connection count as lost, received or not


async def test_receiver_that_stops_reading_gets_the_newest_buffered_audio_in_order(receiver: Receiver) -> None:
    sink = WebSocketSink(receiver.url(), max_buffer=1.0)
    await sink.start()
    while not receiver.conns:
        await asyncio.sleep(0.01)
    receiver.conns[0].ws.transport.pause_reading()  # a stuck receiver: the TCP buffers fill up
    count = 2700  # 54 s of audio as fast as we can (the 6 s tone, looped)
    for k in range(count):
        sink.write(opus_frame(k, time.monotonic()))
        if k % 50 == 0:
            await asyncio.sleep(0)
    assert 0 < sink.stats.queued <= 100  # waiting in our 1 s buffer, not piling up in the transport
    assert sink.stats.frames_lost > 0 and sink.stats.messages_sent < 2 * count
    receiver.conns[0].ws.transport.resume_reading()
    await sink.close()
    await asyncio.wait_for(receiver.conns[0].done.wait(), 5)

    (conn,) = receiver.conns
    assert len(conn.binary) == sink.stats.messages_sent == 2 * count - sink.stats.frames_lost
    assert {len(m) for m in conn.binary} == {1920} and conn.close_code == 1000
    assert set(steps(conn.binary[-100:])) == {1}  # the newest second arrived whole and in order


async def test_receiver_that_never_comes_back_fails_after_the_deadline(receiver: Receiver) -> None:
    errors: list[WebSocketSinkError] = []
    sink = WebSocketSink(receiver.url("/x?token=secret"), reconnect_deadline=1.0, on_error=errors.append)
    await sink.start()
    t0 = time.monotonic()
    feeding = asyncio.create_task(feed(sink, range(100), t0))
    await asyncio.sleep(0.3)
    await receiver.stop()
    stopped = time.monotonic()
    error = await asyncio.wait_for(sink.failed, 3)
    assert 0.9 <= time.monotonic() - stopped <= 1.8
    url = f"ws://127.0.0.1:{receiver.port}/x?token={{...}}"
    assert str(error).startswith(f"websocket {url} unreachable for 1s: ")
    assert "Connect call failed" in str(error)
    assert errors == [error]

    feeding.cancel()
    await sink.close()  # no raise, no wait
    received = sum(len(m) for m in receiver.conns[0].binary)
    info = sink.stream_info()
    assert info.status == egress.StreamInfo.FAILED and info.error == str(error)
    assert 0 < sink.bytes_sent <= received and info.duration == sink.bytes_sent * 1_000_000_000 // 192_000
    assert info.ended_at >= info.started_at > 0
    sink.write(opus_frame(0))  # ignored once failed
    assert sink.stream_info().status == egress.StreamInfo.FAILED


# keepalive


async def test_keepalive_with_a_strict_websockets_server() -> None:
    rx = Receiver(ping_interval=1, ping_timeout=1)  # the server pings every 1 s, wants a pong within 1 s
    await rx.start()
    sink = WebSocketSink(rx.url(), ping_interval=1, ping_timeout=1)  # and so do we
    try:
        await sink.start()
        await asyncio.sleep(2.5)  # idle: nothing to send yet
        t0 = time.monotonic()
        await feed(sink, range(10), t0)
        await asyncio.sleep(2.3)  # stalled publisher: only silence flows
        (conn,) = rx.conns
        assert conn.ws.state is State.OPEN and not conn.done.is_set()
        assert conn.ws.latency > 0  # the server got pongs to its pings
        assert sink._link._conn is not None and sink._link._conn.latency > 0  # our pings were answered
        assert sink.stats.reconnects == 0
        await sink.close()
        await asyncio.wait_for(conn.done.wait(), 2)
        assert conn.close_code == 1000
    finally:
        await rx.stop()
