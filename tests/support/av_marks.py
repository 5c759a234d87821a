"""A libwebrtc publisher (LiveKit's Python rtc SDK) whose microphone beeps and camera flashes at the same instants.

Run as ``python -m support.av_marks URL TOKEN SECONDS [VP8|H264]``: publishes a 48 kHz mono audio track (a 1 kHz beep of
100 ms at every whole second of its timeline) and a 320x240 30 fps video track (black, white for 100 ms at the same
instants), both fed on the audio's clock (the pace libwebrtc takes the audio at); prints ``{"audio": sid,
"video": sid}`` once both are published, then ``{"done": true}`` after SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys

import numpy as np
from livekit import rtc

RATE, FPS, SIZE = 48_000, 30, (320, 240)
CHUNK = RATE // 100  # 10 ms
BEEP_S = 0.1
QUEUE_MS = int(os.environ.get("AV_MARKS_QUEUE_MS", "50"))


def audio_chunk(index: int) -> bytes:
    """10 ms of audio: the beep during the first 100 ms of every second, silence otherwise."""
    start = index * CHUNK
    n = np.arange(start, start + CHUNK)
    beeping = (n % RATE) < BEEP_S * RATE
    samples = np.where(beeping, 12_000 * np.sin(2 * math.pi * 1000 * n / RATE), 0)
    return samples.astype("<i2").tobytes()


def video_frame(index: int) -> rtc.VideoFrame:
    """Frame ``index``: white during the first 100 ms of every second, black otherwise (I420)."""
    white = (index % FPS) < BEEP_S * FPS
    w, h = SIZE
    luma = bytes([235 if white else 16]) * (w * h)
    chroma = bytes([128]) * (w * h // 2)
    return rtc.VideoFrame(w, h, rtc.VideoBufferType.I420, luma + chroma)


async def run(url: str, token: str, seconds: float, codec: str) -> None:
    room = rtc.Room()
    await room.connect(url, token)
    mic = rtc.AudioSource(RATE, 1, queue_size_ms=QUEUE_MS)
    cam = rtc.VideoSource(*SIZE)
    audio = await room.local_participant.publish_track(
        rtc.LocalAudioTrack.create_audio_track("mic", mic),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, dtx=False, red=False))
    video = await room.local_participant.publish_track(
        rtc.LocalVideoTrack.create_video_track("cam", cam),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False,
                                video_codec=getattr(rtc.VideoCodec, codec)))
    print(json.dumps({"audio": audio.sid, "video": video.sid}), flush=True)
    # libwebrtc takes the audio from the source's queue every 10 ms: that instant is the audio's capture time. Fed
    # as fast as the queue takes it, the queue stays full, so once ``capture_frame`` of chunk n returns, chunk
    # n - QUEUE is being taken: each video frame is captured then, on the audio's own clock.
    behind = QUEUE_MS // 10
    frame = 0
    for chunk in range(int(seconds * 100)):
        await mic.capture_frame(rtc.AudioFrame(audio_chunk(chunk), RATE, 1, CHUNK))
        taken = chunk - behind  # the chunk libwebrtc is taking now
        while frame * 100 <= taken * FPS:
            cam.capture_frame(video_frame(frame))
            frame += 1
    print(json.dumps({"done": True}), flush=True)
    await room.disconnect()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "VP8"))
