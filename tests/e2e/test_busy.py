"""A worker whose CPU another process saturates: recordings stay decodable and lost audio is reported."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit.protocol import egress
from support.egress_helpers import file_request, until
from support.publisher import Publisher
from support.server import LiveKitServer, RoomFactory
from test_file_egress import config_for, decode_errors, packets

from trackegress.egress import Egress

pytestmark = [pytest.mark.timing, pytest.mark.xdist_group("cpu"), pytest.mark.saturates_cpus]
SPIN_SECONDS = 15.0
SPINNERS = 2  # one per core of the 2-core machine
# Busy loop that ends by itself even if nobody kills it.
SPIN = f"import time\nend = time.monotonic() + {SPIN_SECONDS + 10}\nwhile time.monotonic() < end: pass\n"
Status = egress.EgressStatus


@contextlib.contextmanager
def spinning(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes spinning at nice 0 until the block ends (killed then; they stop on their own too)."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


@contextlib.asynccontextmanager
async def publishing(server: LiveKitServer, room: str, media: Path, identity: str) -> AsyncIterator[Publisher]:
    creds = (server.api_key, server.api_secret)
    async with Publisher(server.url, creds, room, identity, media, start_delay=None, prime=True, loop=True) as pub:
        yield pub


async def test_saturated_cpu_keeps_video_decodable_and_reports_audio_loss(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path
) -> None:
    """H.264 and Opus recorded while two processes spin on the two cores for 15 s."""
    server, room = livekit_server, await make_room()
    config = config_for(server, tmp_path)
    async with publishing(server, room, sample_media["h264"], "cam") as video, \
            publishing(server, room, sample_media["opus"], "mic") as audio:
        jobs = [Egress(file_request(room, pub.track_sid), config) for pub in (video, audio)]
        runs = [asyncio.create_task(job.run()) for job in jobs]
        await until(lambda: all(job.info.room_id for job in jobs), timeout=10)
        await asyncio.sleep(1.5)  # subscriptions negotiated
        video.begin()
        audio.begin()
        await until(lambda: all(job.frames for job in jobs), timeout=10)
        began = time.monotonic()
        with spinning(SPINNERS):
            await asyncio.sleep(SPIN_SECONDS)
        spun = time.monotonic() - began
        await asyncio.sleep(1.0)  # calm again: the last frames through
        sent = len(audio.sent)
    infos = await asyncio.wait_for(asyncio.gather(*runs), 30)
    for info in infos:
        assert Status.Name(info.status) == "EGRESS_COMPLETE", info.error
    video_info, audio_info = infos
    assert decode_errors(tmp_path / video_info.file_results[0].filename) == ""
    recorded = packets(tmp_path / audio_info.file_results[0].filename)
    real = [p for p in recorded if len(p) > 2]  # not the TOC-only fillers of gaps
    reported = re.search(r"; audio: (\d+) of (\d+) frames missing", audio_info.details)
    gaps = int(reported.group(1)) if reported else 0
    print(f"saturated {spun:.1f} s: audio {sent - len(real)} of {sent} frames lost, reported {gaps}; "
          f"audio: {audio_info.details}; video: {video_info.details}")
    assert spun >= SPIN_SECONDS
    assert gaps == len(recorded) - len(real), "every gap on the timeline is reported"
    assert sent - len(real) <= gaps + 1, "what is missing is reported (the last frame may go unnoticed)"
