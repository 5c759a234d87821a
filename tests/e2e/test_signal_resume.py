"""A dropped signal connection is resumed (``/rtc?reconnect=1&sid=...``): the recording carries on, nothing lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress
from support.egress_helpers import file_request, until
from support.publisher import Publisher
from support.redis_server import RedisServer
from support.server import LiveKitServer, RoomFactory, create_room
from support.tcp_proxy import TcpProxy
from test_file_egress import config_for, decode_errors, packets, probe_duration

from trackegress.egress import Egress

pytestmark = [pytest.mark.timing, pytest.mark.xdist_group("cpu")]  # asserts wall-clock bounds; ICE restarts
Status = egress.EgressStatus
RESUMED = "signal connection resumed"
MAX_LOST_AT_ICE_RESTART = 3


def _resumes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(RESUMED)]


async def _record_across(
    server: LiveKitServer, room: str, media: Path, local_dir: Path, ws_url: str,
    disrupt: Callable[[], Awaitable[None]], caplog: pytest.LogCaptureFixture,
) -> tuple[egress.EgressInfo, list[bytes], float]:
    """Record alice's looped Opus track; ``disrupt()`` mid-recording, 2 s more, alice leaves.

    Returns (final info, frames sent, seconds from the first frame sent to alice leaving).
    """
    creds = (server.api_key, server.api_secret)
    job_config = config_for(server, local_dir, ws_url=ws_url)
    async with Publisher(server.url, creds, room, "alice", media, loop=True, start_delay=None, resume=True) as pub:
        job = Egress(file_request(room, pub.track_sid), job_config)
        run = asyncio.create_task(job.run())
        await until(lambda: job.info.room_id)
        await asyncio.sleep(1.5)  # subscription negotiated
        pub.begin()
        began = time.monotonic()
        await until(lambda: job.frames > 0)
        await asyncio.sleep(1)
        await disrupt()
        await until(lambda: _resumes(caplog), timeout=15)
        await asyncio.sleep(2)  # media after the resume, through the restarted ICE
    seconds = time.monotonic() - began
    return await asyncio.wait_for(run, 15), list(pub.sent), seconds  # every frame sent until alice left


def _assert_whole_run_recorded(info: egress.EgressInfo, sent: list[bytes], seconds: float, local_dir: Path) -> None:
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info.error
    assert info.details.partition(";")[0] == "End reason: Source closed", info.details
    out = local_dir / info.file_results[0].filename
    recorded = packets(out)
    assert recorded and recorded[0] in sent, "the recording starts on a frame the publisher sent"
    skipped = sent.index(recorded[0])  # the tone loops, so this is its first sending
    # The publisher's last frames may be handed to its sender as it leaves and never go out.
    unsent = len(sent) - skipped - len(recorded)
    assert 0 <= skipped <= 30 and 0 <= unsent <= 5, f"{skipped} frames missing at the start, {unsent} at the end"
    # livekit-server restarts ICE on resume; its ICE agent drops what it sends before our first check with the
    # new credentials (measured: 1 packet of 20 ms). The muxer fills such holes with a TOC-only silence frame.
    expected = sent[skipped : skipped + len(recorded)]
    lost = [i for i, (got, want) in enumerate(zip(recorded, expected, strict=True)) if got != want]
    assert len(lost) <= MAX_LOST_AT_ICE_RESTART, f"{len(lost)} frames differ: {lost}"
    assert all(len(recorded[i]) <= 3 for i in lost), "a differing frame is gap filler, never other data"
    reported = f"; audio: {len(lost)} of {len(recorded)} frames missing" if lost else "; audio:"
    assert (reported in info.details) == bool(lost), info.details  # the loss is reported, and only a loss
    assert decode_errors(out) == ""
    assert probe_duration(out) == pytest.approx(len(recorded) * 0.02, abs=0.1)
    assert probe_duration(out) == pytest.approx(seconds, abs=1.0)


async def test_recording_survives_a_cut_signal_connection(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The recorder's signal WebSocket runs through a TCP proxy that resets it; media (UDP) is untouched."""
    caplog.set_level(logging.INFO)
    proxy = await TcpProxy(livekit_server.port).start()

    async def cut() -> None:
        proxy.cut()

    try:
        info, sent, seconds = await _record_across(
            livekit_server, await make_room(), sample_media["opus"], tmp_path, proxy.url, cut, caplog)
    finally:
        await proxy.stop()

    assert proxy.connections == 2, "joined, then resumed once"
    assert len(_resumes(caplog)) == 1 and "(ReconnectResponse)" in _resumes(caplog)[0]
    _assert_whole_run_recorded(info, sent, seconds, tmp_path)


async def test_recording_survives_a_redis_outage_that_drops_the_signal_connection(
    sample_media: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """livekit-server v1.13.5 with Redis closes every signal WebSocket (1000, no LeaveRequest) about 1.4 s after
    a Redis outage longer than ``signal_relay.retry_timeout`` (7.5 s) ends; the recorder resumes its session."""
    caplog.set_level(logging.INFO)
    with RedisServer() as redis, LiveKitServer(redis_address=redis.address) as server:
        client = api.LiveKitAPI(server.http_url, server.api_key, server.api_secret)
        try:
            room = await create_room(client, "resume")
        finally:
            await client.aclose()

        async def outage() -> None:
            redis.kill()
            await asyncio.sleep(10)
            redis.start()

        info, sent, seconds = await _record_across(
            server, room, sample_media["opus"], tmp_path, server.url, outage, caplog)

    closes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("signal connection closed")]
    assert closes and closes[0] == "signal connection closed: received 1000 (OK); then sent 1000 (OK)", closes
    assert len(_resumes(caplog)) == 1
    _assert_whole_run_recorded(info, sent, seconds, tmp_path)


async def test_recording_fails_when_the_signal_connection_cannot_be_resumed_in_time(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    """The proxy goes away for good: resume attempts are refused until ``signal_resume_timeout``, then FAILED."""
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    proxy = await TcpProxy(livekit_server.port).start()
    config = config_for(livekit_server, tmp_path, ws_url=proxy.url, signal_resume_timeout=2.0)
    async with Publisher(livekit_server.url, creds, room, "alice", sample_media["opus"], loop=True) as pub:
        job = Egress(file_request(room, pub.track_sid), config)
        run = asyncio.create_task(job.run())
        await until(lambda: job.frames > 0)
        await proxy.stop()
        stopped = time.monotonic()
        info = await asyncio.wait_for(run, 10)
        failed_after = time.monotonic() - stopped

    assert Status.Name(info.status) == "EGRESS_FAILED"
    assert info.error.startswith("recording ended early: connection to room failed: could not resume the signal "
                                 "connection within 2s: could not establish signal connection:"), info.error
    assert 1.5 < failed_after < 4, failed_after
    assert (tmp_path / info.file_results[0].filename).stat().st_size > 0, "the partial file is kept"
