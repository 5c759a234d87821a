"""A worker on another host than livekit-server and Redis, and the network between them failing.

The root namespace is the SFU host (livekit-server v1.13.5 and redis-server bound to a veth address, the
publisher beside them); each worker runs in a network namespace of its own (``support.netns.Host``), and faults
are nftables rules on its link. Each test asserts what an operator sees: the end state in livekit-server's store,
seconds of media in the file, and the worker's CPU and RSS during the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress
from support import netns
from support.egress_helpers import file_request, until, wait_status
from support.publisher import Publisher
from support.redis_server import RedisServer
from support.server import BINARY, LiveKitServer, create_room
from support.usage import Usage, sample
from support.worker_process import Worker

Status = egress.EgressStatus
ENDED = (Status.EGRESS_COMPLETE, Status.EGRESS_FAILED, Status.EGRESS_ABORTED, Status.EGRESS_LIMIT_REACHED)
CPU_BOUND, RSS_BOUND_MB = 0.05, 20.0  # a worker cut off: under 5 % of a core, under 20 MB more memory
RESUME = 8.0  # signal_resume_timeout of the workers here (upstream's SDKs: 30 s; shorter keeps the tests short)


@dataclass
class Site:
    """The SFU host: livekit-server and Redis reachable at ``ip`` from every worker host."""

    host: netns.Host
    redis: RedisServer
    server: LiveKitServer

    @property
    def ip(self) -> str:
        return self.host.sfu_ip


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if reason := netns.unavailable():
        pytest.skip(reason)
    if not BINARY.exists():
        pytest.skip(f"livekit-server not installed at {BINARY}")
    with netns.Host("w") as host, RedisServer(also_bind=host.sfu_ip) as redis, \
            LiveKitServer(redis_address=redis.address, host_ip=host.sfu_ip) as server:
        yield Site(host, redis, server)


@pytest.fixture
def host(site: Site) -> Iterator[netns.Host]:
    """The module's worker host, its link healed after the test."""
    yield site.host
    site.host.heal()
    site.host.kill_all()


@contextlib.asynccontextmanager
async def room(site: Site) -> AsyncIterator[tuple[api.LiveKitAPI, str]]:
    client = api.LiveKitAPI(site.server.http_url, site.server.api_key, site.server.api_secret)
    name = await create_room(client, "hosts")
    try:
        yield client, name
    finally:
        with contextlib.suppress(api.TwirpError):
            await client.room.delete_room(api.DeleteRoomRequest(room=name))
        await client.aclose()


def worker_on(host: netns.Host, site: Site, workdir: Path, **settings: object) -> Worker:
    return Worker(workdir, site.server, site.redis, host, signal_resume_timeout=f"{RESUME:g}s", **settings)


def report(case: str, ended_after: float, stored_after: float, usage: Usage) -> None:
    """The figures of README's "what happens when the network fails" (shown with ``pytest -s``)."""
    print(f"\n{case}: ended {ended_after:.1f}s after the fault, in livekit-server's store {stored_after:.1f}s after "
          f"the heal; worker CPU peak {usage.peak_cpu:.3f} mean {usage.mean_cpu:.3f} of a core, RSS peak "
          f"+{usage.rss_growth:.1f} MB")


def seconds_of(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return float(out)


def decode_errors(path: Path) -> str:
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                          text=True).stderr.strip()


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
