"""A libwebrtc subscriber (LiveKit's Python rtc SDK): the reference for what a viewer on the same link gets.

Run as ``python -m support.rtc_viewer URL TOKEN TRACK_SID SECONDS`` (inside a host's namespace for a lossy link):
subscribes to the track, counts the video frames libwebrtc decodes until the track ends or SECONDS pass, and
prints one JSON line: ``{"frames": N}``, the frames decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

from livekit import rtc


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
    try:
        track = await asyncio.wait_for(subscribed, 15)
        stream = rtc.VideoStream(track)

        async def count() -> None:
            nonlocal frames
            async for _ in stream:
                frames += 1

        counter = asyncio.create_task(count())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), seconds)
        counter.cancel()
    finally:
        await room.disconnect()
    return {"frames": frames}


def main() -> None:
    url, token, track_sid, seconds = sys.argv[1:5]
    print(json.dumps(asyncio.run(watch(url, token, track_sid, float(seconds)))), flush=True)


if __name__ == "__main__":
    main()
