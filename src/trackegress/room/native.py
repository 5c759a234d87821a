"""The media transport on trackegress's native media core (``trackegress_native``: str0m in Rust, ``native/``).

The core runs one I/O thread per process that owns every peer's UDP sockets, ICE, DTLS, SRTP, RTCP
(NACK, receiver reports, keyframe requests) and depacketizing, and hands Python whole frames. It wakes
the event loop through a file descriptor once per batch of events; :class:`_Core` drains the batch and
dispatches it to the :class:`NativeTransport` of each peer. No Python runs per packet.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import trackegress_native
from trackegress_native import EV_ANSWER, EV_CANDIDATE, EV_CLOSED, EV_FRAME, EV_MEDIA, EV_STATE

from trackegress.logs import context_of
from trackegress.media.frames import EncodedFrame
from trackegress.room.transport import (
    MEDIA_PROTOCOLS,
    IceCandidate,
    IceServer,
    MediaTrack,
    TrackStats,
    TransportEvents,
    TransportState,
)

if TYPE_CHECKING:
    from trackegress_native import Event, FrameEvent

log = logging.getLogger(__name__)

_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)
CLOSE_TIMEOUT = 2.0


class TransportError(Exception):
    """The media core refused an offer, or the peer is gone."""


class _Core:
    """The process's media core, its event descriptor watched by the running event loop."""

    _instance: ClassVar[_Core | None] = None

    def __init__(self) -> None:
        self.native = trackegress_native.Core()
        self.peers: dict[int, NativeTransport] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    @classmethod
    def get(cls) -> _Core:
        """The core, watched by the running loop (a new loop, as in tests, takes the descriptor over)."""
        if cls._instance is None:
            cls._instance = cls()
        cls._instance._watch(asyncio.get_running_loop())
        return cls._instance

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.native.fileno())
        # the reader keeps the context it is added in: none, not the egress whose peer happened to come first
        context_of("").run(loop.add_reader, self.native.fileno(), self.drain)
        self._loop = loop

    def drain(self) -> None:
        """Dispatch every waiting event; frames go out per peer and track in one call per batch."""
        if self._draining:  # a flush() from inside a dispatch: the batch is already being handed out
            return
        self._draining = True
        try:
            self._dispatch(self.native.drain())
        finally:
            self._draining = False

    def _dispatch(self, events: list[Event]) -> None:
        """Each peer's events run in its creator's context (its egress's log lines)."""
        touched: dict[int, NativeTransport] = {}
        for event in events:
            transport = self.peers.get(event[1])
            if transport is None:
                continue
            if event[0] == EV_FRAME:
                transport.queue_frame(event)
                touched[event[1]] = transport
            else:
                transport.context.run(transport.flush_frames)
                transport.context.run(transport.handle, event)
        for transport in touched.values():
            transport.context.run(transport.flush_frames)


class NativeTransport:
    """A receive-only peer in the native media core (implements ``room.transport.MediaTransport``).

    ``ice_servers`` are not used: the core has host candidates only (no TURN client): on each local IPv4 address
    (``addresses``, default: every interface that is up, loopback included) a UDP socket, and an active TCP
    candidate that dials the SFU's passive ones (ICE-TCP, RFC 6544), as ``protocols`` say.
    """

    def __init__(
        self, ice_servers: Sequence[IceServer], events: TransportEvents, addresses: Sequence[str] | None = None,
        protocols: Sequence[str] = MEDIA_PROTOCOLS,
    ) -> None:
        self._core = _Core.get()
        self._events = events
        self.context = contextvars.copy_context()  # the egress's: where its events are handled
        self._loop = asyncio.get_running_loop()
        self._id, bound = self._core.native.open(
            list(addresses or trackegress_native.host_addresses()), udp="udp" in protocols, tcp="tcp" in protocols
        )
        self._core.peers[self._id] = self
        log.debug("media peer %d receives on %s", self._id, ", ".join(bound))
        self._state = TransportState.NEW
        self._requests = itertools.count(1)
        self._answers: dict[int, asyncio.Future[str]] = {}
        self._closed = self._loop.create_future()
        self._remote: str | None = None
        self._local: str | None = None
        self._remote_ufrag: str | None = None
        self._held: list[IceCandidate] = []  # candidates of an ICE generation whose offer has not come yet
        self._pending: dict[str, list[EncodedFrame]] = {}
        self._final_stats: list[TrackStats] | None = None

    @property
    def state(self) -> TransportState:
        return self._state

    @property
    def remote_description(self) -> str | None:
        return self._remote

    @property
    def local_description(self) -> str | None:
        return self._local

    async def accept_offer(self, sdp: str) -> str:
        if self._closed.done():
            raise TransportError("peer connection is closed")
        request = next(self._requests)
        answer: asyncio.Future[str] = self._loop.create_future()
        self._answers[request] = answer
        self._core.native.accept_offer(self._id, request, sdp)
        if (ufrag := _UFRAG.search(sdp)) is not None:
            self._remote_ufrag = ufrag.group(1)
        held, self._held = self._held, []
        for candidate in held:
            self._add(candidate)
        local = await answer
        self._remote, self._local = sdp, local
        return local

    async def add_remote_candidate(self, candidate: IceCandidate) -> None:
        if not candidate.candidate or self._closed.done():
            return
        ufrag = candidate.username_fragment
        if ufrag and self._remote_ufrag is not None and ufrag != self._remote_ufrag:
            self._held.append(candidate)  # trickled ahead of its ICE restart offer
            return
        self._add(candidate)

    def request_keyframe(self, mid: str) -> None:
        if not self._closed.done():
            self._core.native.request_keyframe(self._id, mid)

    def decode_opus(self) -> None:
        if not self._closed.done():
            self._core.native.decode_opus(self._id)

    def stats(self) -> list[TrackStats]:
        if self._final_stats is not None:
            return self._final_stats
        return [TrackStats(*row) for row in self._core.native.stats(self._id)]

    def flush(self) -> None:
        if not self._closed.done():
            self._core.drain()

    async def close(self) -> None:
        if not self._closed.done():
            self._core.native.close_peer(self._id)
            try:
                await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("media peer %d did not close in %gs", self._id, CLOSE_TIMEOUT)
                self._finish(None)

    # events from the core

    def queue_frame(self, event: FrameEvent) -> None:
        _, _, mid, _, timestamp, keyframe, contiguous, spatial, temporal, arrival, data, pcm, report = event
        frame = EncodedFrame(data, timestamp, keyframe, arrival, contiguous, spatial, temporal, pcm, report)
        pending = self._pending.get(mid)
        if pending is None:
            self._pending[mid] = [frame]
        else:
            pending.append(frame)

    def flush_frames(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, {}
            for mid, frames in pending.items():
                self._events.on_frames(mid, frames)

    def handle(self, event: Event) -> None:
        if event[0] == EV_ANSWER:
            _, _, request, ok, text = event
            future = self._answers.pop(request, None)
            if future is not None and not future.done():
                if ok:
                    future.set_result(text)
                else:
                    future.set_exception(TransportError(text))
        elif event[0] == EV_STATE:
            self._set_state(TransportState(event[2]))
        elif event[0] == EV_CANDIDATE:
            self._events.on_local_candidate(IceCandidate(event[2], "0", 0))
        elif event[0] == EV_MEDIA:
            _, _, mid, media_kind, mime = event
            self._events.on_track(MediaTrack(mid, media_kind, mime))
        elif event[0] == EV_CLOSED:
            error = event[2]
            if error:
                log.warning("media peer %d closed: %s", self._id, error)
            self._finish(error or None)

    def _add(self, candidate: IceCandidate) -> None:
        text = candidate.candidate
        if not text.startswith("candidate:"):
            text = "candidate:" + text
        self._core.native.add_remote_candidate(self._id, text, candidate.username_fragment)

    def _set_state(self, state: TransportState) -> None:
        if state is not self._state and self._state is not TransportState.CLOSED:
            self._state = state
            self._events.on_state(state)

    def _finish(self, error: str | None) -> None:
        if self._closed.done():
            return
        self._closed.set_result(None)
        self._final_stats = self.stats()
        self._core.peers.pop(self._id, None)
        self._core.native.forget(self._id)
        for future in self._answers.values():
            if not future.done():
                future.set_exception(TransportError(error or "peer connection closed"))
        self._answers.clear()
        self._set_state(TransportState.CLOSED)
