"""Small helpers the end-to-end tests share: track egress requests, polling, a recording of a published file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from livekit import api
from livekit.protocol import egress

from trackegress.config import Config
from trackegress.egress import Egress

from .publisher import Publisher
from .server import LiveKitServer


def file_request(room: str, track: str, filepath: str = "") -> egress.TrackEgressRequest:
    """A track egress request to a file (``filepath`` empty: the default name)."""
    return egress.TrackEgressRequest(room_name=room, track_id=track, file=egress.DirectFileOutput(filepath=filepath))


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
