"""``livekit.Egress`` over Twirp: ``POST /twirp/livekit.Egress/<Method>``, JSON or protobuf bodies.

Errors are Twirp's ``{"code", "msg"}`` JSON with the matching HTTP status, whatever the request's type.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToJson, Parse, ParseError
from google.protobuf.message import DecodeError, Message
from livekit.protocol import egress

from trackegress.api.auth import Authenticator
from trackegress.dispatcher import Dispatcher
from trackegress.errors import HTTP_STATUS, RequestError

log = logging.getLogger(__name__)

PREFIX = "/twirp/livekit.Egress/"
MAX_BODY = 1 << 20
JSON, PROTOBUF = "application/json", "application/protobuf"
_OTHER_METHODS = (
    "StartEgress", "UpdateLayout", "StartRoomCompositeEgress", "StartWebEgress", "StartParticipantEgress",
    "StartTrackCompositeEgress",
)

Handler = Callable[[Any], Awaitable[Message]]


@dataclass(frozen=True)
class _Method:
    request_type: type[Message]
    handler: Handler


def twirp_error(code: str, message: str) -> web.Response:
    """A Twirp error response."""
    body = json.dumps({"code": code, "msg": message})
    return web.Response(status=HTTP_STATUS[code], text=body, content_type=JSON)


class TwirpServer:
    """The ``livekit.Egress`` service on top of a ``Dispatcher`` (in-process manager or the workers' cluster)."""

    def __init__(self, manager: Dispatcher, auth: Authenticator) -> None:
        self._manager = manager
        self._auth = auth
        self._methods = {
            "StartTrackEgress": _Method(egress.TrackEgressRequest, self._start_track),
            "ListEgress": _Method(egress.ListEgressRequest, self._list),
            "StopEgress": _Method(egress.StopEgressRequest, self._stop),
            "UpdateStream": _Method(egress.UpdateStreamRequest, self._update_stream),
        }

    def app(self) -> web.Application:
        """An aiohttp application serving the service (and Twirp ``bad_route`` for anything else)."""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        """Route, authenticate, decode, call, encode; every failure becomes a Twirp error."""
        try:
            return await self._handle(request)
        except RequestError as exc:
            return twirp_error(exc.code, exc.message)
        except Exception:
            log.exception("twirp %s failed", request.path)
            return twirp_error("internal", "internal error")

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.path.removeprefix(PREFIX) if request.path.startswith(PREFIX) else ""
        method = self._methods.get(name)
        if method is None and name not in _OTHER_METHODS:
            raise RequestError("bad_route", f"no handler for path {request.path}")
        if request.method != "POST":
            raise RequestError("bad_route", f"unsupported method {request.method} (only POST is allowed)")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in (JSON, PROTOBUF):
            raise RequestError("bad_route", f"unexpected Content-Type: {content_type or '(none)'}")
        self._auth.require_record(request.headers.get("Authorization"))
        if method is None:
            raise RequestError("unimplemented", f"{name} is not supported: trackegress only runs StartTrackEgress")
        message = _decode(await _read(request), content_type, method.request_type)
        return _encode(await method.handler(message), content_type)

    async def _start_track(self, request: egress.TrackEgressRequest) -> Message:
        return await self._manager.start(request)

    async def _list(self, request: egress.ListEgressRequest) -> Message:
        items = await self._manager.list(request.room_name, request.egress_id, request.active)
        return egress.ListEgressResponse(items=items)

    async def _stop(self, request: egress.StopEgressRequest) -> Message:
        return await self._manager.stop(request.egress_id)

    async def _update_stream(self, request: egress.UpdateStreamRequest) -> Message:
        return await self._manager.update_stream(request.egress_id)


async def _read(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestError("malformed", f"request body larger than {MAX_BODY} bytes") from None


def _decode(body: bytes, content_type: str, request_type: type[Message]) -> Message:
    """The request message; ``malformed`` if the body is not one."""
    message = request_type()
    try:
        if content_type == PROTOBUF:
            message.ParseFromString(body)
        else:
            Parse(body.decode("utf-8"), message, ignore_unknown_fields=True)
    except (DecodeError, ParseError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        kind = "protobuf" if content_type == PROTOBUF else "JSON"
        raise RequestError("malformed", f"the {kind} request body could not be decoded: {_short(exc)}") from None
    return message


def _encode(message: Message, content_type: str) -> web.Response:
    if content_type == PROTOBUF:
        return web.Response(body=message.SerializeToString(), content_type=PROTOBUF)
    text = MessageToJson(message, preserving_proto_field_name=True, indent=None)
    return web.Response(text=text, content_type=JSON)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"
