"""Benchmark: N concurrent file egresses of one published track, all in one process.

Starts a dev ``livekit-server`` on loopback, publishes a looping Opus track (20 ms frames, 64 kbit/s) or H.264
track (1280x720, 30 fps, ~1 Mbit/s) from a *separate* publisher process, then, for each N, runs a fresh worker
process that records that track N times (``Egress`` → Ogg / fragmented MP4; the SFU forwards a copy to each
recorder). The N egresses are all started at once; once all are ACTIVE and have settled, the worker measures its
own CPU time (user + sys, every thread) and RSS over a fixed window. Publisher and server CPU are not counted.
``BENCH_LOG_LEVEL=INFO`` shows the egresses' states.

    .venv/bin/python bench/file_egress.py                       # audio N=1,10,50 and video N=1,5,20
    .venv/bin/python bench/file_egress.py --kind audio --counts 50 --profile

Prints a markdown table (see bench/README.md). ``--profile`` runs cProfile over the window in the worker
(profiling slows pure-Python code: its CPU numbers are inflated, use them for shares only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import common  # bench/common.py; also puts tests/ on sys.path
import uvloop
from common import Window
from livekit.protocol import egress
from support.media import FFMPEG, make_opus_ogg
from support.server import LiveKitServer

from trackegress.config import Config

KINDS = ("audio", "video")
DEFAULT_COUNTS = {"audio": (1, 10, 50), "video": (1, 5, 20)}
FRAME_RATE = {"audio": 50, "video": 30}  # Opus 20 ms frames; H.264 30 fps
VIDEO_SIZE = (1280, 720)
VIDEO_BITRATE = "1M"
MEDIA_SECONDS = 10.0  # the publishers loop the file
TARGETS = {"audio": (2.0, 1.0), "video": (15.0, 2.0)}  # CPU ms per track-second, RSS MB per extra egress
STAGES = (
    *common.RECEIVE_STAGES,
    ("↳↳↳↳↳ `Muxer.write` (PyAV mux + file write)", "trackegress/sinks/muxer.py", "write"),
    *common.BACKGROUND_STAGES,
)


@dataclass(frozen=True)
class Job:
    """What one worker process measures."""

    kind: str
    count: int
    seconds: float
    warmup: float
    url: str
    api_key: str
    api_secret: str
    room: str
    track_sid: str
    profile: bool
    profile_dir: str  # where to dump the raw cProfile stats ("" = nowhere)
    protocols: list[str]  # Config.media_protocols


@dataclass(frozen=True)
class Result:
    """One worker's measurement."""

    kind: str
    count: int
    window: float  # wall seconds of the measured window
    cpu_user: float  # seconds, the whole process (all threads) over the window
    cpu_sys: float
    rss_base_kb: int  # before the first egress was created
    rss_active_kb: int  # at the end of the window, every egress ACTIVE
    threads: int
    frames: int  # recorded during the window, all egresses
    expected_frames: int
    start_seconds: float  # from creating the egresses until all were ACTIVE
    not_complete: int  # egresses that did not end EGRESS_COMPLETE
    machine_busy: float  # all CPUs of the machine (any process) over the window, 0..1
    profile: str

    @property
    def cpu_ms_per_second(self) -> float:
        """Process CPU milliseconds per wall second (the whole N-egress load)."""
        return (self.cpu_user + self.cpu_sys) * 1000 / self.window

    @property
    def cpu_ms_per_track_second(self) -> float:
        return self.cpu_ms_per_second / self.count

    @property
    def sys_share(self) -> float:
        """Kernel time (syscalls: recvfrom, sendto, epoll, file writes) as a share of the process's CPU."""
        return self.cpu_sys / max(self.cpu_user + self.cpu_sys, 1e-9)

    @property
    def cpu_us_per_frame(self) -> float:
        return (self.cpu_user + self.cpu_sys) * 1e6 / max(self.frames, 1)


# ---------------------------------------------------------------------------------------------- orchestration


def run_bench(
    kinds: list[str], counts: dict[str, list[int]], seconds: float, warmup: float, profile: bool, profile_dir: str,
    protocols: list[str],
) -> None:
    """Server, media and one publisher process per kind; one fresh worker process per (kind, N)."""
    results: list[Result] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp, LiveKitServer() as server:
        media = {
            "audio": make_opus_ogg(Path(tmp) / "tone.ogg", seconds=MEDIA_SECONDS),
            "video": make_h264_1mbps(Path(tmp) / "testsrc2-720p.h264", seconds=MEDIA_SECONDS),
        }
        for kind in kinds:
            room = f"bench-{kind}"
            with common.publishing(server, room, media[kind]) as track_sid:
                for count in counts[kind]:
                    job = Job(kind, count, seconds, warmup, server.url, server.api_key, server.api_secret, room,
                              track_sid, profile, profile_dir, protocols)  # fmt: skip
                    print(f"bench: {kind} N={count} ...", file=sys.stderr, flush=True)
                    timeout = common.ACTIVE_TIMEOUT + warmup + seconds + common.STOP_TIMEOUT + 30
                    try:
                        result = Result(**common.run_worker(__file__, asdict(job), timeout, f"{kind} N={count}"))
                    except (RuntimeError, subprocess.TimeoutExpired):
                        print(f"bench: livekit-server log tail:\n{server.log_tail(60)}", file=sys.stderr)
                        raise
                    results.append(result)
                    print(
                        f"bench: {kind} N={count}: {result.cpu_ms_per_track_second:.2f} CPU ms per track-second "
                        f"({result.sys_share:.0%} sys), "
                        f"RSS {result.rss_active_kb / 1024:.1f} MB, {result.frames}/{result.expected_frames} frames, "
                        f"all ACTIVE after {result.start_seconds:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    print(report(results, seconds, warmup, profile, (load_before, os.getloadavg()[0]), protocols))
    for result in results:
        if result.profile:
            print(f"\n### Profile: {result.kind}, N={result.count} ({result.window:.0f} s window)\n")
            print(result.profile)


def make_h264_1mbps(path: Path, seconds: float) -> Path:
    """Like ``support.media.make_h264`` (Constrained Baseline 3.1, no B-frames, 1 s GOP, SPS/PPS on every IDR),
    at 1280x720 30 fps rate-controlled to ~1 Mbit/s."""
    width, height = VIDEO_SIZE
    subprocess.run(
        [
            FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={FRAME_RATE['video']}:duration={seconds}",
            "-c:v", "libx264", "-profile:v", "baseline", "-level", "3.1", "-pix_fmt", "yuv420p",
            "-g", "30", "-keyint_min", "30", "-sc_threshold", "0", "-bf", "0",
            "-b:v", VIDEO_BITRATE, "-maxrate", VIDEO_BITRATE, "-bufsize", VIDEO_BITRATE,
            "-x264-params", "repeat-headers=1",
            "-f", "h264", str(path),
        ],
        check=True,
    )  # fmt: skip
    return path


# ---------------------------------------------------------------------------------------------- report


def report(
    results: list[Result], seconds: float, warmup: float, profile: bool, load: tuple[float, float], protocols: list[str]
) -> str:
    """The markdown table, with the machine and the targets."""
    lines = [
        common.machine_line(seconds, warmup, profile, load) + f" media_protocols: {','.join(protocols)}.",
        "",
        "| kind | N | CPU ms per track-second | marginal CPU ms per extra track-second | CPU µs per frame "
        "| CPU % of one core | RSS MB total | RSS MB per extra egress | threads | frames recorded / expected "
        "| s until all ACTIVE | machine CPU busy % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        rows = sorted((r for r in results if r.kind == kind), key=lambda r: r.count)
        if not rows:
            continue
        base = rows[0]
        for r in rows:
            if r is base:
                marginal = "—"
                rss_extra = f"(first: +{(r.rss_active_kb - r.rss_base_kb) / 1024 / r.count:.1f})"
            else:
                extra = r.count - base.count
                marginal = f"{(r.cpu_ms_per_second - base.cpu_ms_per_second) / extra:.2f}"
                rss_extra = f"{(r.rss_active_kb - base.rss_active_kb) / 1024 / extra:.2f}"
            failed = f", {r.not_complete} not COMPLETE" if r.not_complete else ""
            lines.append(
                f"| {kind} | {r.count} | {r.cpu_ms_per_track_second:.2f} | {marginal} | {r.cpu_us_per_frame:.0f} "
                f"| {r.cpu_ms_per_second / 10:.1f} | {r.rss_active_kb / 1024:.1f} | {rss_extra} | {r.threads} "
                f"| {r.frames} / {r.expected_frames}{failed} | {r.start_seconds:.1f} | {100 * r.machine_busy:.0f} |"
            )
    targets = "; ".join(
        f"{kind} ≤ {cpu:g} ms per track-second and ≤ {rss:g} MB per extra egress"
        for kind, (cpu, rss) in TARGETS.items()
    )
    lines += ["", f"Targets: {targets}."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- worker


async def measure(job: Job) -> Result:
    """Run ``job.count`` egresses of the track; measure this process over the window."""
    with tempfile.TemporaryDirectory(prefix="bench-egress-") as out:
        config = Config(ws_url=job.url, api_key=job.api_key, api_secret=job.api_secret, local_dir=Path(out),
                        media_protocols=tuple(job.protocols))

        def request(index: int) -> egress.TrackEgressRequest:
            return egress.TrackEgressRequest(
                room_name=job.room, track_id=job.track_sid, file=egress.DirectFileOutput(filepath=f"bench/{index}")
            )

        fleet = common.Fleet(config, job.count, request)
        profile_path = Path(job.profile_dir) / f"{job.kind}-{job.count}.pstats" if job.profile_dir else None
        w: Window = await common.measure_window(
            fleet, job.warmup, job.seconds, profile=job.profile, profile_path=profile_path, stages=STAGES
        )
    return Result(
        kind=job.kind,
        count=job.count,
        window=w.seconds,
        cpu_user=w.cpu_user,
        cpu_sys=w.cpu_sys,
        rss_base_kb=w.rss_base_kb,
        rss_active_kb=w.rss_active_kb,
        threads=w.threads,
        frames=w.frames,
        expected_frames=round(job.count * w.seconds * FRAME_RATE[job.kind]),
        start_seconds=w.start_seconds,
        not_complete=w.not_complete,
        machine_busy=w.machine_busy,
        profile=w.profile,
    )


# ---------------------------------------------------------------------------------------------- CLI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=(*KINDS, "both"), default="both")
    parser.add_argument("--counts", type=common.counts_arg, help="egress counts (default audio 1,10,50; video 1,5,20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="settling time after all are ACTIVE (default 3)")
    parser.add_argument("--profile", action="store_true", help="cProfile the window; print where the time goes")
    parser.add_argument("--profile-dir", type=Path, help="also save the raw stats as DIR/<kind>-<N>.pstats")
    parser.add_argument("--media-protocols", default="udp,tcp", help="the egresses' media_protocols (default udp,tcp)")
    # internal: the worker child process
    parser.add_argument("--role", choices=("bench", "worker"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.setup_process(args.role)

    if args.role == "worker":
        common.print_result(uvloop.run(measure(Job(**json.loads(args.job)))))  # the event loop trackegress runs on
        return

    common.exit_on_sigterm()
    kinds = list(KINDS) if args.kind == "both" else [args.kind]
    counts = {kind: args.counts or list(DEFAULT_COUNTS[kind]) for kind in kinds}
    profile_dir = ""
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        profile_dir = str(args.profile_dir.resolve())
    protocols = args.media_protocols.split(",")
    run_bench(kinds, counts, args.seconds, args.warmup, args.profile or bool(profile_dir), profile_dir, protocols)


if __name__ == "__main__":
    main()
