"""Small helpers the end-to-end tests share: track and A/V egress requests, polling, a recording of a published
file, the media seconds of a file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import av
from livekit import api
from livekit.protocol import egress

from trackegress.config import Config
from trackegress.egress import Egress

from .publisher import Publisher
from .server import LiveKitServer


def file_request(room: str, track: str, filepath: str = "") -> egress.TrackEgressRequest:
    """A track egress request to a file (``filepath`` empty: the default name)."""
    return egress.TrackEgressRequest(room_name=room, track_id=track, file=egress.DirectFileOutput(filepath=filepath))


def av_request(room: str, video: str, audio: str, filepath: str) -> egress.StartEgressRequest:
    """What livekit-api's ``start_egress`` sends for one video track and one audio track to one file."""
    media = egress.MediaSource(video_track_id=video,
                               audio=egress.AudioConfig(routes=[egress.AudioRoute(track_id=audio)]))
    return egress.StartEgressRequest(room_name=room, preset=egress.EncodingOptionsPreset.PASSTHROUGH, media=media,
                                     outputs=[egress.Output(file=egress.FileOutput(filepath=filepath))])


def media_seconds(path: Path) -> dict[str, float]:
    """Each stream's end (s): its last packet's time plus duration."""
    ends: dict[str, float] = {}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is not None and packet.time_base is not None:
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                ends[packet.stream.type] = max(ends.get(packet.stream.type, 0.0), end)
    return ends


async def wait_status(
    client: api.LiveKitAPI, egress_id: str, *wanted: int, timeout: float = 20.0, interval: float = 0.2
) -> egress.EgressInfo:
    """Poll ListEgress until the egress has one of the ``wanted`` statuses."""
    async with asyncio.timeout(timeout):
        while True:
            items = (await client.egress.list_egress(egress.ListEgressRequest(egress_id=egress_id))).items
            if items and items[0].status in wanted:
                return items[0]
            await asyncio.sleep(interval)


async def until(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll ``condition()`` until it is true."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(interval)


async def record_published(
    server: LiveKitServer, room: str, media: Path, config: Config, request: Callable[[str], egress.TrackEgressRequest],
    *, on_update: Callable[[egress.EgressInfo], None] | None = None, timeout: float = 15.0, sender_reports: bool = True,
) -> tuple[egress.EgressInfo, list[bytes], str]:
    """Publish ``media`` as alice (held until the recorder has joined), record it with the egress
    ``request(track_sid)`` asks for, leave; returns (final info, frames sent, track sid)."""
    creds = (server.api_key, server.api_secret)
    async with Publisher(server.url, creds, room, "alice", media, start_delay=None, prime=True,
                         sender_reports=sender_reports) as pub:
        job = Egress(request(pub.track_sid), config, on_update=on_update)
        run = asyncio.create_task(job.run())
        await until(lambda: job.info.room_id)
        await asyncio.sleep(1.5)  # subscription negotiated
        pub.begin()
        await asyncio.wait_for(pub.done, 15)
        await asyncio.sleep(0.5)
        sent = list(pub.sent)
    return await asyncio.wait_for(run, timeout), sent, pub.track_sid
