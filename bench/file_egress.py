"""Benchmark: N concurrent file egresses of one published track, all in one process.

Starts a dev ``livekit-server`` on loopback, publishes a looping Opus track (20 ms frames, 64 kbit/s) or H.264
track (1280x720, 30 fps, ~1 Mbit/s) from a *separate* publisher process, then, for each N, runs a fresh worker
process that records that track N times (``Egress`` → Ogg / fragmented MP4; the SFU forwards a copy to each
recorder). The worker waits until every egress is ACTIVE, lets them settle, then measures its own CPU time
(user + sys, every thread) and RSS over a fixed window. Publisher and server CPU are not counted.

    .venv/bin/python bench/file_egress.py                       # audio N=1,10,50 and video N=1,5,20
    .venv/bin/python bench/file_egress.py --kind audio --counts 50 --profile

Prints a markdown table (see bench/README.md). ``--profile`` runs cProfile over the window in the worker
(profiling slows pure-Python code: its CPU numbers are inflated, use them for shares only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import platform
import pstats
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support: server, media, publisher

from livekit.protocol import egress
from support.media import FFMPEG, make_opus_ogg
from support.server import LiveKitServer

from trackegress.config import Config
from trackegress.egress import Egress, is_ended

KINDS = ("audio", "video")
DEFAULT_COUNTS = {"audio": (1, 10, 50), "video": (1, 5, 20)}
FRAME_RATE = {"audio": 50, "video": 30}  # Opus 20 ms frames; H.264 30 fps
VIDEO_SIZE = (1280, 720)
VIDEO_BITRATE = "1M"
MEDIA_SECONDS = 10.0  # the publishers loop the file
TARGETS = {"audio": (2.0, 1.0), "video": (15.0, 2.0)}  # CPU ms per track-second, RSS MB per extra egress
ACTIVE_TIMEOUT = 120.0  # until every egress is ACTIVE
START_CONCURRENCY = 4  # egresses joining at the same time
STUCK_AFTER = 15.0  # seconds in STARTING before an egress is replaced (see Fleet)
STOP_TIMEOUT = 60.0
RESULT_PREFIX = "RESULT "
TOP = 15

log = logging.getLogger("bench")
Status = egress.EgressStatus


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
    not_complete: int  # egresses that did not end EGRESS_COMPLETE
    replaced: int  # egresses replaced because they were stuck in STARTING (see Fleet)
    profile: str

    @property
    def cpu_ms_per_second(self) -> float:
        """Process CPU milliseconds per wall second (the whole N-egress load)."""
        return (self.cpu_user + self.cpu_sys) * 1000 / self.window

    @property
    def cpu_ms_per_track_second(self) -> float:
        return self.cpu_ms_per_second / self.count

    @property
    def cpu_us_per_frame(self) -> float:
        return (self.cpu_user + self.cpu_sys) * 1e6 / max(self.frames, 1)


# ---------------------------------------------------------------------------------------------- orchestration


def run_bench(
    kinds: list[str], counts: dict[str, list[int]], seconds: float, warmup: float, profile: bool, profile_dir: str
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
            with publishing(server, room, media[kind]) as track_sid:
                for count in counts[kind]:
                    job = Job(kind, count, seconds, warmup, server.url, server.api_key, server.api_secret, room,
                              track_sid, profile, profile_dir)
                    print(f"bench: {kind} N={count} ...", file=sys.stderr, flush=True)
                    try:
                        result = run_worker(job)
                    except (RuntimeError, subprocess.TimeoutExpired):
                        print(f"bench: livekit-server log tail:\n{server.log_tail(60)}", file=sys.stderr)
                        raise
                    results.append(result)
                    print(f"bench: {kind} N={count}: {result.cpu_ms_per_track_second:.2f} CPU ms per track-second, "
                          f"RSS {result.rss_active_kb / 1024:.1f} MB, {result.frames}/{result.expected_frames} frames, "
                          f"{result.replaced} replaced at start",
                          file=sys.stderr, flush=True)
    print(report(results, seconds, warmup, profile, (load_before, os.getloadavg()[0])))
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


@contextlib.contextmanager
def publishing(server: LiveKitServer, room: str, media: Path) -> Iterator[str]:
    """A child process publishing ``media`` (looped) into ``room``; yields the track SID."""
    command = [sys.executable, __file__, "--role", "publish", "--url", server.url, "--room", room,
               "--media", str(media)]
    env = os.environ | {"BENCH_API_KEY": server.api_key, "BENCH_API_SECRET": server.api_secret}
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"publisher for {room} exited with {proc.wait()}")
        yield str(json.loads(line)["track_sid"])
    finally:
        _stop_child(proc)


def _stop_child(proc: subprocess.Popen[str]) -> None:
    """Close its stdin (it leaves the room and exits), then terminate, then kill."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    for action in (None, proc.terminate, proc.kill):
        if action is not None:
            action()
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.stdout is not None:
        proc.stdout.close()


def run_worker(job: Job) -> Result:
    """Measure ``job`` in a fresh process (clean RSS baseline, nothing else on its event loop)."""
    command = [sys.executable, __file__, "--role", "worker", "--job", json.dumps(asdict(job))]
    timeout = ACTIVE_TIMEOUT + job.warmup + job.seconds + STOP_TIMEOUT + 30
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker for {job.kind} N={job.count} failed (exit {done.returncode})")
    return Result(**json.loads(lines[-1].removeprefix(RESULT_PREFIX)))


# ---------------------------------------------------------------------------------------------- report


def report(results: list[Result], seconds: float, warmup: float, profile: bool, load: tuple[float, float]) -> str:
    """The markdown table, with the machine and the targets."""
    lines = [
        f"Machine: {os.cpu_count()} CPUs, {_cpu_model()}, Python {platform.python_version()}; "
        f"window {seconds:g} s after all egresses ACTIVE + {warmup:g} s warm-up; "
        f"1-min load average {load[0]:.2f} before, {load[1]:.2f} after."
        + (" **Profiled run: CPU inflated by cProfile.**" if profile else ""),
        "",
        "| kind | N | CPU ms per track-second | marginal CPU ms per extra track-second | CPU µs per frame "
        "| CPU % of one core | RSS MB total | RSS MB per extra egress | threads | frames recorded / expected |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
            failed += f", {r.replaced} replaced at start" if r.replaced else ""
            lines.append(
                f"| {kind} | {r.count} | {r.cpu_ms_per_track_second:.2f} | {marginal} | {r.cpu_us_per_frame:.0f} "
                f"| {r.cpu_ms_per_second / 10:.1f} | {r.rss_active_kb / 1024:.1f} | {rss_extra} | {r.threads} "
                f"| {r.frames} / {r.expected_frames}{failed} |"
            )
    targets = "; ".join(f"{kind} ≤ {cpu:g} ms per track-second and ≤ {rss:g} MB per extra egress"
                        for kind, (cpu, rss) in TARGETS.items())
    lines += ["", f"Targets: {targets}."]
    return "\n".join(lines)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------------------------------------- publisher


async def publish(url: str, room: str, media: Path) -> None:
    """Publish ``media`` looped until stdin closes; print the track SID as one JSON line."""
    from support.publisher import Publisher  # only the publisher process needs it

    creds = (os.environ["BENCH_API_KEY"], os.environ["BENCH_API_SECRET"])
    async with Publisher(url, creds, room, f"{room}-publisher", media, loop=True, prime=True) as pub:
        print(json.dumps({"track_sid": pub.track_sid}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# ---------------------------------------------------------------------------------------------- worker


async def measure(job: Job) -> Result:
    """Run ``job.count`` egresses of the track; measure this process over the window."""
    with tempfile.TemporaryDirectory(prefix="bench-egress-") as out:
        config = Config(ws_url=job.url, api_key=job.api_key, api_secret=job.api_secret, local_dir=Path(out))
        rss_base = _proc_status("VmRSS")
        fleet = Fleet(job, config)
        profiler = cProfile.Profile() if job.profile else None
        try:
            await fleet.start_all()
            await asyncio.sleep(job.warmup)
            fleet.check()
            frames_before = fleet.frames
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            await asyncio.sleep(job.seconds)
            if profiler is not None:
                profiler.disable()
                if job.profile_dir:
                    profiler.dump_stats(Path(job.profile_dir) / f"{job.kind}-{job.count}.pstats")
            after, window = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
            frames = fleet.frames - frames_before
            rss_active, threads = _proc_status("VmRSS"), _proc_status("Threads")
            fleet.check()
        finally:
            ended = await fleet.stop_all()
    complete = sum(1 for info in ended if info.status == Status.EGRESS_COMPLETE)
    return Result(
        kind=job.kind,
        count=job.count,
        window=window,
        cpu_user=after.ru_utime - before.ru_utime,
        cpu_sys=after.ru_stime - before.ru_stime,
        rss_base_kb=rss_base,
        rss_active_kb=rss_active,
        threads=threads,
        frames=frames,
        expected_frames=round(job.count * window * FRAME_RATE[job.kind]),
        not_complete=job.count - complete,
        replaced=fleet.replaced,
        profile=profile_report(profiler) if profiler is not None else "",
    )


class Fleet:
    """``job.count`` egresses of the track, started ``START_CONCURRENCY`` at a time.

    An egress still STARTING ``STUCK_AFTER`` seconds after it was created is stopped and replaced (counted in
    ``replaced``). That works around a start-up race seen under load: when the SFU's offer adding the track
    is applied while the bundle's DTLS handshake is still running, aiortc never calls ``receiver.receive()``
    for the new transceiver (its two ``__connect`` tasks both skip it), so the connection is up, SRTP packets
    arrive, and the RTP router drops every one of them.
    """

    def __init__(self, job: Job, config: Config) -> None:
        self._job = job
        self._config = config
        self.egresses: list[Egress] = []
        self._runs: list[asyncio.Task[egress.EgressInfo]] = []
        self._created: list[float] = []
        self._retired: list[asyncio.Task[egress.EgressInfo]] = []
        self.replaced = 0

    @property
    def frames(self) -> int:
        return sum(e.frames for e in self.egresses)

    async def start_all(self) -> None:
        """Return once every egress is ACTIVE (has recorded a frame)."""
        deadline = time.monotonic() + ACTIVE_TIMEOUT
        while True:
            self.check()
            now = time.monotonic()
            starting = [i for i, e in enumerate(self.egresses) if e.info.status == Status.EGRESS_STARTING]
            for i in starting:
                if now - self._created[i] > STUCK_AFTER:
                    log.warning("egress %s still STARTING after %g s: replaced", self.egresses[i].egress_id,
                                STUCK_AFTER)
                    self.egresses[i].stop()
                    self._retired.append(self._runs[i])
                    self._launch(i)
                    self.replaced += 1
            while len(self.egresses) < self._job.count and len(starting) < START_CONCURRENCY:
                starting.append(len(self.egresses))
                self._launch(len(self.egresses))
            if len(self.egresses) == self._job.count and not starting:
                return
            if now > deadline:
                raise RuntimeError(f"only {self._job.count - len(starting)} of {self._job.count} egresses ACTIVE "
                                   f"after {ACTIVE_TIMEOUT:g} s")
            await asyncio.sleep(0.1)

    def check(self) -> None:
        """Raise if an egress has ended (they should run until ``stop_all``)."""
        for e, run in zip(self.egresses, self._runs, strict=True):
            if run.done() or is_ended(e.info):
                raise RuntimeError(f"egress {e.egress_id} ended early: {e.info.error or e.info.details}")

    async def stop_all(self) -> list[egress.EgressInfo]:
        """Stop every egress; the final infos of the current ones (not of replaced ones)."""
        for e in self.egresses:
            e.stop()
        runs = asyncio.gather(*self._runs, *self._retired, return_exceptions=True)
        ended = await asyncio.wait_for(runs, STOP_TIMEOUT)
        return [info for info in ended[: len(self._runs)] if isinstance(info, egress.EgressInfo)]

    def _launch(self, index: int) -> None:
        request = egress.TrackEgressRequest(
            room_name=self._job.room, track_id=self._job.track_sid,
            file=egress.DirectFileOutput(filepath=f"bench/{index}"),
        )  # fmt: skip
        job = Egress(request, self._config)
        run = asyncio.create_task(job.run())
        if index == len(self.egresses):
            self.egresses.append(job)
            self._runs.append(run)
            self._created.append(time.monotonic())
        else:
            self.egresses[index], self._runs[index], self._created[index] = job, run, time.monotonic()


def _proc_status(field: str) -> int:
    """A numeric field of /proc/self/status (VmRSS in kB, Threads)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


# ---------------------------------------------------------------------------------------------- profile

_Key = tuple[str, int, str]
_Raw = dict[_Key, tuple[int, int, float, float, dict[_Key, tuple[int, int, float, float]]]]
_IDLE = "<method 'poll' of 'select.epoll' objects>"
_LOOP = "asyncio + selectors (event loop)"
# The per-packet receive path, outermost first: (label, module, function); shares are cumulative.
STAGES = (
    ("aiortc DTLS transport loop, per packet: ICE queue get, SRTP, RTP parse/route, receiver (all below)",
     "aiortc/rtcdtlstransport.py", "__run"),
    ("↳ SRTP unprotect (pylibsrtp, incl. its cffi wrapper)", "pylibsrtp/__init__.py", "unprotect"),
    ("↳ RTP parse + route + receiver", "aiortc/rtcdtlstransport.py", "_handle_rtp_data"),
    ("↳↳ `RTCRtpReceiver._handle_rtp_packet` (stats, NACK, depayload, buffer, tap)", "aiortc/rtcrtpreceiver.py",
     "_handle_rtp_packet"),
    ("↳↳↳ aiortc `JitterBuffer.add` (video)", "aiortc/jitterbuffer.py", "add"),
    ("↳↳↳ our `AudioReorderBuffer.add` (audio; includes the tap)", "trackegress/room/reorder.py", "add"),
    ("↳↳↳ our `TrackTap.push` (blank filter, keyframe check; includes below)", "trackegress/room/subscriber.py",
     "push"),
    ("↳↳↳↳ `Egress.on_frame`", "trackegress/egress.py", "on_frame"),
    ("↳↳↳↳↳ `Muxer.write` (PyAV mux + file write)", "trackegress/sinks/muxer.py", "write"),
    ("datagram in: selector callback → aioice `datagram_received` (STUN check, queue put)", "aioice/ice.py",
     "datagram_received"),
    ("RTCP receiver reports (aiortc `_run_rtcp`)", "aiortc/rtcrtpreceiver.py", "_run_rtcp"),
    ("ICE consent checks (aioice `query_consent`)", "aioice/ice.py", "query_consent"),
    ("signal WebSocket pings (`_ping_loop`)", "trackegress/room/signal.py", "_ping_loop"),
)  # fmt: skip


def profile_report(profiler: cProfile.Profile, top: int = TOP) -> str:
    """Where the busy time went: the receive path stage by stage (cumulative), by package and module (C
    builtins charged to their Python caller), then the top functions by own and by cumulative time (event-loop
    internals left out of the latter). Shares are of busy (non-``epoll``) profiled time."""
    raw: _Raw = pstats.Stats(profiler).__dict__["stats"]
    idle = sum(tt for key, (_, _, tt, _, _) in raw.items() if key[2] == _IDLE)
    busy = sum(tt for _, _, tt, _, _ in raw.values()) - idle

    def share(seconds: float) -> str:
        return f"{100 * seconds / busy:.1f} %" if busy else "-"

    lines = [f"Busy (profiled) {busy:.2f} s, idle in epoll {idle:.2f} s. Shares are of busy time.", "",
             "| receive path stage (cumulative: includes the stages under it) | calls | share of busy |",
             "|---|---|---|"]
    for label, module, function in STAGES:
        found = [(ct, calls) for key, (_, calls, _, ct, _) in raw.items()
                 if key[2] == function and _short(key[0]) == module]
        if found:
            ct, calls = max(found)
            lines.append(f"| {label} | {calls} | {share(ct)} |")
    by_module = _self_time_by_module(raw)
    by_package: dict[str, float] = defaultdict(float)
    for module, tt in by_module.items():
        by_package[_package(module)] += tt
    lines += ["", "| package (own time + C calls it makes) | share of busy |", "|---|---|"]
    lines += [f"| {name} | {share(tt)} |" for name, tt in sorted(by_package.items(), key=lambda kv: -kv[1])]
    lines += ["", "| module (own time + C calls it makes) | share of busy |", "|---|---|"]
    lines += [f"| {name} | {share(tt)} |" for name, tt in sorted(by_module.items(), key=lambda kv: -kv[1])[:top]]
    rows = [(key, calls, tt, ct) for key, (_, calls, tt, ct, _) in raw.items() if key[2] != _IDLE]
    outer = [row for row in rows if not _in_loop(row[0])]
    for title, cumulative, ranked in (("own time (tottime)", False, rows), ("cumulative time", True, outer)):
        lines += ["", f"| top {top} by {title} | calls | tottime s | cumtime s | share of busy |",
                  "|---|---|---|---|---|"]
        for key, calls, tt, ct in sorted(ranked, key=lambda row: -(row[3] if cumulative else row[2]))[:top]:
            lines.append(f"| `{_label(key)}` | {calls} | {tt:.3f} | {ct:.3f} | {share(ct if cumulative else tt)} |")
    return "\n".join(lines)


def _self_time_by_module(raw: _Raw) -> dict[str, float]:
    """Own time per source file; a C builtin's time is charged to the files that called it."""
    by_module: dict[str, float] = defaultdict(float)
    for key, (_, _, tt, _, callers) in raw.items():
        if key[2] == _IDLE:
            continue
        if key[0] != "~":
            by_module[_short(key[0])] += tt
            continue
        charged = 0.0
        for caller, (_, _, caller_tt, _) in callers.items():
            by_module[_short(caller[0]) if caller[0] != "~" else "(builtins)"] += caller_tt
            charged += caller_tt
        if tt > charged:
            by_module["(builtins)"] += tt - charged
    return by_module


def _in_loop(key: _Key) -> bool:
    """Event-loop plumbing whose cumulative time is everything (and includes the idle wait)."""
    return (key[0] == "~" and "Context" in key[2]) or _package(_short(key[0])) == _LOOP


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", f"python{sys.version_info.major}.{sys.version_info.minor}/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _package(module: str) -> str:
    top = module.split("/", 1)[0]
    if top in ("asyncio", "selectors.py", "socket.py", "ssl.py"):
        return _LOOP
    if top.endswith(".py") or top in ("json", "concurrent", "logging", "email", "importlib", "collections"):
        return "stdlib (other)"
    if not top or top.startswith("<") or top == "(builtins)":
        return "other"
    return top


def _label(key: _Key) -> str:
    filename, line, name = key
    return name if filename == "~" else f"{_short(filename)}:{line}({name})"


# ---------------------------------------------------------------------------------------------- CLI


def _counts(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("counts must be positive integers, e.g. 1,10,50")
    return sorted(set(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=(*KINDS, "both"), default="both")
    parser.add_argument("--counts", type=_counts, help="egress counts (default audio 1,10,50; video 1,5,20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="settling time after all are ACTIVE (default 3)")
    parser.add_argument("--profile", action="store_true", help="cProfile the window; print where the time goes")
    parser.add_argument("--profile-dir", type=Path, help="also save the raw stats as DIR/<kind>-<N>.pstats")
    # internal: the child processes
    parser.add_argument("--role", choices=("bench", "publish", "worker"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--room", help=argparse.SUPPRESS)
    parser.add_argument("--media", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    level = os.environ.get("BENCH_LOG_LEVEL", "WARNING").upper()  # e.g. BENCH_LOG_LEVEL=INFO for egress states
    logging.basicConfig(level=level, format=f"{args.role}: %(asctime)s %(levelname)s %(name)s: %(message)s")
    # livekit-server --dev signs with the 6-byte secret "secret"
    warnings.filterwarnings("ignore", message="The HMAC key is .* bytes long")

    if args.role == "publish":
        asyncio.run(publish(args.url, args.room, args.media))
        return
    if args.role == "worker":
        job = Job(**json.loads(args.job))
        result = asyncio.run(measure(job))
        print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
        return

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds: publishers, server and temp files are cleaned up

    signal.signal(signal.SIGTERM, terminated)
    kinds = list(KINDS) if args.kind == "both" else [args.kind]
    counts = {kind: args.counts or list(DEFAULT_COUNTS[kind]) for kind in kinds}
    profile_dir = ""
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        profile_dir = str(args.profile_dir.resolve())
    run_bench(kinds, counts, args.seconds, args.warmup, args.profile or bool(profile_dir), profile_dir)


if __name__ == "__main__":
    main()
