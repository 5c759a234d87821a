"""Joins a LiveKit room as a hidden recorder and follows one track's encoded frames (through ``room.transport``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from livekit.protocol import models, rtc

from trackegress.media.codecs import is_blank
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.room.native import NativeTransport
from trackegress.room.signal import Resume, SignalClient, SignalError
from trackegress.room.transport import (
    MEDIA_PROTOCOLS,
    IceCandidate,
    IceServer,
    MediaTrack,
    MediaTransport,
    Reception,
    TransportEvents,
    TransportFactory,
    TransportState,
)

log = logging.getLogger(__name__)

# Reasons an egress ends, in upstream's words (``details = "End reason: <reason>"``).
SOURCE_CLOSED = "Source closed"

RESUME_TIMEOUT = 30.0
END_GRACE = 0.2


@dataclass(frozen=True)
class TrackSource:
    """The track we record and who publishes it."""

    room: models.Room
    participant: models.ParticipantInfo
    track: models.TrackInfo

    @property
    def codec(self) -> Codec:
        """Our codec for the track (RED audio is received as plain Opus)."""
        mime = self.track.mime_type.lower()
        if mime == "audio/red" or (not mime and self.track.type == models.TrackType.AUDIO):
            return Codec.OPUS
        return Codec.from_mime(mime)


class RoomEvents(Protocol):
    """What the subscriber reports, on the event loop."""

    def on_frame(self, frame: EncodedFrame) -> None: ...

    def on_muted(self, muted: bool) -> None: ...

    def on_ended(self, reason: str, error: str | None) -> None: ...


def default_transport(ice_servers: Sequence[IceServer], events: TransportEvents) -> MediaTransport:
    """The native media core's transport."""
    return NativeTransport(ice_servers, events)


class TrackSubscriber:
    """A hidden recorder in one room, following one track until it ends.

    It answers the SFU's offers through its media transport and hands the track's frames to ``events``
    (the transport's events come to the ``on_*`` methods below).
    """

    def __init__(
        self, signal: SignalClient, track_sid: str, events: RoomEvents, resume_timeout: float = RESUME_TIMEOUT,
        transport: TransportFactory = default_transport,
    ) -> None:
        self._signal = signal
        self._track_sid = track_sid
        self._events = events
        self._resume_timeout = resume_timeout
        self._room = signal.join.room
        self._participants = {p.sid: p for p in signal.join.other_participants}
        self._found = asyncio.Event()
        self._source: TrackSource | None = None
        self._codec: Codec | None = None
        self._mid_to_track: dict[str, str] = {}
        self._ended = False
        self._ending = False
        self._end_task: asyncio.TimerHandle | None = None
        self._transport = transport(_ice_servers(signal.join), self)
        self._reader = asyncio.create_task(self._read())
        self._find_track()

    @property
    def room(self) -> models.Room:
        return self._room

    @property
    def reception(self) -> Reception:
        """The transport's receive counters, summed over the subscribed tracks."""
        return Reception.of(self._transport.stats())

    async def find_track(self, timeout: float) -> TrackSource:
        """Wait until the track is published; TimeoutError otherwise."""
        await asyncio.wait_for(self._found.wait(), timeout)
        assert self._source is not None
        return self._source

    async def subscribe(self, codec: Codec, *, pcm: bool = False) -> None:
        """Subscribe to the track at the top quality; frames then flow to ``events.on_frame``, with ``pcm``
        decoded by the transport if asked (Opus).

        The transport asks for keyframes itself until a video track's first one (and after a loss).
        """
        assert self._source is not None
        self._codec = codec
        if pcm:
            self._transport.decode_opus()
        sid, publisher = self._track_sid, self._source.participant.sid
        await self._signal.send(
            rtc.SignalRequest(
                subscription=rtc.UpdateSubscription(
                    track_sids=[sid],
                    subscribe=True,
                    participant_tracks=[models.ParticipantTracks(participant_sid=publisher, track_sids=[sid])],
                )
            )
        )
        await self._signal.send(
            rtc.SignalRequest(
                track_setting=rtc.UpdateTrackSettings(
                    track_sids=[sid], disabled=False, quality=models.VideoQuality.HIGH
                )
            )
        )

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (PLI), e.g. when the file sink lost continuity (issue 15)."""
        for mid, sid in self._mid_to_track.items():
            if sid == self._track_sid:
                self._transport.request_keyframe(mid)

    def deliver_received(self) -> None:
        """Hand over at once the frames the transport has received but not yet delivered (``on_frame``)."""
        if not self._ended:
            self._transport.flush()

    async def close(self) -> None:
        """Leave the room and tear the media connection down."""
        self._ended = True
        if self._end_task is not None:
            self._end_task.cancel()
        self._reader.cancel()
        await self._signal.close()
        await self._transport.close()

    # media transport events

    def on_state(self, state: TransportState) -> None:
        log.info("media connection %s", state.value)

    def on_local_candidate(self, candidate: IceCandidate) -> None:
        """Our host candidates travel in the answer SDP; nothing to trickle."""

    def on_track(self, track: MediaTrack) -> None:
        log.info("media track %s: %s %s (%s)", track.mid, track.kind, track.mime,
                 self._mid_to_track.get(track.mid, "unknown track"))

    def on_frames(self, mid: str, frames: Sequence[EncodedFrame]) -> None:
        codec = self._codec
        if codec is None or self._ended or self._mid_to_track.get(mid) != self._track_sid:
            return
        on_frame = self._events.on_frame
        for frame in frames:
            if not is_blank(codec, frame.data):
                on_frame(frame)

    # signal handling

    async def _read(self) -> None:
        """Handle responses; when the signal connection drops (no LeaveRequest) resume it, as the SDKs do."""
        try:
            while True:
                reason = await self._follow()
                if self._ended:
                    return
                await self._resume(reason)
        except asyncio.CancelledError:
            raise
        except SignalError as exc:
            self._end(SOURCE_CLOSED, f"recording ended early: connection to room failed: {exc}")
        except Exception as exc:
            log.exception("room subscriber failed")
            self._end(SOURCE_CLOSED, f"recording ended early: {exc}")

    async def _follow(self) -> int:
        """Handle responses until the connection ends; returns the ``ReconnectReason`` for the resume."""
        async for response in self._signal.responses():
            if response.WhichOneof("message") == "leave" and response.leave.action == rtc.LeaveRequest.RESUME:
                log.info("server asked us to resume (%s)", models.DisconnectReason.Name(response.leave.reason))
                return models.ReconnectReason.RR_UNKNOWN  # what the JS SDK sends for a leave asking to resume
            await self._handle(response)
        return models.ReconnectReason.RR_SIGNAL_DISCONNECTED

    async def _resume(self, reason: int) -> None:
        """Resume the signal session as the same participant; the media connection carries on."""
        sid = self._signal.join.participant.sid
        log.warning("signal connection lost: resuming participant %s (for up to %gs)", sid, self._resume_timeout)
        started = time.monotonic()
        reconnect = await self._signal.resume(Resume(sid, reason), self._resume_timeout)
        log.warning("signal connection resumed after %.1fs (%s)", time.monotonic() - started,
                    "ReconnectResponse" if reconnect is not None else "no ReconnectResponse")
        await self._send_sync_state()

    async def _send_sync_state(self) -> None:
        """What we have, as the JS SDK sends it after a resume: the subscriber connection's SDPs and subscription."""
        sync = rtc.SyncState(subscription=rtc.UpdateSubscription(
            track_sids=[self._track_sid] if self._codec is not None else [], subscribe=True))
        if (offer := self._transport.remote_description) is not None:
            sync.offer.CopyFrom(rtc.SessionDescription(type="offer", sdp=offer))
        if (answer := self._transport.local_description) is not None:
            sync.answer.CopyFrom(rtc.SessionDescription(type="answer", sdp=answer))
        await self._signal.send(rtc.SignalRequest(sync_state=sync))

    async def _handle(self, response: rtc.SignalResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "offer":
            await self._on_offer(response.offer)
        elif kind == "trickle":
            await self._on_trickle(response.trickle)
        elif kind == "update":
            self._on_update(response.update.participants)
        elif kind == "room_update":
            self._room = response.room_update.room
        elif kind == "leave":
            self._on_leave(response.leave)
        elif kind == "subscription_response" and response.subscription_response.track_sid == self._track_sid:
            err = response.subscription_response.err
            if err != models.SubscriptionError.SE_UNKNOWN:
                self._end(SOURCE_CLOSED, f"subscription failed: {models.SubscriptionError.Name(err)}")
        elif kind == "subscription_permission_update":
            update = response.subscription_permission_update
            if update.track_sid == self._track_sid and not update.allowed:
                self._end(SOURCE_CLOSED, "subscription permission denied")

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        """Answer the SFU's offer (a new track, or an ICE restart after a resume: new credentials)."""
        self._mid_to_track.update(offer.mid_to_track_id)
        log.debug("subscriber offer %d:\n%s", offer.id, offer.sdp)
        answer = await self._transport.accept_offer(offer.sdp)
        await self._signal.send(
            rtc.SignalRequest(answer=rtc.SessionDescription(type="answer", sdp=answer, id=offer.id))
        )

    async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        """A remote candidate for our subscriber connection; LiveKit marks its last one ``final`` (it still carries
        a candidate, often the TCP one)."""
        if trickle.target != rtc.SignalTarget.SUBSCRIBER:
            return
        try:
            candidate = IceCandidate.from_json(trickle.candidateInit)
        except ValueError:
            log.warning("ignoring a malformed candidate: %r", trickle.candidateInit)
            return
        await self._transport.add_remote_candidate(candidate)

    def _on_update(self, participants: Any) -> None:
        for participant in participants:
            if participant.state == models.ParticipantInfo.DISCONNECTED:
                self._participants.pop(participant.sid, None)
            else:
                self._participants[participant.sid] = participant
        self._find_track()

    def _on_leave(self, leave: rtc.LeaveRequest) -> None:
        reason = models.DisconnectReason.Name(leave.reason)
        if leave.reason == models.DisconnectReason.ROOM_DELETED:
            self._end(SOURCE_CLOSED, None)
        else:
            self._end(SOURCE_CLOSED, f"recording ended early: server asked us to leave ({reason})")

    def _find_track(self) -> None:
        """Reconcile the participant list with our track: found, muted, unpublished or gone."""
        for participant in self._participants.values():
            for track in participant.tracks:
                if track.sid == self._track_sid:
                    self._track_seen(participant, track)
                    return
        if self._source is not None:
            self._end(SOURCE_CLOSED, None)

    def _track_seen(self, participant: models.ParticipantInfo, track: models.TrackInfo) -> None:
        previous = self._source
        self._source = TrackSource(self._room, participant, track)
        self._found.set()
        if previous is not None and previous.track.muted != track.muted:
            self._events.on_muted(track.muted)

    def _end(self, reason: str, error: str | None) -> None:
        """Report the end; a source that ended normally first gets ``END_GRACE`` for its last frames in flight
        (the SFU's news of the end can overtake them: UDP through the media core vs the signal WebSocket)."""
        if self._ending:
            return
        self._ending = True
        if error is None:
            self._end_task = asyncio.get_running_loop().call_later(END_GRACE, self._report_end, reason, error)
        else:
            self._report_end(reason, error)

    def _report_end(self, reason: str, error: str | None) -> None:
        if not self._ended:
            self._transport.flush()
            self._ended = True
            self._events.on_ended(reason, error)


def _ice_servers(join: rtc.JoinResponse) -> list[IceServer]:
    return [IceServer(tuple(s.urls), s.username, s.credential) for s in join.ice_servers]


async def join_room(
    ws_url: str, token: str, track_sid: str, events: RoomEvents, resume_timeout: float = RESUME_TIMEOUT,
    protocols: Sequence[str] = MEDIA_PROTOCOLS,
) -> TrackSubscriber:
    """Connect the signal channel and return a subscriber that already follows the room, its media over
    ``protocols`` (``udp``, ``tcp``)."""
    signal = await SignalClient.connect(ws_url, token)
    transport = functools.partial(NativeTransport, protocols=protocols)
    return TrackSubscriber(signal, track_sid, events, resume_timeout, transport)
