"""A worker on another host than livekit-server and Redis, and the network between them failing briefly, lossy,
without UDP, behind a NAT, or a host dying.

The root namespace is the SFU host (``support.site``); each worker runs in a network namespace of its own
(``support.netns.Host``), and faults are nftables rules on its link. Each test asserts what an operator sees: the end
state in livekit-server's store, seconds of media in the file, and the worker's CPU and RSS during the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress
from support import netns
from support.egress_helpers import file_request, until, wait_status
from support.media import make_h264
from support.publisher import Publisher
from support.redis_server import RedisServer
from support.server import LiveKitServer, create_room
from support.site import (
    ENDED,
    RESUME,
    Site,
    decode_errors,
    frames_in,
    report,
    room,
    seconds_of,
    sent_seconds,
    worker_on,
)
from support.usage import Usage, sample
from support.worker_process import Worker

Status = egress.EgressStatus
# In the cpu lane, one e2e test at a time (see test_hosts_outages.py).
pytestmark = [pytest.mark.timing, pytest.mark.xdist_group("cpu")]


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
                since = len(carol.sent)  # frames the publisher had sent when recording began
                await asyncio.sleep(4)
                host.cut()
                usage = await sample(Usage(worker.pid), seconds=4)
                host.heal()
                await asyncio.sleep(8)
            left = len(carol.sent)
            info = await wait_status(client, started.egress_id, *ENDED, timeout=20)
    finally:
        worker.close()
    report("everything cut 4 s", 0.0, 0.0, usage)
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    expected = sent_seconds(since, left)
    assert abs(seconds_of(path) - expected) < 1.5, (seconds_of(path), expected)
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
                since = len(dan.sent)  # frames the publisher had sent when recording began
                await asyncio.sleep(5)
            left = len(dan.sent)
            info = await wait_status(client, started.egress_id, *ENDED, timeout=20)
    finally:
        worker.close()
    print(f"\nUDP blocked: ACTIVE {active_after:.2f}s after StartTrackEgress (over ICE-TCP)")
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    expected = sent_seconds(since, left)
    assert abs(seconds_of(path) - expected) < 1.5, (seconds_of(path), expected)


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


LOSSY_SECONDS = 20


@pytest.fixture(scope="module")
def lossy_h264(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of H.264 640x360 at 25 fps, a keyframe every 2 s (what the lossy-link comparison publishes)."""
    return make_h264(tmp_path_factory.mktemp("lossy") / "lossy.h264", seconds=LOSSY_SECONDS, fps=25, gop=50)


LOSS_SWEEP = (2, 5, 10)  # percent of the packets dropped each way


async def test_random_loss_on_the_worker_link_keeps_at_least_as_many_frames_as_a_libwebrtc_viewer(
    site: Site, host: netns.Host, lossy_h264: Path, tmp_path: Path,
) -> None:
    """2, 5 and 10 % of the packets dropped at random each way on the worker's host (NACKs and retransmissions
    too), a publisher that cannot answer a PLI, beside LiveKit's rtc SDK (libwebrtc) decoding on the same link:
    each recording completes and plays, and at 2 and 5 % it keeps no fewer frames than the viewer decoded. At 10 %
    a packet defeats all its NACKs in about one run of three (str0m NACKs a packet 5 times, livekit-server resends
    it at most 3 times: 21 % of attempts fail there) and costs the rest of the GOP, as this publisher cannot answer
    the PLI: the mean over runs is in the README (ours 475 of 500 in 8 runs, the viewer's 397), not asserted per
    run. The figures are printed (``pytest -s``)."""
    worker = worker_on(host, site, tmp_path / "w", media_protocols=["udp"]).start()
    rows: list[tuple[int, int, int | None, str]] = []  # (percent, frames kept, frames the viewer decoded, details)
    try:
        for percent in LOSS_SWEEP:
            kept, seen, details = await _record_under_loss(site, host, worker, lossy_h264, percent)
            rows.append((percent, kept, seen, details))
    finally:
        host.heal()
        worker.close()
    for percent, kept, seen, details in rows:
        print(f"\n{percent} % loss each way: recording kept {kept} of {LOSSY_SECONDS * 25} frames, the libwebrtc "
              f"viewer decoded {seen}; egress details: {details}")
    # Compared where the viewer gave its figure (the reference, not the subject: it gave none once in CI).
    compared = [(kept, seen) for percent, kept, seen, _ in rows if seen is not None and percent <= 5]
    assert compared, rows
    assert sum(kept for kept, _ in compared) >= sum(seen for _, seen in compared), rows


async def _record_under_loss(
    site: Site, host: netns.Host, worker: Worker, video: Path, percent: int,
) -> tuple[int, int | None, str]:
    """One publication of ``video`` recorded with ``percent`` % loss each way on ``host``'s link: the frames in
    the recording (which must be complete and decode), the frames the libwebrtc viewer decoded (None if it gave
    no figure), the egress details."""
    creds = (site.server.api_key, site.server.api_secret)
    async with room(site) as (client, name):
        async with Publisher(site.server.url, creds, name, "hal", video, start_delay=None, prime=True) as hal:
            viewer = await _viewer(host, site, name, hal.track_sid)
            started = await client.egress.start_track_egress(file_request(name, hal.track_sid, f"lossy{percent}.mp4"))
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
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    lines = out.decode().strip().splitlines()
    seen = json.loads(lines[-1]).get("frames") if lines else None
    return frames_in(path), seen, info.details


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
                since = len(ida.sent)  # frames the publisher had sent when recording began
                await asyncio.sleep(4)
            left = len(ida.sent)
            info = await wait_status(client, started.egress_id, *ENDED, timeout=20)
        finally:
            worker.close()
            await client.aclose()
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info
    path = worker.local_dir / info.file_results[0].filename
    assert decode_errors(path) == ""
    assert abs(seconds_of(path) - sent_seconds(since, left)) < 1.5
