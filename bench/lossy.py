"""Egress through the impairment relay (issue 15), next to a Chromium viewer in the same room.

Each row: a fresh livekit-server whose media goes through ``tests/support/impair.UdpRelay`` (downlink impaired,
seeded), a 6 s 640x360 30 fps H.264 file (keyframe every 2 s) and a 6 s two-tone Opus file (no RED, so
livekit-server offers NACK for it) published by the test publisher; an in-process egress records the H.264 to
MP4 and the Opus to Ogg and streams it to a WebSocket receiver; a headless Chromium (livekit-client, libwebrtc)
subscribes to both through the same relay. Prints a markdown table. The WebSocket delay runs from the Opus frame
being sent to its PCM arriving (the first frame's message anchors the tone; phases place the others).

    .venv/bin/python bench/lossy.py [ROW ...]   # rows whose name contains one of the words (default: all)
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "e2e")]

from livekit import api  # noqa: E402
from livekit.protocol import egress  # noqa: E402
from support.browser import BrowserClients, BrowserViewer, join_token  # noqa: E402
from support.egress_helpers import file_request, until  # noqa: E402
from support.impair import GilbertElliott, Profile, UdpRelay  # noqa: E402
from support.media import make_h264, make_opus_ogg  # noqa: E402
from support.publisher import Publisher  # noqa: E402
from support.server import LiveKitServer, create_room  # noqa: E402
from support.wsreceiver import LEFT_HZ, RIGHT_HZ, Receiver, is_silent, phase, steps  # noqa: E402
from test_file_egress import config_for, packets  # noqa: E402

from trackegress.egress import Egress  # noqa: E402

ROWS = {
    "clean": Profile(),
    "1 % random": Profile(loss=0.01),
    "3 % random": Profile(loss=0.03),
    "5 % random": Profile(loss=0.05),
    "1 % bursty (mean burst 3)": Profile(burst=GilbertElliott.bursty(0.01, 3)),
    "3 % bursty (mean burst 3)": Profile(burst=GilbertElliott.bursty(0.03, 3)),
    "5 % bursty (mean burst 3)": Profile(burst=GilbertElliott.bursty(0.05, 3)),
    "jitter 30 ms": Profile(jitter=0.03),
    "jitter 60 ms": Profile(jitter=0.06),
    "3 % random, 30 ms jitter, 1 % reordered": Profile(loss=0.03, jitter=0.03, reorder=0.01),
    "2 % duplicated": Profile(duplicate=0.02),
    "cap 4 Mbit/s, 200 ms queue": Profile(rate=4_000_000),
    "cap 2 Mbit/s, 200 ms queue": Profile(rate=2_000_000),
}
# Frames recorded of 180 with aiortc as the media transport (2026-12-02, one run each; the rows it had).
AIORTC = {"clean": 180, "1 % random": 37, "3 % random": 178, "5 % random": 156, "3 % bursty (mean burst 3)": 67,
          "jitter 30 ms": 180, "jitter 60 ms": 180, "3 % random, 30 ms jitter, 1 % reordered": 169}


@dataclass
class Row:
    video_sent: int
    video_recorded: int
    video_lost: int
    video_recovered: int
    gate_dropped: int
    decoder_errors: int
    audio_sent: int
    audio_lost: int
    ws_dropouts: int
    ws_delay: tuple[float, float]
    viewer_video_decoded: int
    viewer_lost: tuple[int, int]  # video, audio packets
    relay_dropped: int


async def measure(profile: Profile, video: Path, tone: Path, folder: Path, browser: BrowserClients) -> Row:
    with LiveKitServer(relay_ip="127.0.0.2") as server, UdpRelay(
        ("127.0.0.2", server.udp_port), ("127.0.0.1", server.udp_port), down=profile, seed=15
    ) as relay:
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as client:
            room = await create_room(client)
        viewer = BrowserViewer(await browser.new_page())
        await viewer.join(server.url, join_token(server.api_key, server.api_secret, room, "viewer"))
        receiver = Receiver()
        await receiver.start()
        # the relay impairs UDP only: ICE-TCP to the server's TCP port would go around it
        config, creds = config_for(server, folder, media_protocols=("udp",)), (server.api_key, server.api_secret)
        async with Publisher(server.url, creds, room, "cam", video, start_delay=None, prime=True) as vpub, \
                Publisher(server.url, creds, room, "mic", tone, start_delay=None) as apub:
            ws = egress.TrackEgressRequest(room_name=room, track_id=apub.track_sid, websocket_url=receiver.url())
            jobs = [Egress(file_request(room, vpub.track_sid), config),
                    Egress(file_request(room, apub.track_sid), config), Egress(ws, config)]
            runs = [asyncio.create_task(job.run()) for job in jobs]
            await until(lambda: all(job.info.room_id for job in jobs), timeout=10)
            await asyncio.sleep(1.5)
            vpub.begin()
            apub.begin()
            await asyncio.wait_for(asyncio.gather(vpub.done, apub.done), 20)
            await asyncio.sleep(1.0)
            reference = await viewer.inbound()
            t0, video_sent, audio_sent = apub.t0, len(vpub.sent), len(apub.sent)
        infos = await asyncio.wait_for(asyncio.gather(*runs), 30)
        await receiver.stop()
        await viewer.page.close()
    assert t0 is not None
    mp4, ogg = (folder / info.file_results[0].filename for info in infos[:2])
    check = ["ffmpeg", "-v", "error", "-i", str(mp4), "-f", "null", "-"]
    errors = (await asyncio.to_thread(subprocess.run, check, capture_output=True, text=True)).stderr.split("\n")
    gate = re.search(r"(\d+) frames dropped until a keyframe", infos[0].details)
    messages = [(t, m) for t, m in receiver.conns[0].messages if isinstance(m, bytes)][:2 * audio_sent]
    loud = [i for i, (_, m) in enumerate(messages) if not is_silent(m)]
    delays = tone_delays(messages, t0)
    return Row(
        video_sent, len(packets(mp4)), jobs[0].reception.packets_lost, jobs[0].reception.packets_recovered,
        int(gate.group(1)) if gate else 0, len([e for e in errors if e.strip()]),
        audio_sent, audio_sent - len([p for p in packets(ogg) if len(p) > 2]),
        sum(is_silent(m) for _, m in messages[loud[0]:loud[-1] + 1]) if loud else -1,
        (delays[len(delays) // 2] * 1000, delays[int(len(delays) * 0.99)] * 1000),
        reference.get("video", {}).get("framesDecoded", 0),
        (reference.get("video", {}).get("packetsLost", 0), reference.get("audio", {}).get("packetsLost", 0)),
        relay.down.counters.dropped,
    )


def tone_delays(messages: list[tuple[float, bytes]], t0: float) -> list[float]:
    """Sorted delays (s) from each tone message's Opus frame being sent (``t0 + 20 ms x frame``) to its arrival.
    A message's place in the tone comes from the tones' phases (zeros inserted by the stream shift indices)."""
    toned = [(t, m) for t, m in messages if phase(m) is not None]
    positions = [0, *itertools.accumulate(steps([m for _, m in toned]))]
    return sorted(t - (t0 + 0.02 * (p // 2)) for (t, _), p in zip(toned, positions, strict=True))


def line(name: str, r: Row) -> str:
    before = AIORTC.get(name)
    return (f"| {name} | {r.video_recorded} / {r.video_sent} | {before if before is not None else '—'} "
            f"| {r.video_lost} / {r.video_recovered} | {r.gate_dropped} | {r.decoder_errors} "
            f"| {r.audio_lost} / {r.audio_sent} | {r.ws_dropouts} | {r.ws_delay[0]:.0f} / {r.ws_delay[1]:.0f} "
            f"| {r.viewer_video_decoded} | {r.viewer_lost[0]} / {r.viewer_lost[1]} | {r.relay_dropped} |")


async def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-lossy-"))
    video = make_h264(folder / "src.h264", seconds=6, gop=60)
    tone = make_opus_ogg(folder / "tone.ogg", 6.0, int(LEFT_HZ), int(RIGHT_HZ), "128k")
    print("| downlink | video frames recorded / published | before (aiortc): recorded | video packets lost / "
          "recovered by NACK | frames dropped by the keyframe gate | decoder errors | Opus frames lost in the Ogg "
          "| WebSocket 10 ms dropouts inside the tone | WebSocket delay p50 / p99 ms | Chromium viewer: video frames "
          "decoded | Chromium viewer: packets lost video / audio | packets dropped by the relay |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    async with BrowserClients(folder) as browser:
        for name, profile in ROWS.items():
            if sys.argv[1:] and not any(word in name for word in sys.argv[1:]):
                continue
            print(line(name, await measure(profile, video, tone, folder, browser)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
