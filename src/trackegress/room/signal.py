"""LiveKit's v0 signalling protocol (``/rtc``, protocol 17): one WebSocket of binary protobuf."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection

PROTOCOL_VERSION = 17
SDK_VERSION = "1.2.1"

log = logging.getLogger(__name__)


class SignalError(Exception):
    """The signal connection could not be established or broke."""


def rtc_url(ws_url: str, token: str) -> str:
    """The ``/rtc`` URL for a LiveKit server URL (``ws(s)://`` or ``http(s)://``)."""
    parts = urlsplit(ws_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise SignalError(f"invalid LiveKit URL {ws_url!r}: scheme must be ws, wss, http or https")
    query = urlencode(
        {
            "access_token": token,
            "auto_subscribe": "0",
            "sdk": "python",
            "version": SDK_VERSION,
            "protocol": str(PROTOCOL_VERSION),
            "adaptive_stream": "0",
            "subscriber_allow_pause": "0",
        }
    )
    path = parts.path.rstrip("/") + "/rtc"
    return urlunsplit((scheme, parts.netloc, path, query, ""))


class SignalClient:
    """A joined signal connection: sends requests, yields responses, keeps ping/pong alive."""

    def __init__(self, ws: ClientConnection, join: rtc.JoinResponse) -> None:
        self._ws = ws
        self.join = join
        self._ping_task = asyncio.create_task(self._ping_loop())

    @classmethod
    async def connect(cls, ws_url: str, token: str, timeout: float = 10.0) -> SignalClient:
        """Open the WebSocket and wait for the ``JoinResponse``."""
        try:
            ws = await asyncio.wait_for(
                websockets.connect(rtc_url(ws_url, token), max_size=None, ping_interval=None),
                timeout,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise SignalError(f"could not establish signal connection: {_describe(exc)}") from exc
        try:
            first = await asyncio.wait_for(ws.recv(), timeout)
        except (TimeoutError, websockets.ConnectionClosed) as exc:
            await ws.close()
            raise SignalError(f"could not establish signal connection: {_describe(exc)}") from exc
        response = _parse(first)
        if response is None or response.WhichOneof("message") != "join":
            await ws.close()
            kind = response.WhichOneof("message") if response else "garbage"
            raise SignalError(f"could not establish signal connection: expected join, got {kind}")
        return cls(ws, response.join)

    async def send(self, request: rtc.SignalRequest) -> None:
        """Send one request; a closed connection is ignored (the reader notices it)."""
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._ws.send(request.SerializeToString())

    async def responses(self) -> AsyncIterator[rtc.SignalResponse]:
        """Every response after the join, until the connection closes."""
        while True:
            try:
                raw = await asyncio.wait_for(self._ws.recv(), self._timeout())
            except TimeoutError:
                log.warning("signal connection silent for %.0fs, giving up", self._timeout())
                return
            except websockets.ConnectionClosed:
                return
            response = _parse(raw)
            if response is not None:
                yield response

    async def close(self) -> None:
        """Leave politely and close the socket."""
        self._ping_task.cancel()
        leave = models.DisconnectReason.CLIENT_INITIATED
        await self.send(
            rtc.SignalRequest(leave=rtc.LeaveRequest(reason=leave, action=rtc.LeaveRequest.DISCONNECT))
        )
        with contextlib.suppress(Exception):
            await self._ws.close()

    def _timeout(self) -> float:
        return float(self.join.ping_timeout or 15) + 5.0

    async def _ping_loop(self) -> None:
        interval = float(self.join.ping_interval or 5)
        while True:
            await asyncio.sleep(interval)
            now_ms = int(time.time() * 1000)
            await self.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=now_ms)))


def _parse(raw: str | bytes) -> rtc.SignalResponse | None:
    if isinstance(raw, str):
        log.debug("ignoring text signal message")
        return None
    response = rtc.SignalResponse()
    try:
        response.ParseFromString(raw)
    except Exception:
        log.warning("ignoring undecodable signal message (%d bytes)", len(raw))
        return None
    return response


def _describe(exc: BaseException) -> str:
    if isinstance(exc, websockets.InvalidStatus):
        body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
        return f"HTTP {exc.response.status_code}" + (f": {body}" if body else "")
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
