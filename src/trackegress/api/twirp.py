"""``livekit.Egress`` over Twirp: ``POST /twirp/livekit.Egress/<Method>``, JSON or protobuf bodies.

Errors are Twirp's ``{"code", "msg"}`` JSON with the matching HTTP status, whatever the request's type (also
for requests aiohttp cannot parse, such as oversized headers). Failed authentications are throttled per client
address; ListEgress answers at most ``PAGE_SIZE`` items a page (``page_token`` / ``next_page_token``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from google.protobuf.json_format import MessageToJson, ParseDict, ParseError
from google.protobuf.message import DecodeError, Message
from livekit.protocol import egress

from trackegress.api.auth import Authenticator
from trackegress.dispatcher import Dispatcher
from trackegress.errors import (
    BAD_ROUTE,
    DEADLINE_EXCEEDED,
    HTTP_STATUS,
    INTERNAL,
    INVALID_ARGUMENT,
    MALFORMED,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    UNIMPLEMENTED,
    RequestError,
)
from trackegress.request import passthrough_track_request

log = logging.getLogger(__name__)

PREFIX = "/twirp/livekit.Egress/"
MAX_BODY = 1 << 20
BODY_TIMEOUT = 10.0  # seconds to send the body once the headers are in
PAGE_SIZE = 100  # ListEgress items per page
_CURSOR = re.compile(r"(0|[1-9][0-9]{0,18})/(.*)", re.DOTALL)  # the page tokens we give: "<started_at>/<egress_id>"
INT64_MAX = (1 << 63) - 1
AUTH_BURST, AUTH_REFILL = 10, 1.0  # failed authentications allowed at once per address, and regained per second
JSON, PROTOBUF = "application/json", "application/protobuf"
_OTHER_METHODS = (
    "UpdateLayout", "StartRoomCompositeEgress", "StartWebEgress", "StartParticipantEgress",
    "StartTrackCompositeEgress",
)

Handler = Callable[[Any], Awaitable[Message]]


@dataclass(frozen=True)
class _Method:
    request_type: type[Message]
    handler: Handler


def twirp_error(code: str, message: str, retry_after: int = 0) -> web.Response:
    """A Twirp error response (with ``Retry-After`` when ``retry_after`` is set)."""
    body = json.dumps({"code": code, "msg": message})
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.Response(status=HTTP_STATUS[code], text=body, content_type=JSON, headers=headers)


class Throttled(RequestError):
    """``resource_exhausted``, with the seconds after which to retry."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(RESOURCE_EXHAUSTED, message)
        self.retry_after = retry_after


class AuthThrottle:
    """A token bucket of failed authentications per client address (``AUTH_BURST``, ``AUTH_REFILL`` per s)."""

    def __init__(self, burst: int = AUTH_BURST, refill: float = AUTH_REFILL, max_clients: int = 10_000) -> None:
        self._burst, self._refill, self._max = burst, refill, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, monotonic time)

    def check(self, address: str) -> None:
        """``Throttled`` while ``address`` has no failed authentication left."""
        tokens = self._tokens(address, time.monotonic())
        if tokens < 1:
            wait = max(1, int((1 - tokens) / self._refill + 0.999))
            raise Throttled(f"too many failed authentications; retry in {wait}s", wait)

    def failed(self, address: str) -> None:
        now = time.monotonic()
        tokens = self._tokens(address, now)
        if len(self._buckets) >= self._max and address not in self._buckets:
            self._buckets.clear()  # bounded memory: forget everyone rather than grow without end
        self._buckets[address] = (tokens - 1, now)

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (float(self._burst), now))
        return min(float(self._burst), tokens + (now - at) * self._refill)


class _TwirpErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse with a Twirp error instead of text."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> StreamResponse:
        log.info("unparseable HTTP request from %s: %s", request.remote, message or exc)
        if status >= 500:
            response = twirp_error(INTERNAL, "internal error")
        elif isinstance(exc, LineTooLong) or "Too many headers" in str(message):
            response = twirp_error(MALFORMED, "request headers too large")
        else:
            response = twirp_error(MALFORMED, "the HTTP request could not be parsed")
        response.force_close()
        return response


class TwirpRunner(web.AppRunner):
    """An ``AppRunner`` whose connections answer unparseable requests with Twirp errors (aiohttp pinned: this
    swaps the handler class of the server it makes)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _TwirpServerFactory
        return server


class _TwirpServerFactory(web.Server):
    def __call__(self) -> RequestHandler:
        return _TwirpErrorHandler(self, loop=self._loop, **self._kwargs)


class TwirpServer:
    """The ``livekit.Egress`` service on top of a ``Dispatcher`` (in-process manager or the workers' cluster)."""

    def __init__(self, manager: Dispatcher, auth: Authenticator, throttle: AuthThrottle | None = None) -> None:
        self._manager = manager
        self._auth = auth
        self._throttle = throttle or AuthThrottle()
        self._methods = {
            "StartTrackEgress": _Method(egress.TrackEgressRequest, self._start_track),
            "StartEgress": _Method(egress.StartEgressRequest, self._start_egress),
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
        except Throttled as exc:
            return twirp_error(exc.code, exc.message, exc.retry_after)
        except RequestError as exc:
            return twirp_error(exc.code, exc.message)
        except Exception:
            log.exception("twirp %s failed", request.path)
            return twirp_error(INTERNAL, "internal error")

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.path.removeprefix(PREFIX) if request.path.startswith(PREFIX) else ""
        method = self._methods.get(name)
        if method is None and name not in _OTHER_METHODS:
            raise RequestError(BAD_ROUTE, f"no handler for path {request.path}")
        if request.method != "POST":
            raise RequestError(BAD_ROUTE, f"unsupported method {request.method} (only POST is allowed)")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in (JSON, PROTOBUF):
            raise RequestError(BAD_ROUTE, f"unexpected Content-Type: {content_type or '(none)'}")
        self._authenticate(request)
        if method is None:
            raise RequestError(UNIMPLEMENTED, f"{name} is not supported: trackegress runs StartTrackEgress and "
                                                "StartEgress with preset PASSTHROUGH")
        message = _decode(await _read(request), content_type, method.request_type)
        return _encode(await method.handler(message), content_type)

    def _authenticate(self, request: web.Request) -> None:
        address = request.remote or ""
        self._throttle.check(address)
        try:
            self._auth.require_record(request.headers.get("Authorization"))
        except RequestError as exc:
            if exc.code == UNAUTHENTICATED:
                self._throttle.failed(address)
            raise

    async def _start_track(self, request: egress.TrackEgressRequest) -> Message:
        return await self._manager.start(request)

    async def _start_egress(self, request: egress.StartEgressRequest) -> Message:
        """The unified API: a ``PASSTHROUGH`` request for one track runs as that track egress."""
        return await self._manager.start(passthrough_track_request(request), source=request)

    async def _list(self, request: egress.ListEgressRequest) -> Message:
        after = _page_key(request.page_token.token) if request.page_token.token else None
        items = await self._manager.list(request.room_name, request.egress_id, request.active,
                                         limit=PAGE_SIZE + 1, after=after)
        page = egress.ListEgressResponse(items=items[:PAGE_SIZE])
        if len(items) > PAGE_SIZE:
            last = items[PAGE_SIZE - 1]
            page.next_page_token.token = _page_token(last.started_at, last.egress_id)
        return page

    async def _stop(self, request: egress.StopEgressRequest) -> Message:
        return await self._manager.stop(request.egress_id)

    async def _update_stream(self, request: egress.UpdateStreamRequest) -> Message:
        return await self._manager.update_stream(request.egress_id)


def _page_token(started_at: int, egress_id: str) -> str:
    return base64.urlsafe_b64encode(f"{started_at}/{egress_id}".encode()).decode()


def _page_key(token: str) -> tuple[int, str]:
    """The (started_at, egress_id) after which a page starts; ``invalid_argument`` for a token we did not give
    (a ``started_at`` that is not a plain decimal within SQLite's INTEGER range among them)."""
    try:
        match = _CURSOR.fullmatch(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, binascii.Error, UnicodeError):
        match = None
    if match is None or int(match[1]) > INT64_MAX:
        raise RequestError(INVALID_ARGUMENT, "invalid page_token")
    return int(match[1]), match[2]


async def _read(request: web.Request) -> bytes:
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(MALFORMED, f"request body larger than {MAX_BODY} bytes") from None
    except TimeoutError:
        raise RequestError(DEADLINE_EXCEEDED, f"request body not received within {BODY_TIMEOUT:g}s") from None


def _decode(body: bytes, content_type: str, request_type: type[Message]) -> Message:
    """The request message; ``malformed`` if the body is not one."""
    message = request_type()
    try:
        if content_type == PROTOBUF:
            message.ParseFromString(body)
        else:
            value = json.loads(body.decode("utf-8"))
            _check_shape(value, message.DESCRIPTOR, "")
            ParseDict(value, message, ignore_unknown_fields=True)
    except RequestError:
        raise
    except (DecodeError, ParseError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        kind = "protobuf" if content_type == PROTOBUF else "JSON"
        raise RequestError(MALFORMED, f"the {kind} request body could not be decoded: {_short(exc)}") from None
    return message


def _check_shape(value: object, descriptor: Any, where: str) -> None:
    """``invalid_argument`` unless ``value`` is a JSON object whose message-typed fields hold objects (protobuf's
    parser would read ``"file": "abc"`` or a ``[]`` body as empty messages)."""
    if not isinstance(value, dict):
        raise RequestError(INVALID_ARGUMENT, f"{where or 'the request body'} must be a JSON object")
    for key, item in value.items():
        field = descriptor.fields_by_camelcase_name.get(key) or descriptor.fields_by_name.get(key)
        if field is None or item is None or field.message_type is None:
            continue
        if field.message_type.full_name.startswith("google.protobuf.") or field.message_type.GetOptions().map_entry:
            continue
        name = f"{where}.{field.name}" if where else field.name
        if field.is_repeated:
            if not isinstance(item, list):
                raise RequestError(INVALID_ARGUMENT, f"{name} must be a JSON array")
            for element in item:
                _check_shape(element, field.message_type, name)
        else:
            _check_shape(item, field.message_type, name)


def _encode(message: Message, content_type: str) -> web.Response:
    if content_type == PROTOBUF:
        return web.Response(body=message.SerializeToString(), content_type=PROTOBUF)
    text = MessageToJson(message, preserving_proto_field_name=True, indent=None)
    return web.Response(text=text, content_type=JSON)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"
