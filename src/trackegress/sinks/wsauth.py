"""Who calls a WebSocket receiver: the configured extra headers and a signed ``Authorization: Bearer <JWT>``.

The token is a LiveKit access token (HS256 with the API secret, ``iss`` the API key), so a receiver checks it with
livekit-api's ``TokenVerifier`` as is: ``sub`` (identity) is the egress id, ``kind`` is ``egress``, ``video.room`` the
room, and the attributes ``egress_id`` / ``room`` / ``track_id`` carry all three. A fresh one is minted for every
dial (redials too), valid for ``TOKEN_TTL``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from livekit import api

from trackegress.errors import INVALID_ARGUMENT, ConfigError

TOKEN_TTL = datetime.timedelta(minutes=5)
_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
_RESERVED = frozenset({"authorization", "content-type", "host", "upgrade", "connection"})  # and sec-websocket-*


@dataclass(frozen=True, slots=True)
class Caller:
    """What a receiver learns about the egress that dials it."""

    egress_id: str
    room: str
    track_id: str


def caller_token(api_key: str, api_secret: str, caller: Caller, ttl: datetime.timedelta = TOKEN_TTL) -> str:
    """The signed token a receiver verifies with ``TokenVerifier(api_key, api_secret)``."""
    return (
        api.AccessToken(api_key, api_secret)
        .with_identity(caller.egress_id)
        .with_kind("egress")
        .with_grants(api.VideoGrants(room=caller.room))
        .with_attributes({"egress_id": caller.egress_id, "room": caller.room, "track_id": caller.track_id})
        .with_ttl(ttl)
        .to_jwt()
    )


def caller_headers(
    extra: tuple[tuple[str, str], ...], api_key: str, api_secret: str, caller: Caller
) -> Callable[[], dict[str, str]]:
    """The headers of each dial: ``extra`` plus a freshly signed ``Authorization``."""

    def headers() -> dict[str, str]:
        return {**dict(extra), "Authorization": f"Bearer {caller_token(api_key, api_secret, caller)}"}

    return headers


def parse_headers(values: Mapping[str, object], where: str) -> tuple[tuple[str, str], ...]:
    """``websocket.headers``: header name -> string value; ``ConfigError`` for names we set ourselves (Authorization,
    Content-Type, the handshake's) or that are not valid field names, and for values that are not one-line strings."""
    headers: list[tuple[str, str]] = []
    for name, value in values.items():
        if not isinstance(name, str) or not _TOKEN_CHARS.fullmatch(name):
            raise ConfigError(INVALID_ARGUMENT, f"{where}: {name!r} is not a valid header name")
        if name.lower() in _RESERVED or name.lower().startswith("sec-websocket-"):
            raise ConfigError(INVALID_ARGUMENT, f"{where}: {name} is set by trackegress, not configurable")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ConfigError(INVALID_ARGUMENT, f"{where}.{name}: expected a one-line string")
        headers.append((name, value))
    return tuple(headers)
