"""LiveKit's v0 signalling protocol (``/rtc``, protocol 17): one WebSocket of binary protobuf."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection

from trackegress.backoff import Backoff

PROTOCOL_VERSION = 17
SDK_VERSION = "1.2.1"
CLOSE_TIMEOUT = 1.0  # seconds leaving waits for the close handshake (a dead link must not hold a shutdown 10 s)

log = logging.getLogger(__name__)


class SignalError(Exception):
    """The signal connection could not be established or broke."""


class ResumeRefused(SignalError):
    """The server answered a resume with a ``LeaveRequest``: the session cannot be resumed."""


@dataclass(frozen=True)
class Resume:
    """Resuming the session of participant ``sid`` (``reconnect=1``), for ``reason`` (a ``ReconnectReason``)."""

    sid: str
    reason: int = models.ReconnectReason.RR_SIGNAL_DISCONNECTED


def rtc_url(ws_url: str, token: str, resume: Resume | None = None) -> str:
    """The ``/rtc`` URL for a LiveKit server URL (``ws(s)://`` or ``http(s)://``), joining or resuming."""
    parts = urlsplit(ws_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise SignalError(f"invalid LiveKit URL {ws_url!r}: scheme must be ws, wss, http or https")
    params = {
        "access_token": token,
        "auto_subscribe": "0",
        "sdk": "python",
        "version": SDK_VERSION,
        "protocol": str(PROTOCOL_VERSION),
        "adaptive_stream": "0",
        "subscriber_allow_pause": "0",
    }
    if resume is not None:  # as the JS SDK's createConnectionParams; the server reads them in validateInternal
        params |= {"reconnect": "1", "sid": resume.sid, "reconnect_reason": str(resume.reason)}
    path = parts.path.rstrip("/") + "/rtc"
    return urlunsplit((scheme, parts.netloc, path, urlencode(params), ""))


def backoff(attempt: int, first: float = 0.25, cap: float = 4.0) -> float:
    """Seconds to wait before resume attempt ``attempt`` (0-based): none, then doubling from ``first`` to ``cap``."""
    return Backoff(first, cap).delay(attempt)


class SignalClient:
    """A joined signal connection: sends requests, yields responses, keeps ping/pong alive, resumes."""

    def __init__(self, ws: ClientConnection, join: rtc.JoinResponse, ws_url: str, token: str) -> None:
        self._ws = ws
        self.join = join
        self._ws_url = ws_url
        self._token = token
        self._first: rtc.SignalResponse | None = None  # a resume's first message, when it was not a reconnect
        self._ping_task = asyncio.create_task(self._ping_loop())

    @classmethod
    async def connect(cls, ws_url: str, token: str, timeout: float = 10.0) -> SignalClient:
        """Open the WebSocket and wait for the ``JoinResponse``."""
        ws, response = await _open(rtc_url(ws_url, token), timeout)
        if response is None or response.WhichOneof("message") != "join":
            await ws.close()
            kind = response.WhichOneof("message") if response else "garbage"
            raise SignalError(f"could not establish signal connection: expected join, got {kind}")
        return cls(ws, response.join, ws_url, token)

    async def resume(self, resume: Resume, timeout: float) -> rtc.ReconnectResponse | None:
        """Reopen the WebSocket as the same participant, retrying with ``backoff`` for up to ``timeout`` seconds.

        Returns the server's ``ReconnectResponse`` (None if it sent something else first: that message is then
        the first of ``responses()``, as the JS SDK does). Raises ``ResumeRefused`` if the server answers with a
        ``LeaveRequest``, ``SignalError`` once the time is up.
        """
        await self._abort()
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            await asyncio.sleep(backoff(attempt))
            try:
                return await self._resume_once(resume, deadline)
            except ResumeRefused:
                raise
            except SignalError as exc:
                if time.monotonic() + backoff(attempt + 1) >= deadline:
                    raise SignalError(f"could not resume the signal connection within {timeout:g}s: {exc}") from exc
                log.info("signal resume attempt %d failed: %s", attempt + 1, exc)
                attempt += 1

    async def send(self, request: rtc.SignalRequest) -> None:
        """Send one request; a closed connection is ignored (the reader notices it)."""
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._ws.send(request.SerializeToString())

    async def responses(self) -> AsyncIterator[rtc.SignalResponse]:
        """Every response after the join (or the resume), until the connection closes."""
        first, self._first = self._first, None
        if first is not None:
            yield first
        while True:
            try:
                raw = await asyncio.wait_for(self._ws.recv(), self._timeout())
            except TimeoutError:
                log.warning("signal connection silent for %.0fs, giving up", self._timeout())
                return
            except websockets.ConnectionClosed as exc:
                log.info("signal connection closed: %s", exc)
                return
            response = _parse(raw)
            if response is None:
                continue
            if response.WhichOneof("message") == "refresh_token":
                self._token = response.refresh_token  # livekit-server renews it: a resume needs an unexpired one
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

    async def _resume_once(self, resume: Resume, deadline: float) -> rtc.ReconnectResponse | None:
        timeout = max(0.1, min(10.0, deadline - time.monotonic()))
        ws, response = await _open(rtc_url(self._ws_url, self._token, resume), timeout)
        kind = response.WhichOneof("message") if response is not None else None
        if response is not None and kind == "leave":
            await ws.close()
            reason = models.DisconnectReason.Name(response.leave.reason)
            action = rtc.LeaveRequest.Action.Name(response.leave.action)
            raise ResumeRefused(f"server refused to resume the session ({reason}, action {action})")
        self._ws = ws
        if kind == "reconnect":
            assert response is not None
            return response.reconnect
        self._first = response
        return None

    async def _abort(self) -> None:
        """Drop the current WebSocket without a close handshake (it is dead or about to be replaced)."""
        self._ws.transport.abort()
        with contextlib.suppress(Exception):
            await self._ws.wait_closed()

    def _timeout(self) -> float:
        return float(self.join.ping_timeout or 15) + 5.0

    async def _ping_loop(self) -> None:
        interval = float(self.join.ping_interval or 5)
        while True:
            await asyncio.sleep(interval)
            now_ms = int(time.time() * 1000)
            await self.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=now_ms)))


async def _open(url: str, timeout: float) -> tuple[ClientConnection, rtc.SignalResponse | None]:
    """Open a signal WebSocket and read its first message (None if undecodable)."""
    try:
        ws = await asyncio.wait_for(
            websockets.connect(url, max_size=None, ping_interval=None, close_timeout=CLOSE_TIMEOUT), timeout)
    except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
        raise SignalError(f"could not establish signal connection: {_describe(exc)}") from exc
    try:
        first = await asyncio.wait_for(ws.recv(), timeout)
    except (TimeoutError, websockets.ConnectionClosed) as exc:
        await ws.close()
        raise SignalError(f"could not establish signal connection: {_describe(exc)}") from exc
    return ws, _parse(first)


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
