"""End-to-end demo: a dev livekit-server, three published tracks, three ``trackegress record`` runs, a summary table.

``make demo`` (or ``.venv/bin/python scripts/demo.py`` from anywhere); recordings land in ``<repo>/recordings``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import warnings
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from livekit import api  # noqa: E402
from support.media import make_h264, make_opus_ogg, make_vp8_ivf  # noqa: E402
from support.publisher import Publisher  # noqa: E402
from support.server import LiveKitServer, create_room  # noqa: E402

TRACKEGRESS = ROOT / ".venv" / "bin" / "trackegress"
RECORDINGS = ROOT / "recordings"
SECONDS = 5
JOIN_WAIT = 4.0  # recorder interpreter start + join + subscription
TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Result:
    track: str
    codec: str
    info: dict[str, Any]  # the recorder's final EgressInfo, protobuf JSON field names
    stderr: str

    @property
    def status(self) -> str:
        return str(self.info.get("status", "NO_RESULT"))

    @property
    def file(self) -> dict[str, Any]:
        return dict((self.info.get("fileResults") or [{}])[0])


def make_media(folder: Path) -> list[Path]:
    """About five seconds each of Opus (Ogg), H.264 (Annex B) and VP8 (IVF)."""
    return [
        make_opus_ogg(folder / "tone.ogg", seconds=SECONDS),
        make_h264(folder / "testsrc.h264", seconds=SECONDS),
        make_vp8_ivf(folder / "testsrc.ivf", seconds=SECONDS),
    ]


async def record(server: LiveKitServer, media: list[Path]) -> list[Result]:
    """Publish every file, record each track with the CLI, and return the recorders' final EgressInfo."""
    client = api.LiveKitAPI(server.http_url, server.api_key, server.api_secret)
    try:
        room = await create_room(client, prefix="demo")
    finally:
        await client.aclose()
    print(f"room {room} on {server.url}")
    creds = (server.api_key, server.api_secret)
    recorders: list[asyncio.subprocess.Process] = []
    try:
        async with AsyncExitStack() as stack:
            pubs = [
                await stack.enter_async_context(
                    Publisher(server.url, creds, room, f"pub-{path.suffix[1:]}", path, start_delay=None, prime=True)
                )
                for path in media
            ]
            for pub in pubs:
                recorders.append(await asyncio.create_subprocess_exec(
                    str(TRACKEGRESS), "record", "--room", room, "--track", pub.track_sid,
                    "--output", "{track_source}-{track_id}", "--local-dir", str(RECORDINGS),
                    "--url", server.url, "--api-key", server.api_key, "--api-secret", server.api_secret,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                ))  # fmt: skip
                print(f"recording {pub.track_sid} ({pub.codec.name}) with pid {recorders[-1].pid}")
            await asyncio.sleep(JOIN_WAIT)
            for pub in pubs:
                pub.begin()
            await asyncio.wait_for(asyncio.gather(*(pub.done for pub in pubs)), TIMEOUT)
            await asyncio.sleep(0.5)  # let the last packets through before leaving
        outputs = await asyncio.wait_for(asyncio.gather(*(r.communicate() for r in recorders)), TIMEOUT)
    finally:
        for proc in recorders:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return [
        Result(pub.track_sid, pub.codec.name, json.loads(out or b"{}"), err.decode(errors="replace"))
        for pub, (out, err) in zip(pubs, outputs, strict=True)
    ]


def count_frames(path: Path) -> str:
    """Packets in the file's stream, counted by ffprobe."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_packets", "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0",
         str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    return probe.stdout.strip() or "?"


def print_table(results: list[Result]) -> None:
    rows = [("track", "codec", "file (under ./recordings)", "duration s", "size B", "frames", "status")]
    for r in results:
        filename = str(r.file.get("filename", ""))
        duration = f"{int(r.file.get('duration', 0)) / 1e9:.2f}"
        frames = count_frames(RECORDINGS / filename) if filename else "-"
        rows.append((r.track, r.codec, filename or "-", duration, str(r.file.get("size", 0)), frames, r.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def main() -> int:
    warnings.filterwarnings("ignore", message="The HMAC key is")  # livekit-server --dev signs with "secret"
    print("note: `lk room join --publish` cannot be installed here (Go module proxy 403); "
          "tests/support/publisher.py (aiortc) publishes the files instead")  # fmt: skip
    server = LiveKitServer()
    try:
        with tempfile.TemporaryDirectory(prefix="trackegress-demo-") as tmp:
            media = make_media(Path(tmp))
            print(f"sample media: {', '.join(p.name for p in media)} ({SECONDS} s each)")
            results = asyncio.run(record(server, media))
    finally:
        server.stop()
    print()
    print_table(results)
    failed = [r for r in results if r.status != "EGRESS_COMPLETE"]
    for r in failed:
        print(f"\n{r.track}: {r.info.get('error', 'no EgressInfo')}\n{r.stderr[-2000:]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
