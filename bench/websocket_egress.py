"""Benchmark: N concurrent audio WebSocket egresses of one published track, all in one worker process.

Starts a dev ``livekit-server`` on loopback and publishes a looping stereo Opus tone (20 ms frames, 64 kbit/s)
from a *separate* publisher process. For each N, a fresh receiver process (a ``websockets`` server that
timestamps every binary message with ``time.monotonic()``) and a fresh worker process start; the worker runs N
``Egress`` jobs with ``TrackEgressRequest(websocket_url=ws://127.0.0.1:<port>/egress/<i>)`` (decode to 48 kHz
stereo s16le PCM, 10 ms messages). Once all are ACTIVE and have settled, the worker measures its own CPU time
(user + sys, every thread), the frames it got, and its RSS over a fixed window. Receiver, publisher and server
CPU are not counted.

Delay, per PCM message sent during the window (CLOCK_MONOTONIC is system-wide, so the two processes' clocks
compare):
- end to end: receiver arrival - RTP arrival, where RTP arrival is ``EncodedFrame.arrival`` (when the media core's
  I/O thread read the datagram that completed the frame; with aiortc, before 2026-12-02: when the packet left our
  reorder buffer in the event loop, after its wait in the socket). Message k of a connection at the
  receiver is matched with the k-th message the sink sent (no reconnects, so none is lost or duplicated: checked);
- sink side: what ``Egress(on_delay=...)`` reports (RTP arrival → ``send()`` returned).
The sink's ``on_delay`` callback gets ``monotonic() - ready_at`` right after each send; the worker turns it back
into ``ready_at`` with one more ``monotonic()`` call (sub-microsecond error), so nothing in ``src/`` is patched.

    .venv/bin/python bench/websocket_egress.py                       # N=1,10,50,100,200 (about 4 minutes)
    .venv/bin/python bench/websocket_egress.py --counts 50 --profile

Every N is run, also past the point where the worker's event loop (one core) saturates: such a row is marked
"behind real time" and shows what happens (CPU, frames delivered, delay of what was sent). The worker runs on
uvloop, as ``trackegress`` does. Prints markdown tables (see bench/README.md). ``--profile`` runs cProfile over
the window in the worker (profiling slows pure-Python code: its CPU and delay numbers are inflated, use them for
shares only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import common  # bench/common.py; also puts tests/ on sys.path
import numpy as np
import uvloop
from livekit.protocol import egress
from support.media import make_opus_ogg
from support.server import LiveKitServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from trackegress.config import Config
from trackegress.room import native
from trackegress.sinks.websocket import SinkStats

DEFAULT_COUNTS = (1, 10, 50, 100, 200)  # the counts
FRAME_RATE = 50  # Opus 20 ms frames
MESSAGES_PER_SECOND = 100  # 10 ms of PCM each
MEDIA_SECONDS = 10.0  # the publisher loops the file
TARGET_P50_MS, TARGET_P99_MS = 30.0, 60.0
TARGET_CPU_MS, TARGET_RSS_MB = 4.0, 1.0  # per track-second (decode included), per extra egress
PATH = "/egress/"
STAGES = (
    *common.RECEIVE_STAGES,
    ("↳↳↳↳↳ `WebSocketSink.write` (PCM clock, queue, send)", "trackegress/sinks/websocket.py", "write"),
    ("↳↳↳↳↳↳ `PcmClock.push` (place on the timeline, cut 10 ms chunks)", "trackegress/sinks/pcm.py", "push"),
    ("↳↳↳↳↳↳ `WebSocketLink._write_queued` (frames, one transport write)", "trackegress/sinks/wslink.py",
     "_write_queued"),
    ("real-time clock timer: `WebSocketSink._tick`", "trackegress/sinks/websocket.py", "_tick"),
    ("sender task (reconnects, backpressure): `WebSocketLink._send_loop`", "trackegress/sinks/wslink.py",
     "_send_loop"),
    ("reader task: `WebSocketLink._read_loop`", "trackegress/sinks/wslink.py", "_read_loop"),
    *common.BACKGROUND_STAGES,
)  # fmt: skip


@dataclass(frozen=True)
class Job:
    """What one worker process measures."""

    count: int
    seconds: float
    warmup: float
    url: str
    api_key: str
    api_secret: str
    room: str
    track_sid: str
    receiver_url: str  # ws://127.0.0.1:<port>; egress i streams to <receiver_url>/egress/<i>
    out_dir: str  # where the worker leaves ready-<i>.f64 and sink-<i>.f64
    profile: bool
    profile_dir: str  # where to dump the raw cProfile stats ("" = nowhere)
    protocols: list[str]  # Config.media_protocols


@dataclass(frozen=True)
class Result:
    """One worker's measurement (delays are added by the orchestrator, from the receiver's timestamps)."""

    count: int
    window: float
    cpu_user: float
    cpu_sys: float
    rss_base_kb: int
    rss_active_kb: int  # at the end of the window, minus the bench's own timestamp arrays (bench_kb)
    bench_kb: int
    threads: int
    frames: int  # handed to the egresses during the window
    expected_frames: int
    start_seconds: float
    not_complete: int
    first: list[int]  # per egress: PCM messages sent before the window
    sent: list[int]  # per egress: PCM messages sent in all
    decode_seconds: float  # Opus decoding in the media core's I/O thread over the window, all egresses
    gap_ms: float  # zeros the PCM clock inserted over the window (lost packets, DTX), all egresses
    stall_ms: float  # zeros the real-time clock emitted (media late by > 60 ms)
    reconnects: int
    frames_lost: int
    machine_busy: float  # all CPUs of the machine (any process) over the window, 0..1
    loop_lag_p99_ms: float  # how late a 20 ms sleep in the worker woke up
    loop_lag_max_ms: float
    gc_count: int  # garbage collections in the worker over the window
    gc_max_ms: float
    profile: str

    @property
    def cpu_ms_per_second(self) -> float:
        return (self.cpu_user + self.cpu_sys) * 1000 / self.window

    @property
    def cpu_ms_per_track_second(self) -> float:
        return self.cpu_ms_per_second / self.count

    @property
    def sys_ms_per_track_second(self) -> float:
        """The kernel's part (syscalls: UDP in, TCP out incl. loopback delivery to the receiver, epoll)."""
        return self.cpu_sys * 1000 / (self.window * self.count)

    @property
    def saturated(self) -> bool:
        """It fell behind real time: frames missing, or more than 10 % of the audio replaced by the clock's zeros."""
        return self.frames < 0.99 * self.expected_frames or self.stall_ms > 0.1 * 1000 * self.window * self.count


@dataclass(frozen=True)
class Delays:
    """What the orchestrator matched (milliseconds)."""

    e2e: tuple[float, float, float]  # p50, p99, max: RTP arrival → receiver
    sink: tuple[float, float, float]  # p50, p99, max: RTP arrival → send() returned
    matched: int  # messages with both times
    expected: int  # messages the sinks sent during the window
    unmatched: list[str] = field(default_factory=list)  # egresses whose count differs at the receiver
    receiver_cpu: float = 0.0  # receiver process CPU % of one core while receiving


# ---------------------------------------------------------------------------------------------- orchestration


def run_bench(
    counts: list[int], seconds: float, warmup: float, profile: bool, profile_dir: str, protocols: list[str]
) -> None:
    """Server, media and a publisher process; one fresh receiver + worker process per N."""
    results: list[tuple[Result, Delays]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp, LiveKitServer() as server:
        media = make_opus_ogg(Path(tmp) / "tone.ogg", seconds=MEDIA_SECONDS)
        room = "bench-websocket"
        with common.publishing(server, room, media) as track_sid:
            for count in counts:
                print(f"bench: N={count} ...", file=sys.stderr, flush=True)
                with tempfile.TemporaryDirectory(prefix="bench-ws-") as out:
                    with receiving(Path(out)) as receiver_url:
                        job = Job(count, seconds, warmup, server.url, server.api_key, server.api_secret, room,
                                  track_sid, receiver_url, out, profile, profile_dir, protocols)  # fmt: skip
                        timeout = common.ACTIVE_TIMEOUT + warmup + seconds + common.STOP_TIMEOUT + 60
                        try:
                            result = Result(**common.run_worker(__file__, asdict(job), timeout, f"N={count}"))
                        except (RuntimeError, subprocess.TimeoutExpired):
                            print(f"bench: livekit-server log tail:\n{server.log_tail(60)}", file=sys.stderr)
                            raise
                    delays = match_delays(result, Path(out))
                results.append((result, delays))
                print(
                    f"bench: N={count}: delay p50 {delays.e2e[0]:.1f} ms, p99 {delays.e2e[1]:.1f} ms; "
                    f"{result.cpu_ms_per_track_second:.2f} CPU ms per track-second "
                    f"({result.sys_ms_per_track_second:.2f} sys); "
                    f"RSS {result.rss_active_kb / 1024:.1f} MB; {result.frames}/{result.expected_frames} frames; "
                    f"all ACTIVE after {result.start_seconds:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    print(report(results, seconds, warmup, profile, (load_before, os.getloadavg()[0]), protocols))
    for result, _ in results:
        if result.profile:
            print(f"\n### Profile: N={result.count} ({result.window:.0f} s window)\n")
            print(result.profile)


@contextlib.contextmanager
def receiving(out: Path) -> Iterator[str]:
    """A receiver child process; yields its base URL. On exit it writes what it got into ``out``."""
    command = [sys.executable, __file__, "--role", "receive", "--out", str(out)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"receiver exited with {proc.wait()}")
        yield f"ws://127.0.0.1:{json.loads(line)['port']}"
    finally:
        common.stop_child(proc)  # closes stdin: the receiver writes its files and exits


def match_delays(result: Result, out: Path) -> Delays:
    """Pair message k of each connection at the receiver with the k-th message its sink sent."""
    summary = json.loads((out / "receiver.json").read_text())
    connections: dict[str, list[int]] = summary["messages"]
    e2e, sink, unmatched = [], [], []
    expected = 0
    for i in range(result.count):
        ready = np.fromfile(out / f"ready-{i}.f64")
        expected += len(ready)
        got = connections.get(str(i), [])
        if len(got) != 1 or got[0] != result.sent[i]:
            unmatched.append(f"egress {i}: sent {result.sent[i]} messages, receiver got {got} (per connection)")
            continue
        first = result.first[i]
        arrivals = np.fromfile(out / f"arrivals-{i}.f64")[first : first + len(ready)]
        e2e.append(arrivals - ready)
        sink.append(np.fromfile(out / f"sink-{i}.f64"))

    def pct(parts: list[np.ndarray], *qs: float) -> tuple[float, ...]:
        if not parts:
            return tuple(float("nan") for _ in qs)
        pooled = np.concatenate(parts) * 1000
        return tuple(float(np.max(pooled)) if q == 100 else float(np.percentile(pooled, q)) for q in qs)

    e50, e99, emax = pct(e2e, 50, 99, 100)
    s50, s99, smax = pct(sink, 50, 99, 100)
    return Delays(
        e2e=(e50, e99, emax),
        sink=(s50, s99, smax),
        matched=sum(len(part) for part in e2e),
        expected=expected,
        unmatched=unmatched,
        receiver_cpu=float(summary["cpu_percent"]),
    )


# ---------------------------------------------------------------------------------------------- report


def report(
    results: list[tuple[Result, Delays]],
    seconds: float,
    warmup: float,
    profile: bool,
    load: tuple[float, float],
    protocols: list[str],
) -> str:
    """Two markdown tables (delay; cost), with the machine and the targets."""
    lines = [
        common.machine_line(seconds, warmup, profile, load) + f" media_protocols: {','.join(protocols)}.",
        "",
        "| N | delay p50 ms | delay p99 ms | delay max ms | sink-side p50 / p99 ms | messages matched "
        "| worker loop lag p99 / max ms | GC runs, longest ms | receiver CPU % | machine CPU busy % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, d in results:
        bad = f" ({len(d.unmatched)} egresses unmatched)" if d.unmatched else ""
        lines.append(
            f"| {r.count} | {d.e2e[0]:.1f} | {d.e2e[1]:.1f} | {d.e2e[2]:.1f} | {d.sink[0]:.1f} / {d.sink[1]:.1f} "
            f"| {d.matched} / {d.expected}{bad} | {r.loop_lag_p99_ms:.1f} / {r.loop_lag_max_ms:.1f} "
            f"| {r.gc_count}, {r.gc_max_ms:.1f} | {d.receiver_cpu:.0f} | {100 * r.machine_busy:.0f} |"
        )
    lines += [
        "",
        "| N | CPU ms per track-second | marginal CPU ms per extra track-second | of which decode ms "
        "| of which kernel (sys) ms | CPU % of one core | RSS MB total | RSS MB per extra egress | threads "
        "| frames in / expected | zeros inserted ms (gap / stall) | s until all ACTIVE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = results[0][0] if results else None
    for r, _ in results:
        assert base is not None
        if r is base:
            marginal = "—"
            rss_extra = f"(first: +{(r.rss_active_kb - r.rss_base_kb) / 1024 / r.count:.1f})"
        else:
            extra = r.count - base.count
            marginal = f"{(r.cpu_ms_per_second - base.cpu_ms_per_second) / extra:.2f}"
            rss_extra = f"{(r.rss_active_kb - base.rss_active_kb) / 1024 / extra:.2f}"
        notes = f", {r.not_complete} not COMPLETE" if r.not_complete else ""
        notes += f", {r.reconnects} reconnects, {r.frames_lost} lost" if r.reconnects or r.frames_lost else ""
        notes += ", **behind real time**" if r.saturated else ""
        decode = r.decode_seconds * 1000 / (r.count * r.window)
        lines.append(
            f"| {r.count} | {r.cpu_ms_per_track_second:.2f} | {marginal} | {decode:.2f} "
            f"| {r.sys_ms_per_track_second:.2f} | {r.cpu_ms_per_second / 10:.1f} | {r.rss_active_kb / 1024:.1f} "
            f"| {rss_extra} | {r.threads} "
            f"| {r.frames} / {r.expected_frames}{notes} | {r.gap_ms:.0f} / {r.stall_ms:.0f} "
            f"| {r.start_seconds:.1f} |"
        )
    lines += [""]
    lines += [
        f"Targets: delay p50 ≤ {TARGET_P50_MS:g} ms, p99 ≤ {TARGET_P99_MS:g} ms; ≤ {TARGET_CPU_MS:g} CPU ms per "
        f"track-second including decode; ≤ {TARGET_RSS_MB:g} MB per extra egress."
    ]
    for r, d in results:
        lines += [f"N={r.count}: {why}" for why in d.unmatched[:5]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- receiver


async def receive(out: Path) -> None:
    """A websockets server on 127.0.0.1 (any port, printed as JSON) that timestamps every binary message; on
    stdin EOF writes ``arrivals-<i>.f64`` (first connection of egress i) and ``receiver.json``, and exits."""
    arrivals: dict[str, list[array[float]]] = {}
    first_at = last_at = 0.0
    cpu_at_first = 0.0

    async def handler(ws: ServerConnection) -> None:
        nonlocal first_at, last_at, cpu_at_first
        assert ws.request is not None
        times: array[float] = array("d")
        arrivals.setdefault(ws.request.path.removeprefix(PATH), []).append(times)
        if not first_at:
            first_at, cpu_at_first = time.monotonic(), _cpu_seconds()
        append, now = times.append, time.monotonic
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    append(now())
        except ConnectionClosed:
            pass
        last_at = time.monotonic()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu = _cpu_seconds() - cpu_at_first
    for name, conns in arrivals.items():
        if conns:
            (out / f"arrivals-{name}.f64").write_bytes(conns[0].tobytes())
    busy = max(last_at - first_at, 1e-9)
    summary = {
        "messages": {name: [len(times) for times in conns] for name, conns in arrivals.items()},
        "cpu_percent": 100 * cpu / busy,
    }
    (out / "receiver.json").write_text(json.dumps(summary))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------- worker


class Probe:
    """``on_delay`` of one egress: counts the PCM messages sent and, while recording, keeps for each one when
    it was ready (its RTP arrival) and the sink-side delay (send returned - ready)."""

    __slots__ = ("first", "ready", "recording", "sent", "sink")

    def __init__(self) -> None:
        self.sent = self.first = 0
        self.recording = False
        self.ready: array[float] = array("d")
        self.sink: array[float] = array("d")

    def __call__(self, delay: float) -> None:
        self.sent += 1
        if self.recording:
            self.ready.append(time.monotonic() - delay)  # = the sink's ready_at, to well under a microsecond
            self.sink.append(delay)

    def start(self) -> None:
        self.first, self.recording = self.sent, True

    @property
    def nbytes(self) -> int:
        return sys.getsizeof(self.ready) + sys.getsizeof(self.sink)


def decode_seconds() -> float:
    """Seconds the media core spent decoding Opus so far, every peer of this process."""
    core = native._Core._instance  # the process's core
    return sum(t.decode_seconds for p in core.peers.values() for t in p.stats()) if core is not None else 0.0


async def measure(job: Job) -> Result:
    """Run ``job.count`` WebSocket egresses of the track; measure this process over the window."""
    probes = [Probe() for _ in range(job.count)]
    stats: dict[str, list[SinkStats]] = {}
    decoding: dict[str, float] = {}

    def request(index: int) -> egress.TrackEgressRequest:
        url = f"{job.receiver_url}{PATH}{index}"
        return egress.TrackEgressRequest(room_name=job.room, track_id=job.track_sid, websocket_url=url)

    def snapshot(edge: str) -> None:
        stats[edge] = [s for e in fleet.egresses if (s := e.stream_stats) is not None]
        decoding[edge] = decode_seconds()

    def on_start() -> None:
        for probe in probes:
            probe.start()
        snapshot("start")

    def on_end() -> None:
        for probe in probes:
            probe.recording = False
        snapshot("end")

    with tempfile.TemporaryDirectory(prefix="bench-egress-") as scratch:
        config = Config(ws_url=job.url, api_key=job.api_key, api_secret=job.api_secret, local_dir=Path(scratch),
                        media_protocols=tuple(job.protocols))
        fleet = common.Fleet(config, job.count, request, on_delay_for=probes.__getitem__)
        profile_path = Path(job.profile_dir) / f"websocket-{job.count}.pstats" if job.profile_dir else None
        w = await common.measure_window(
            fleet, job.warmup, job.seconds, profile=job.profile, profile_path=profile_path, stages=STAGES,
            on_start=on_start, on_end=on_end, monitor=common.LoopMonitor(),
        )  # fmt: skip
    final = [e.stream_stats for e in fleet.egresses]
    out = Path(job.out_dir)
    for i, probe in enumerate(probes):
        (out / f"ready-{i}.f64").write_bytes(probe.ready.tobytes())
        (out / f"sink-{i}.f64").write_bytes(probe.sink.tobytes())

    def delta(value: Callable[[SinkStats], float]) -> float:
        return sum(map(value, stats["end"])) - sum(map(value, stats["start"]))

    bench_kb = sum(probe.nbytes for probe in probes) // 1024
    return Result(
        count=job.count,
        window=w.seconds,
        cpu_user=w.cpu_user,
        cpu_sys=w.cpu_sys,
        rss_base_kb=w.rss_base_kb,
        rss_active_kb=w.rss_active_kb - bench_kb,
        bench_kb=bench_kb,
        threads=w.threads,
        frames=w.frames,
        expected_frames=round(job.count * w.seconds * FRAME_RATE),
        start_seconds=w.start_seconds,
        not_complete=w.not_complete,
        first=[probe.first for probe in probes],
        sent=[s.messages_sent if s is not None else 0 for s in final],
        decode_seconds=decoding["end"] - decoding["start"],
        gap_ms=delta(lambda s: s.clock.gap_samples) / 48,
        stall_ms=delta(lambda s: s.clock.stall_samples) / 48,
        reconnects=sum(s.reconnects for s in final if s is not None),
        frames_lost=sum(s.frames_lost for s in final if s is not None),
        machine_busy=w.machine_busy,
        loop_lag_p99_ms=w.loop_lag_ms[0],
        loop_lag_max_ms=w.loop_lag_ms[1],
        gc_count=w.gc_pause_ms[0],
        gc_max_ms=w.gc_pause_ms[2],
        profile=w.profile,
    )


# ---------------------------------------------------------------------------------------------- CLI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=common.counts_arg, help="egress counts (default 1,10,50,100,200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="settling time after all are ACTIVE (default 3)")
    parser.add_argument("--profile", action="store_true", help="cProfile the window; print where the time goes")
    parser.add_argument("--profile-dir", type=Path, help="also save the raw stats as DIR/websocket-<N>.pstats")
    parser.add_argument("--media-protocols", default="udp,tcp", help="the egresses' media_protocols (default udp,tcp)")
    # internal: the child processes
    parser.add_argument("--role", choices=("bench", "worker", "receive"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.setup_process(args.role)

    if args.role == "receive":
        asyncio.run(receive(args.out))
        return
    if args.role == "worker":
        common.print_result(uvloop.run(measure(Job(**json.loads(args.job)))))  # the event loop trackegress runs on
        return

    common.exit_on_sigterm()
    profile_dir = ""
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
        profile_dir = str(args.profile_dir.resolve())
    counts = args.counts or list(DEFAULT_COUNTS)
    protocols = args.media_protocols.split(",")
    run_bench(counts, args.seconds, args.warmup, args.profile or bool(profile_dir), profile_dir, protocols)


if __name__ == "__main__":
    main()
