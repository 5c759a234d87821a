"""LiveKit's RoomService, asked whether a room and a track exist before an egress starts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import aiohttp
from livekit import api

from trackegress.errors import RequestError


class LiveKitRooms:
    """Asks the LiveKit server (RoomService) whether a room and a track exist.

    A track appears in ListParticipants only once its publisher's connection is up, a moment after
    ``track_published``: an unlisted track is looked for again for ``track_grace`` seconds.
    """

    def __init__(self, ws_url: str, api_key: str, api_secret: str, track_grace: float = 3.0) -> None:
        self._api = api.LiveKitAPI(ws_url, api_key, api_secret, timeout=aiohttp.ClientTimeout(total=5))
        self._grace = track_grace

    async def room_sid(self, room_name: str) -> str:
        """The room's sid; ``RequestError`` not_found if it does not exist."""
        with _server_errors():
            return await self._room_sid(room_name)

    async def check_track(self, room_name: str, track_id: str) -> None:
        """``RequestError`` not_found unless ``track_id`` is published in ``room_name``."""
        await self.track_room_sid(room_name, track_id)

    async def track_room_sid(self, room_name: str, track_id: str) -> str:
        """The sid of ``room_name`` once ``track_id`` is published in it; ``RequestError`` not_found if not."""
        with _server_errors():
            sid = await self._room_sid(room_name)
            deadline = time.monotonic() + self._grace
            while not await self._has_track(room_name, track_id):
                if time.monotonic() >= deadline:
                    raise RequestError("not_found", f"track {track_id} not found in room {room_name}")
                await asyncio.sleep(0.2)
            return sid

    async def _room_sid(self, room_name: str) -> str:
        rooms = await self._api.room.list_rooms(api.ListRoomsRequest(names=[room_name]))
        sid = next((room.sid for room in rooms.rooms if room.name == room_name), None)
        if sid is None:
            raise RequestError("not_found", "requested room does not exist")
        return str(sid)

    async def _has_track(self, room_name: str, track_id: str) -> bool:
        people = await self._api.room.list_participants(api.ListParticipantsRequest(room=room_name))
        return any(track.sid == track_id for person in people.participants for track in person.tracks)

    async def aclose(self) -> None:
        await self._api.aclose()


@contextlib.contextmanager
def _server_errors() -> Iterator[None]:
    """RoomService failures become ``RequestError`` unavailable."""
    try:
        yield
    except api.TwirpError as exc:
        raise RequestError("unavailable", f"LiveKit server refused RoomService: {exc.code}") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RequestError("unavailable", f"LiveKit server unreachable: {type(exc).__name__}") from None
