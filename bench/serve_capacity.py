"""Benchmark: N Opus -> Ogg egresses asked of ``trackegress serve`` at once, as an operator would (issue 22).

Starts a dev ``livekit-server`` on loopback, then, for each (processes, N), a separate publisher process (the
looping stereo Opus tone of ``file_egress.py``, a room of its own), a fresh ``trackegress serve`` with the DEFAULT
admission and ``processes: P`` (one API process in front of P egress processes; nothing else about CPU) and N
``StartTrackEgress`` calls sent together through LiveKit's Python client. It reports:

- admitted / refused (``resource_exhausted``) and how long until every admitted egress was ACTIVE (``ListEgress``
  polled every 20 ms, from the moment the first request was sent);
- the serve process tree's CPU (every process and thread, ``/proc``) per track-second over the window;
- after ``StopEgress`` for all: how many ended COMPLETE, and the Opus frames in their files (gap fillers not
  counted) against 50 per second of wall time from its ACTIVE to the StopEgress calls (a file "behind" has fewer
  than 98 % of them).

    .venv/bin/python bench/serve_capacity.py --processes 1 --counts 10,100 --seconds 10
    .venv/bin/python bench/serve_capacity.py --processes 1,2 --counts 150,250 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import av
import common  # bench/common.py; also puts tests/ on sys.path
from livekit import api
from livekit.protocol import egress
from support.egress_service import EgressService
from support.media import make_opus_ogg
from support.server import LiveKitServer

Status = egress.EgressStatus
POLL = 0.02
FRAMES_PER_SECOND = 50
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    processes: int
    asked: int
    admitted: int
    refused: int
    errors: int
    answered: float  # seconds from the first request until the last answer
    all_active: float  # seconds from the first request until every admitted egress was ACTIVE
    median_active: float
    cpu_ms_per_track_second: float
    complete: int
    behind: int  # files with fewer than 98 % of the frames their recorded duration should hold
    frames: int
    expected: int
    machine_busy: float

    def line(self) -> str:
        return (f"| {self.processes} | {self.asked} | {self.admitted} | {self.refused} | {self.errors} | "
                f"{self.answered:.2f} | {self.median_active:.2f} / {self.all_active:.2f} | "
                f"{self.cpu_ms_per_track_second:.2f} | "
                f"{self.complete} | {self.frames} / {self.expected} | {self.behind} | {self.machine_busy:.0%} |")


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants (live ones), every thread."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


async def one_run(server: LiveKitServer, room: str, track: str, processes: int, count: int, seconds: float,
                  workdir: Path) -> Row:
    service = EgressService(server, workdir, processes=processes, logging={"level": "info"})
    client = api.LiveKitAPI(service.url, server.api_key, server.api_secret)
    try:
        began = time.monotonic()
        answered: list[float] = []

        async def start(n: int) -> egress.EgressInfo:
            try:
                return await client.egress.start_track_egress(egress.TrackEgressRequest(
                    room_name=room, track_id=track, file=egress.DirectFileOutput(filepath=f"{n}.ogg")))
            finally:
                answered.append(time.monotonic() - began)

        answers = await asyncio.gather(*(start(n) for n in range(count)), return_exceptions=True)
        admitted = [a.egress_id for a in answers if isinstance(a, egress.EgressInfo)]
        refused = sum(1 for a in answers if isinstance(a, api.TwirpError) and a.code == "resource_exhausted")
        errors = {str(a) for a in answers if isinstance(a, BaseException)}
        if errors:
            print(f"bench: errors: {sorted(errors)[:3]}", file=sys.stderr)
        active_at: dict[str, float] = {}
        while len(active_at) < len(admitted) and time.monotonic() - began < 60:
            infos = await list_all(client, room)
            now = time.monotonic() - began
            for info in infos:
                if info.status == Status.EGRESS_ACTIVE and info.egress_id not in active_at:
                    active_at[info.egress_id] = now
            await asyncio.sleep(POLL)
        times = sorted(active_at.values()) or [0.0]
        await asyncio.sleep(3)  # warm-up
        cpu0, busy0 = tree_cpu_seconds(service.proc.pid), common.machine_busy_jiffies()
        await asyncio.sleep(seconds)
        cpu1, busy1 = tree_cpu_seconds(service.proc.pid), common.machine_busy_jiffies()
        stopped_at = time.monotonic() - began
        await asyncio.gather(*(client.egress.stop_egress(egress.StopEgressRequest(egress_id=e)) for e in admitted),
                             return_exceptions=True)
        ended = await wait_ended(client, room, admitted)
    finally:
        await client.aclose()
        service.stop()
    frames = expected = behind = 0
    print(f"bench: ended {sorted({(Status.Name(i.status), i.error) for i in ended})[:3]}", file=sys.stderr)
    for info in ended:
        if info.status != Status.EGRESS_COMPLETE or not info.file_results:
            continue
        got = count_packets(Path(info.file_results[0].location))
        should = round((stopped_at - active_at.get(info.egress_id, stopped_at)) * FRAMES_PER_SECOND)
        frames, expected, behind = frames + got, expected + should, behind + (got < 0.98 * should)
    busy = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)
    return Row(processes, count, len(admitted), refused, count - len(admitted) - refused, max(answered), times[-1],
               times[len(times) // 2], (cpu1 - cpu0) * 1000 / seconds / max(len(admitted), 1),
               sum(1 for i in ended if i.status == Status.EGRESS_COMPLETE), behind, frames, expected, busy)


async def list_all(client: api.LiveKitAPI, room: str) -> list[egress.EgressInfo]:
    """Every egress of ``room``, page after page."""
    infos: list[egress.EgressInfo] = []
    request = egress.ListEgressRequest(room_name=room)
    while True:
        page = await client.egress.list_egress(request)
        infos.extend(page.items)
        if not page.next_page_token.token:
            return infos
        request.page_token.token = page.next_page_token.token


async def wait_ended(client: api.LiveKitAPI, room: str, ids: list[str]) -> list[egress.EgressInfo]:
    deadline = time.monotonic() + 60
    while True:
        mine = [i for i in await list_all(client, room) if i.egress_id in set(ids)]
        if all(i.status not in (Status.EGRESS_STARTING, Status.EGRESS_ACTIVE, Status.EGRESS_ENDING) for i in mine) \
                or time.monotonic() > deadline:
            return mine
        await asyncio.sleep(0.5)


def count_packets(path: Path) -> int:
    """Opus frames in the file (not the 1-byte fillers of gaps)."""
    with av.open(str(path)) as container:
        return sum(1 for p in container.demux() if p.size > 2)


async def run(processes: list[int], counts: list[int], seconds: float) -> None:
    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, LiveKitServer() as server:
        media = make_opus_ogg(Path(tmp) / "tone.ogg", seconds=10.0)
        for procs in processes:
            for count in counts:
                print(f"bench: processes={procs} N={count} ...", file=sys.stderr, flush=True)
                room = f"bench-serve-{procs}-{count}"  # a fresh publisher each run (one that died ends only its run)
                with common.publishing(server, room, media) as track:
                    workdir = Path(tmp) / f"p{procs}-n{count}"
                    rows.append(await one_run(server, room, track, procs, count, seconds, workdir))
                print(rows[-1].line(), file=sys.stderr, flush=True)
    print("| processes | N asked | admitted | refused | other errors | s until the last answer | "
          "s until ACTIVE (median / all) | "
          "serve CPU ms per track-second | COMPLETE | Opus frames in the files / expected | files behind | "
          "machine busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    print(f"\n{os.cpu_count()} CPUs ({common.cpu_model()}), window {seconds:g} s after a 3 s warm-up, 1-minute load "
          f"{load:.1f} -> {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=common.counts_arg, default=[1])
    parser.add_argument("--counts", type=common.counts_arg, default=[10, 100])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    common.setup_process("main")
    asyncio.run(run(args.processes, args.counts, args.seconds))


if __name__ == "__main__":
    main()
