"""File egress through the impairment relay (issue 15): one H.264 recording per network profile.

Each row: a fresh livekit-server whose media goes through ``tests/support/impair.UdpRelay`` (downlink impaired,
seeded), a 6 s 640x360 30 fps H.264 file (keyframe every 2 s) published by the test publisher, recorded by an
in-process egress. Prints a markdown table: frames published, recorded, dropped by the keyframe gate, packets the
relay dropped, decoder errors (``ffmpeg -v error``).

    .venv/bin/python bench/lossy.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "e2e")]

from livekit import api  # noqa: E402
from support.egress_helpers import file_request, record_published  # noqa: E402
from support.impair import GilbertElliott, Profile, UdpRelay  # noqa: E402
from support.media import make_h264  # noqa: E402
from support.server import LiveKitServer, create_room  # noqa: E402
from test_file_egress import config_for, packets  # noqa: E402

ROWS = {
    "clean": Profile(),
    "1 % random": Profile(loss=0.01),
    "3 % random": Profile(loss=0.03),
    "5 % random": Profile(loss=0.05),
    "3 % bursty (mean burst 3)": Profile(burst=GilbertElliott.bursty(0.03, 3)),
    "jitter 30 ms": Profile(jitter=0.03),
    "jitter 60 ms": Profile(jitter=0.06),
    "3 % random, 30 ms jitter, 1 % reordered": Profile(loss=0.03, jitter=0.03, reorder=0.01),
}


async def row(name: str, profile: Profile, media: Path, folder: Path) -> str:
    with LiveKitServer(relay_ip="127.0.0.2") as server, UdpRelay(
        ("127.0.0.2", server.udp_port), ("127.0.0.1", server.udp_port), down=profile, seed=15
    ) as relay:
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as client:
            room = await create_room(client)
        info, sent, _ = await record_published(
            server, room, media, config_for(server, folder), lambda track: file_request(room, track), timeout=30
        )
    out = folder / info.file_results[0].filename
    check = ["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"]
    done = await asyncio.to_thread(subprocess.run, check, capture_output=True, text=True)
    errors = done.stderr.strip().splitlines()
    details = info.details.partition("; video: ")[2] or "no losses"
    return (f"| {name} | {len(sent)} | {len(packets(out))} | {details} | {relay.down.counters.dropped} "
            f"| {len(errors)} |")


async def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-lossy-"))
    media = make_h264(folder / "src.h264", seconds=6, gop=60)
    print("| downlink | frames published | frames recorded | keyframe gate | packets dropped by the relay "
          "| decoder errors |")
    print("|---|---|---|---|---|---|")
    for name, profile in ROWS.items():
        print(await row(name, profile, media, folder), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
