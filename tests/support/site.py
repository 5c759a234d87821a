"""The multi-host tests' SFU host and what they share: the root namespace runs livekit-server v1.13.5 and
redis-server bound to a veth address (and the publisher beside them); each worker runs on a ``netns.Host``."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from livekit import api
from livekit.protocol import egress

from . import netns
from .redis_server import RedisServer
from .server import LiveKitServer, temporary_room
from .usage import Usage
from .worker_process import Worker

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


@contextlib.contextmanager
def open_site() -> Iterator[Site]:
    """livekit-server and Redis on the root namespace, bound to the link of a first worker host."""
    with netns.Host("w") as host, RedisServer(also_bind=host.sfu_ip) as redis, \
            LiveKitServer(redis_address=redis.address, host_ip=host.sfu_ip) as server:
        yield Site(host, redis, server)


def room(site: Site) -> contextlib.AbstractAsyncContextManager[tuple[api.LiveKitAPI, str]]:
    """An API client and a fresh room on the site's livekit-server (deleted afterwards)."""
    return temporary_room(site.server, "hosts")


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


def frames_in(path: Path) -> int:
    """Video packets in ``path``'s first video stream."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                          "stream=nb_read_packets", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out)


def sent_seconds(first: int, last: int) -> float:
    """Seconds of the 20 ms Opus frames a publisher sent between two counts of ``Publisher.sent`` (under load
    the publisher falls behind the wall clock: what it sent is what the recording can hold)."""
    return (last - first) * 0.020
