"""LiveKit's RoomService, asked whether a room and a track exist before an egress starts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
from livekit import api

from trackegress.errors import NOT_FOUND, UNAVAILABLE, RequestError
from trackegress.request import PublishedTrack, check_av_pair

T = TypeVar("T")


class LiveKitRooms:
    """Asks the LiveKit server (RoomService) whether a room and a track exist.

    A track appears in ListParticipants only once its publisher's connection is up, a moment after
    ``track_published``: an unlisted track is looked for again for ``track_grace`` seconds. Concurrent questions
    about one room share one call (a burst of egresses for a room asks the server once, not once each).
    """

    def __init__(self, ws_url: str, api_key: str, api_secret: str, track_grace: float = 3.0) -> None:
        self._api = api.LiveKitAPI(ws_url, api_key, api_secret, timeout=aiohttp.ClientTimeout(total=5))
        self._grace = track_grace
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def room_sid(self, room_name: str) -> str:
        """The room's sid; ``RequestError`` not_found if it does not exist."""
        with _server_errors():
            return await self._room_sid(room_name)

    async def check_track(self, room_name: str, track_id: str) -> int:
        """The track's ``TrackType``; ``RequestError`` not_found unless ``track_id`` is published in ``room_name``."""
        return (await self._find_track(room_name, track_id))[1]

    async def track_room_sid(self, room_name: str, track_id: str) -> str:
        """The sid of ``room_name`` once ``track_id`` is published in it; ``RequestError`` not_found if not."""
        return (await self._find_track(room_name, track_id))[0]

    async def check_av_pair(self, room_name: str, video_track_id: str, audio_track_id: str) -> None:
        """``RequestError``: not_found unless both tracks are published in ``room_name``, invalid_argument unless
        they are a video and an audio track of one participant (``request.check_av_pair``)."""
        for track_id in (video_track_id, audio_track_id):
            await self._find_track(room_name, track_id)
        with _server_errors():
            people = await self._participants(room_name)
        found = {t.sid: PublishedTrack(t.sid, person.identity, int(t.type))
                 for person in people.participants for t in person.tracks}
        missing = [track_id for track_id in (video_track_id, audio_track_id) if track_id not in found]
        if missing:
            raise RequestError(NOT_FOUND, f"track {missing[0]} not found in room {room_name}")
        check_av_pair(found[video_track_id], found[audio_track_id])

    async def _find_track(self, room_name: str, track_id: str) -> tuple[str, int]:
        with _server_errors():
            sid = await self._room_sid(room_name)
            deadline = time.monotonic() + self._grace
            while (track_type := await self._track_type(room_name, track_id)) is None:
                if time.monotonic() >= deadline:
                    raise RequestError(NOT_FOUND, f"track {track_id} not found in room {room_name}")
                await asyncio.sleep(0.2)
            return sid, track_type

    async def _shared(self, key: tuple[str, str], call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, or the same call already in flight for ``key``."""
        future = self._inflight.get(key)
        if future is None:
            future = self._inflight[key] = asyncio.ensure_future(call())
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        result: T = await asyncio.shield(future)
        return result

    async def _room_sid(self, room_name: str) -> str:
        rooms = await self._shared(("rooms", room_name), lambda: self._api.room.list_rooms(
            api.ListRoomsRequest(names=[room_name])))
        sid = next((room.sid for room in rooms.rooms if room.name == room_name), None)
        if sid is None:
            raise RequestError(NOT_FOUND, "requested room does not exist")
        return str(sid)

    async def _participants(self, room_name: str) -> api.ListParticipantsResponse:
        return await self._shared(("participants", room_name), lambda: self._api.room.list_participants(
            api.ListParticipantsRequest(room=room_name)))

    async def _track_type(self, room_name: str, track_id: str) -> int | None:
        people = await self._participants(room_name)
        types = (int(t.type) for person in people.participants for t in person.tracks if t.sid == track_id)
        return next(types, None)

    async def aclose(self) -> None:
        await self._api.aclose()


@contextlib.contextmanager
def _server_errors() -> Iterator[None]:
    """RoomService failures become ``RequestError`` unavailable."""
    try:
        yield
    except api.TwirpError as exc:
        raise RequestError(UNAVAILABLE, f"LiveKit server refused RoomService: {exc.code}") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RequestError(UNAVAILABLE, f"LiveKit server unreachable: {type(exc).__name__}") from None
