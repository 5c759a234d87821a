"""A real WebSocket receiver on loopback (the websockets library) and analysis of the PCM it got."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from .server import free_port

__all__ = ["free_port"]

RATE = 48_000
LEFT_HZ, RIGHT_HZ = 441.0, 661.0  # not a whole number of cycles per 10 ms: phase tells position


@dataclass
class Conn:
    ws: ServerConnection
    path: str
    headers: Headers
    messages: list[tuple[float, bytes | str]] = field(default_factory=list)
    close_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def binary(self) -> list[bytes]:
        return [m for _, m in self.messages if isinstance(m, bytes)]

    @property
    def texts(self) -> list[str]:
        return [m for _, m in self.messages if isinstance(m, str)]


class Receiver:
    """A websockets server on 127.0.0.1 recording every connection; can be stopped and restarted."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.port = 0
        self.conns: list[Conn] = []
        self._server: Server | None = None

    def url(self, path: str = "/audio") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self._server = await serve(self._handler, "127.0.0.1", self.port, **self.options)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = Conn(ws, ws.request.path, ws.request.headers)
        self.conns.append(conn)
        try:
            async for message in ws:
                conn.messages.append((time.monotonic(), message))
        except ConnectionClosed:
            pass
        conn.close_code = ws.close_code
        conn.done.set()


def channels(messages: list[bytes], nch: int = 2) -> np.ndarray:
    return np.frombuffer(b"".join(messages), dtype="<i2").reshape(-1, nch).astype(np.float64)


def peak_hz(samples: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def phase(message: bytes) -> tuple[float, float] | None:
    """Phase (in cycles) of the left/right test tones at the start of a 10 ms message; None if silent."""
    pcm = channels([message])
    if np.abs(pcm).max() < 1000:
        return None
    n = np.arange(len(pcm))
    out = []
    for ch, hz in ((0, LEFT_HZ), (1, RIGHT_HZ)):
        w = 2 * np.pi * hz / RATE
        out.append(np.arctan2(-(pcm[:, ch] @ np.sin(w * n)), pcm[:, ch] @ np.cos(w * n)) / (2 * np.pi))
    return out[0], out[1]


def steps(messages: list[bytes]) -> list[int]:
    """For each consecutive pair of tone messages, how many 10 ms positions apart they are (1 = next)."""

    def error(delta: float, k: int, hz: float) -> float:
        d = (delta - k * hz * 0.01) % 1.0
        return min(d, 1.0 - d)

    phases = [p for p in map(phase, messages) if p is not None]
    return [
        min(range(-40, 41), key=lambda k: error(b[0] - a[0], k, LEFT_HZ) + error(b[1] - a[1], k, RIGHT_HZ))
        for a, b in itertools.pairwise(phases)
    ]


def is_silent(message: bytes) -> bool:
    return not any(message)


