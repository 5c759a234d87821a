"""Our test publisher gets each sample file's track published on a real livekit-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import models
from support.media import read_frames
from support.publisher import Publisher
from support.server import LiveKitServer, RoomFactory

MIME_TYPES = {"opus": {"audio/opus", "audio/red"}, "h264": {"video/h264"}, "vp8": {"video/vp8"}}


async def published_track(client: api.LiveKitAPI, room: str, identity: str, sid: str) -> models.TrackInfo:
    """Poll RoomService until the participant lists the track (once the publisher connection is up)."""
    while True:
        response = await client.room.list_participants(api.ListParticipantsRequest(room=room))
        for participant in response.participants:
            for track in participant.tracks:
                if participant.identity == identity and track.sid == sid:
                    return track
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("codec", ["opus", "h264", "vp8"])
async def test_publisher_publishes_file_as_is(
    codec: str,
    livekit_server: LiveKitServer,
    room_api: api.LiveKitAPI,
    make_room: RoomFactory,
    sample_media: dict[str, Path],
) -> None:
    room, identity, path = await make_room(), f"pub-{codec}", sample_media[codec]
    creds = (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, identity, path, start_delay=0.2) as pub:
        track = await asyncio.wait_for(published_track(room_api, room, identity, pub.track_sid), 10)
        assert track.mime_type.lower() in MIME_TYPES[codec]
        await asyncio.wait_for(pub.done, 10)
        assert await pub.packets_sent() >= len(pub.sent) > 0
    assert len(pub.sent) == len(read_frames(path))
