"""A libwebrtc subscriber (LiveKit's Python rtc SDK): the reference for what a viewer on the same link gets.

Run as ``python -m support.rtc_viewer URL TOKEN TRACK_SID SECONDS`` (inside a host's namespace for a lossy link):
subscribes to the track, counts the video frames libwebrtc decodes until the track ends or SECONDS pass, and
prints one JSON line: ``{"frames": N, "packets_lost": L, "nacks": K}``: the frames decoded, and from libwebrtc's
last inbound-rtp statistics the packets never received (retransmissions count as received) and NACKs sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

from livekit import rtc


async def inbound(track: rtc.Track, last: dict[str, int]) -> None:
    """Keep ``last`` up to date, twice a second, with the track's inbound-rtp packets lost and NACKs sent."""
    while True:
        for s in await track.get_stats():
            if s.HasField("inbound_rtp"):
                last["packets_lost"] = s.inbound_rtp.received.packets_lost
                last["nacks"] = s.inbound_rtp.inbound.nack_count
        await asyncio.sleep(0.5)


async def watch(url: str, token: str, track_sid: str, seconds: float) -> dict[str, int]:
    room = rtc.Room()
    subscribed: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()
    ended = asyncio.Event()

    @room.on("track_subscribed")
    def _subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication, _: object) -> None:
        if publication.sid == track_sid and not subscribed.done():
            subscribed.set_result(track)

    @room.on("track_unpublished")
    def _unpublished(publication: rtc.RemoteTrackPublication, _: object) -> None:
        if publication.sid == track_sid:
            ended.set()

    room.on("participant_disconnected", lambda _: ended.set())
    await room.connect(url, token, rtc.RoomOptions(auto_subscribe=True))
    print(json.dumps({"joined": True}), flush=True)
    frames = 0
    stats: dict[str, int] = {}
    try:
        track = await asyncio.wait_for(subscribed, 15)
        stream = rtc.VideoStream(track)

        async def count() -> None:
            nonlocal frames
            async for _ in stream:
                frames += 1

        tasks = [asyncio.create_task(count()), asyncio.create_task(inbound(track, stats))]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), seconds)
        for task in tasks:
            task.cancel()
    finally:
        await room.disconnect()
    return {"frames": frames, **stats}


def main() -> None:
    url, token, track_sid, seconds = sys.argv[1:5]
    print(json.dumps(asyncio.run(watch(url, token, track_sid, float(seconds)))), flush=True)


if __name__ == "__main__":
    main()
