"""What the benchmarks share: the publisher process, worker processes, the egress fleet, the measured window,
the markdown bits and the profile report.

``bench/file_egress.py`` and ``bench/websocket_egress.py`` import this as ``common`` (``bench/`` is on
``sys.path`` when a script in it runs). Run directly, it is the publisher child process:

    python bench/common.py --url ws://... --room R --media tone.ogg   # prints {"track_sid": ...}; stdin EOF: leave
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import logging
import os
import platform
import pstats
import resource
import signal
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support: server, media, publisher

from livekit.protocol import egress
from support.server import LiveKitServer

from trackegress.config import Config
from trackegress.egress import Egress
from trackegress.info import is_ended

ACTIVE_TIMEOUT = 120.0  # until every egress is ACTIVE
STOP_TIMEOUT = 60.0
RESULT_PREFIX = "RESULT "
TOP = 15

log = logging.getLogger("bench")
Status = egress.EgressStatus
DelayCallback = Callable[[float], None]


# ---------------------------------------------------------------------------------------------- child processes


@contextlib.contextmanager
def publishing(server: LiveKitServer, room: str, media: Path) -> Iterator[str]:
    """A child process publishing ``media`` (looped) into ``room``; yields the track SID."""
    command = [sys.executable, __file__, "--url", server.url, "--room", room, "--media", str(media)]
    env = os.environ | {"BENCH_API_KEY": server.api_key, "BENCH_API_SECRET": server.api_secret}
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"publisher for {room} exited with {proc.wait()}")
        yield str(json.loads(line)["track_sid"])
    finally:
        stop_child(proc)


def stop_child(proc: subprocess.Popen[str]) -> None:
    """Close its stdin (it leaves/finishes and exits), then terminate, then kill."""
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


def run_worker(script: str, job: dict[str, Any], timeout: float, what: str) -> dict[str, Any]:
    """Run ``script --role worker --job JSON`` in a fresh process (clean RSS baseline, nothing else on its event
    loop); its last ``RESULT {...}`` line, decoded."""
    command = [sys.executable, script, "--role", "worker", "--job", json.dumps(job)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker for {what} failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return result


def print_result(result: Any) -> None:
    """The worker's answer to ``run_worker`` (a dataclass, as JSON)."""
    print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)


async def publish(url: str, room: str, media: Path) -> None:
    """Publish ``media`` looped until stdin closes; print the track SID as one JSON line."""
    from support.publisher import Publisher  # only the publisher process needs it

    creds = (os.environ["BENCH_API_KEY"], os.environ["BENCH_API_SECRET"])
    async with Publisher(url, creds, room, f"{room}-publisher", media, loop=True, prime=True) as pub:
        print(json.dumps({"track_sid": pub.track_sid}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# ---------------------------------------------------------------------------------------------- worker


class Fleet:
    """``count`` egresses, ``request_for(i)`` each (``on_delay_for(i)`` as their ``on_delay``), all started at
    once (``start_concurrency`` limits how many may be STARTING together)."""

    def __init__(
        self,
        config: Config,
        count: int,
        request_for: Callable[[int], egress.TrackEgressRequest],
        *,
        on_delay_for: Callable[[int], DelayCallback | None] = lambda i: None,
        start_concurrency: int = 0,
    ) -> None:
        self._config = config
        self._count = count
        self._request_for = request_for
        self._on_delay_for = on_delay_for
        self._start_concurrency = start_concurrency or count
        self.egresses: list[Egress] = []
        self._runs: list[asyncio.Task[egress.EgressInfo]] = []

    @property
    def frames(self) -> int:
        return sum(e.frames for e in self.egresses)

    async def start_all(self) -> float:
        """Return once every egress is ACTIVE (has had a frame); the seconds that took."""
        started = time.monotonic()
        deadline = started + ACTIVE_TIMEOUT
        while True:
            self.check()
            starting = sum(1 for e in self.egresses if e.info.status == Status.EGRESS_STARTING)
            while len(self.egresses) < self._count and starting < self._start_concurrency:
                index = len(self.egresses)
                job = Egress(self._request_for(index), self._config, on_delay=self._on_delay_for(index))
                self.egresses.append(job)
                self._runs.append(asyncio.create_task(job.run()))
                starting += 1
            if len(self.egresses) == self._count and not starting:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(self.egresses) - starting} of {self._count} egresses ACTIVE "
                                   f"after {ACTIVE_TIMEOUT:g} s")  # fmt: skip
            await asyncio.sleep(0.1)

    def check(self) -> None:
        """Raise if an egress has ended (they should run until ``stop_all``)."""
        for e, run in zip(self.egresses, self._runs, strict=True):
            if run.done() or is_ended(e.info):
                raise RuntimeError(f"egress {e.egress_id} ended early: {e.info.error or e.info.details}")

    async def stop_all(self) -> list[egress.EgressInfo]:
        """Stop every egress; their final infos."""
        for e in self.egresses:
            e.stop()
        ended = await asyncio.wait_for(asyncio.gather(*self._runs, return_exceptions=True), STOP_TIMEOUT)
        return [info for info in ended if isinstance(info, egress.EgressInfo)]


class LoopMonitor:
    """Event-loop health over the window: how late a 20 ms sleep wakes up (lag), and garbage-collector pauses.
    Costs 50 wake-ups per second (about 1 CPU ms per second)."""

    INTERVAL = 0.020

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.gc_pauses: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._gc_started = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)

    async def _run(self) -> None:
        while True:
            due = time.monotonic() + self.INTERVAL
            await asyncio.sleep(self.INTERVAL)
            self.lags.append(time.monotonic() - due)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


@dataclass(frozen=True)
class Window:
    """What the worker process did over the measured window."""

    seconds: float  # wall seconds of the window
    cpu_user: float  # seconds, the whole process (all threads) over the window
    cpu_sys: float
    rss_base_kb: int  # before the first egress was created
    rss_active_kb: int  # at the end of the window, every egress ACTIVE
    threads: int
    frames: int  # handed to the egresses during the window
    start_seconds: float  # until every egress was ACTIVE
    not_complete: int  # egresses that did not end EGRESS_COMPLETE
    machine_busy: float  # share of all the machine's CPUs busy (any process) over the window, 0..1
    loop_lag_ms: tuple[float, float]  # p99, max of the event loop's wake-up lag ((0, 0) unless monitored)
    gc_pause_ms: tuple[int, float, float]  # collections, total ms, max ms ((0, 0, 0) unless monitored)
    profile: str


async def measure_window(
    fleet: Fleet,
    warmup: float,
    seconds: float,
    *,
    profile: bool = False,
    profile_path: Path | None = None,
    stages: Sequence[tuple[str, str, str]] = (),
    on_start: Callable[[], None] = lambda: None,
    on_end: Callable[[], None] = lambda: None,
    monitor: LoopMonitor | None = None,
) -> Window:
    """Start the fleet, wait ``warmup`` s once all are ACTIVE, then measure this process (CPU of every thread,
    frames) over ``seconds``; ``on_start``/``on_end`` run right at its edges, RSS is read right after
    ``on_end``. Stops the fleet in any case."""
    rss_base = proc_status("VmRSS")
    profiler = cProfile.Profile() if profile else None
    try:
        start_seconds = await fleet.start_all()
        await asyncio.sleep(warmup)
        fleet.check()
        frames_before = fleet.frames
        on_start()
        if monitor is not None:
            monitor.start()
        machine_before = machine_busy_jiffies()
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        await asyncio.sleep(seconds)
        if profiler is not None:
            profiler.disable()
        after, window = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
        machine_after = machine_busy_jiffies()
        if monitor is not None:
            monitor.stop()
        on_end()
        frames = fleet.frames - frames_before
        rss_active, threads = proc_status("VmRSS"), proc_status("Threads")
        fleet.check()
    finally:
        ended = await fleet.stop_all()
    if profiler is not None and profile_path is not None:
        profiler.dump_stats(profile_path)
    complete = sum(1 for info in ended if info.status == Status.EGRESS_COMPLETE)
    lags = sorted(monitor.lags) if monitor is not None and monitor.lags else [0.0]
    pauses = monitor.gc_pauses if monitor is not None else []
    busy, total = (a - b for a, b in zip(machine_after, machine_before, strict=True))
    return Window(
        seconds=window,
        cpu_user=after.ru_utime - before.ru_utime,
        cpu_sys=after.ru_stime - before.ru_stime,
        rss_base_kb=rss_base,
        rss_active_kb=rss_active,
        threads=threads,
        frames=frames,
        start_seconds=start_seconds,
        not_complete=len(fleet.egresses) - complete,
        machine_busy=busy / max(total, 1),
        loop_lag_ms=(1000 * lags[min(len(lags) - 1, int(0.99 * len(lags)))], 1000 * lags[-1]),
        gc_pause_ms=(len(pauses), 1000 * sum(pauses), 1000 * max(pauses, default=0.0)),
        profile=profile_report(profiler, stages) if profiler is not None else "",
    )


def proc_status(field: str) -> int:
    """A numeric field of /proc/self/status (VmRSS in kB, Threads)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


# ---------------------------------------------------------------------------------------------- report


def machine_line(seconds: float, warmup: float, profile: bool, load: tuple[float, float]) -> str:
    return (
        f"Machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}; "
        f"window {seconds:g} s after all egresses ACTIVE + {warmup:g} s warm-up; "
        f"1-min load average {load[0]:.2f} before, {load[1]:.2f} after."
        + (" **Profiled run: CPU inflated by cProfile.**" if profile else "")
    )


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------------------------------------- profile

_Key = tuple[str, int, str]
_Raw = dict[_Key, tuple[int, int, float, float, dict[_Key, tuple[int, int, float, float]]]]
_IDLE = "<method 'poll' of 'select.epoll' objects>"
_LOOP = "asyncio + selectors (event loop)"

# The per-packet receive path up to the egress, outermost first: (label, module, function); shares are cumulative.
RECEIVE_STAGES = (
    ("media core batch: drain the native core's events, build frames, dispatch (all below)",
     "trackegress/room/native.py", "drain"),
    ("↳ `Core.drain` (Rust: take the batch, one tuple + bytes per frame)", "~",
     "<method 'drain' of 'builtins.Core' objects>"),
    ("↳ `NativeTransport.queue_frame` (one `EncodedFrame` per frame)", "trackegress/room/native.py", "queue_frame"),
    ("↳ `TrackSubscriber.on_frames` (blank filter; includes below)", "trackegress/room/subscriber.py", "on_frames"),
    ("↳↳ `Egress.on_frame`", "trackegress/egress.py", "on_frame"),
)  # fmt: skip
BACKGROUND_STAGES = (
    ("signal WebSocket pings (`_ping_loop`)", "trackegress/room/signal.py", "_ping_loop"),
)  # fmt: skip


def profile_report(profiler: cProfile.Profile, stages: Sequence[tuple[str, str, str]], top: int = TOP) -> str:
    """Where the busy time went: ``stages`` (cumulative), by package and module (C builtins charged to their
    Python caller), then the top functions by own and by cumulative time (event-loop internals left out of the
    latter). Shares are of busy (non-``epoll``) profiled time."""
    raw: _Raw = pstats.Stats(profiler).__dict__["stats"]
    idle = sum(tt for key, (_, _, tt, _, _) in raw.items() if key[2] == _IDLE)
    busy = sum(tt for _, _, tt, _, _ in raw.values()) - idle

    def share(seconds: float) -> str:
        return f"{100 * seconds / busy:.1f} %" if busy else "-"

    lines = [
        f"Busy (profiled) {busy:.2f} s, idle in epoll {idle:.2f} s. Shares are of busy time.",
        "",
        "| stage (cumulative: includes the stages under it) | calls | share of busy |",
        "|---|---|---|",
    ]
    for label, module, function in stages:
        found = [
            (ct, calls) for key, (_, calls, _, ct, _) in raw.items() if key[2] == function and _short(key[0]) == module
        ]
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
        lines += [
            "",
            f"| top {top} by {title} | calls | tottime s | cumtime s | share of busy |",
            "|---|---|---|---|---|",
        ]
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


def counts_arg(text: str) -> list[int]:
    """``--counts 1,10,50``."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("counts must be positive integers, e.g. 1,10,50")
    return sorted(set(values))


def setup_process(role: str) -> None:
    """Logging (``BENCH_LOG_LEVEL=INFO`` shows the egresses' states) and warnings, in every bench process."""
    level = os.environ.get("BENCH_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format=f"{role}: %(asctime)s %(levelname)s %(name)s: %(message)s")
    # livekit-server --dev signs with the 6-byte secret "secret"
    warnings.filterwarnings("ignore", message="The HMAC key is .* bytes long")


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: child processes, the server and temp files are cleaned up."""

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)


def main() -> None:
    parser = argparse.ArgumentParser(description="bench publisher child process (see bench/common.py)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--media", type=Path, required=True)
    args = parser.parse_args()
    setup_process("publish")
    asyncio.run(publish(args.url, args.room, args.media))


if __name__ == "__main__":
    main()
