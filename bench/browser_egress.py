"""CPU per track-second of recording what a browser publishes: headless Chromium (livekit-client, SDK defaults)
sends its fake camera as 720p VP8 simulcast and its fake mic as Opus with RED and DTX; one ``trackegress record``
process per track records it. Measured: user + sys CPU of each recorder process over a window.

    .venv/bin/python bench/browser_egress.py [--window 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support: server, browser

from livekit import api
from support.browser import BrowserClients, BrowserPublisher, installed, join_token
from support.egress_helpers import until
from support.server import LiveKitServer, create_room

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + sys CPU of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def recorder(server: LiveKitServer, room: str, track: str, folder: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trackegress.cli", "record", "--url", server.url, "--api-key", server.api_key,
        "--api-secret", server.api_secret, "--room", room, "--track", track, "--local-dir", str(folder),
        "--no-manifest", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


def has_media(folder: Path, suffix: str) -> bool:
    """Whether the recorder has written media into ``folder``."""
    return any(p.stat().st_size for p in folder.glob(f"*{suffix}"))


async def main(window: float, warmup: float) -> None:
    missing = installed()
    if missing:
        sys.exit(f"not installed: {missing} (scripts/install-clients.sh)")
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp, LiveKitServer() as server:
        folder = Path(tmp)
        client = api.LiveKitAPI(server.http_url, server.api_key, server.api_secret)
        room = await create_room(client, "bench")
        async with BrowserClients(folder) as browser:
            publisher = BrowserPublisher(await browser.new_page())
            await publisher.publish(server.url, join_token(server.api_key, server.api_secret, room, "alice"))
            video = await recorder(server, room, publisher.video, folder / "video")
            audio = await recorder(server, room, publisher.audio, folder / "audio")
            await until(lambda: has_media(folder / "video", ".webm") and has_media(folder / "audio", ".ogg"), 30)
            await asyncio.sleep(warmup)
            start = time.monotonic(), cpu_seconds(video.pid), cpu_seconds(audio.pid)
            await asyncio.sleep(window)
            elapsed = time.monotonic() - start[0]
            video_cpu, audio_cpu = cpu_seconds(video.pid) - start[1], cpu_seconds(audio.pid) - start[2]
            sent = await publisher.outbound()
            await publisher.unpublish()
            codes = [await asyncio.wait_for(p.wait(), 30) for p in (video, audio)]
        await client.aclose()
    layers = ", ".join(f"{o['rid']} {o['frameWidth']}x{o['frameHeight']}" for o in sent if o["kind"] == "video")
    print(f"window {elapsed:.1f} s; video layers sent: {layers}; recorders exited {codes}")
    print("| track | CPU ms per track-second |")
    print("|---|---|")
    print(f"| Chromium VP8 simulcast 720p (top layer recorded) → WebM | {video_cpu / elapsed * 1000:.1f} |")
    print(f"| Chromium Opus RED + DTX → Ogg | {audio_cpu / elapsed * 1000:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=20.0, help="measured seconds (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the first media (default 3)")
    options = parser.parse_args()
    asyncio.run(main(options.window, options.warmup))
