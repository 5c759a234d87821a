"""A worker on another host cut off for long: from everything for good, from Redis alone for 60 s, and stopped
(SIGTERM) while cut off. See test_hosts.py for the set-up.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from livekit.protocol import egress
from support import netns
from support.egress_helpers import file_request, until, wait_status
from support.publisher import Publisher
from support.site import (
    CPU_BOUND,
    ENDED,
    RSS_BOUND_MB,
    Site,
    decode_errors,
    report,
    room,
    seconds_of,
    sent_seconds,
    worker_on,
)
from support.usage import Usage, sample

Status = egress.EgressStatus
# In the cpu lane, one e2e test at a time: a host's veth puts an address in the root namespace, where every other
# test's ICE agents (our media core, aiortc) gather candidates; when the host goes, a pair nominated on it dies
# (seen in the full parallel run: recordings that got no media, "Start signal not received").
pytestmark = [pytest.mark.timing, pytest.mark.xdist_group("cpu")]
SHUTDOWN_MARGIN = 10.0  # past the grace: leaving the room (1 s), reports (5 s), unsubscribing (2 s each), closing


async def test_cut_off_for_good_fails_bounded_and_reports_once_the_link_is_back(
    site: Site, host: netns.Host, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    """Every packet of the worker's host dropped: it stays idle (no spin, no growth), ends the egress FAILED after
    the resume budget with its partial file, and livekit-server's store has that within 5 s of the link's return."""
    worker = worker_on(host, site, tmp_path / "w").start()
    creds = (site.server.api_key, site.server.api_secret)
    try:
        async with room(site) as (client, name), \
                Publisher(site.server.url, creds, name, "alice", sample_media["opus"], loop=True) as alice:
            started = await client.egress.start_track_egress(file_request(name, alice.track_sid, "cut.ogg"))
            await wait_status(client, started.egress_id, Status.EGRESS_ACTIVE)
            await asyncio.sleep(3)
            host.cut()
            cut_at = time.monotonic()
            usage = asyncio.create_task(sample(Usage(worker.pid), seconds=40))
            ended_line = f"egress {started.egress_id} EGRESS_FAILED"
            await until(lambda: ended_line in worker.log_text(), timeout=45, interval=0.2)
            failed_after = time.monotonic() - cut_at
            await usage
            host.heal()
            healed = time.monotonic()
            info = await wait_status(client, started.egress_id, *ENDED, timeout=15, interval=0.1)
            stored_after = time.monotonic() - healed
    finally:
        log = worker.log_text()
        worker.close()
    report("cut for good", failed_after, stored_after, usage.result())
    assert usage.result().mean_cpu < CPU_BOUND and usage.result().rss_growth < RSS_BOUND_MB, (usage, log[-3000:])
    assert Status.Name(info.status) == "EGRESS_FAILED", info
    assert "connection to room failed" in info.error, info.error
    assert stored_after < 5
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    assert 2.5 < seconds_of(path) < 6


async def test_redis_away_media_up_records_on_and_reports_in_order_once_back(
    site: Site, host: netns.Host, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    """Only Redis unreachable from the worker for 60 s, livekit-server reachable: the recording goes on without
    loss; the egress ends (its publisher leaves) during the partition, and livekit-server's store has its final
    status within 5 s of Redis coming back; one egress, one recording."""
    worker = worker_on(host, site, tmp_path / "w").start()
    creds = (site.server.api_key, site.server.api_secret)
    try:
        async with room(site) as (client, name):
            async with Publisher(site.server.url, creds, name, "bob", sample_media["opus"], loop=True) as bob:
                started = await client.egress.start_track_egress(file_request(name, bob.track_sid, "away.ogg"))
                await wait_status(client, started.egress_id, Status.EGRESS_ACTIVE)
                since = len(bob.sent)  # frames the publisher had sent when recording began
                host.cut_port(site.redis.port)
                cut_at = time.monotonic()
                usage = await sample(Usage(worker.pid), seconds=40)
            left = len(bob.sent)  # bob leaves: the egress ends while Redis is still away
            await until(lambda: f"egress {started.egress_id} EGRESS_COMPLETE" in worker.log_text(), timeout=10)
            ended_after = time.monotonic() - cut_at
            listed = (await client.egress.list_egress(egress.ListEgressRequest(egress_id=started.egress_id))).items
            await asyncio.sleep(max(0.0, 60 - (time.monotonic() - cut_at)))
            host.heal()
            healed = time.monotonic()
            info = await wait_status(client, started.egress_id, *ENDED, timeout=15, interval=0.1)
            stored_after = time.monotonic() - healed
            every = (await client.egress.list_egress(egress.ListEgressRequest(room_name=name))).items
    finally:
        log = worker.log_text()
        worker.close()
    report("Redis away 60 s, media up", ended_after, stored_after, usage)
    assert Status.Name(listed[0].status) == "EGRESS_ACTIVE", "livekit-server did not hear of the end while cut off"
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info
    assert stored_after < 5
    assert [item.egress_id for item in every] == [started.egress_id]
    assert log.count("started for track") == 1
    assert usage.mean_cpu < CPU_BOUND * 2 and usage.rss_growth < RSS_BOUND_MB, usage  # while recording
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    expected = sent_seconds(since, left)
    assert abs(seconds_of(path) - expected) < 1.5, (seconds_of(path), expected, info.details, log[-4000:])
    assert "lost" not in info.details, info.details


async def test_sigterm_while_cut_off_stops_in_time_and_the_next_start_reports_the_end(
    site: Site, host: netns.Host, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    """SIGTERM to a worker cut off from everything, an egress running: the process stops within its grace period
    plus the bounded shutdown (no Redis call waits), the file is finished, and the final status it could not
    send reaches livekit-server's store from the worker started again on the same data_dir."""
    worker = worker_on(host, site, tmp_path / "w").start(grace=2)
    creds = (site.server.api_key, site.server.api_secret)
    try:
        async with room(site) as (client, name), \
                Publisher(site.server.url, creds, name, "gus", sample_media["opus"], loop=True) as gus:
            started = await client.egress.start_track_egress(file_request(name, gus.track_sid, "term.ogg"))
            await wait_status(client, started.egress_id, Status.EGRESS_ACTIVE)
            await asyncio.sleep(3)
            host.cut()
            await asyncio.sleep(1)
            assert worker.proc is not None
            signalled = time.monotonic()
            worker.proc.terminate()
            code = await asyncio.to_thread(worker.proc.wait, 30)
            stopped_after = time.monotonic() - signalled
            still = (await client.egress.list_egress(egress.ListEgressRequest(egress_id=started.egress_id))).items
            host.heal()
            worker.start()
            info = await wait_status(client, started.egress_id, *ENDED, timeout=15)
    finally:
        log = worker.log_text()
        worker.close()
    print(f"\nSIGTERM while cut off: stopped {stopped_after:.1f}s after the signal (grace 2 s)")
    assert code == 0 and stopped_after < 2 + SHUTDOWN_MARGIN, (code, stopped_after, log[-3000:])
    assert Status.Name(still[0].status) == "EGRESS_ACTIVE"
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info
    assert "sending its final status (EGRESS_COMPLETE) kept by the last run" in log
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    assert seconds_of(path) > 2.0  # 3 s before the cut (nothing arrives after it; 2.44 s seen in CI)
