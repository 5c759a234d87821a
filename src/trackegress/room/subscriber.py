"""Joins a LiveKit room as a hidden recorder and taps one track's encoded frames out of aiortc."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCSessionDescription,
)
from aiortc.codecs import CODECS
from aiortc.rtcrtpparameters import RTCRtcpFeedback
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models, rtc

from trackegress.media import h264, vp8
from trackegress.media.frames import Codec, EncodedFrame, TimestampUnwrapper
from trackegress.room.blank import is_blank
from trackegress.room.fastpath import AudioFastPath
from trackegress.room.icerestart import ice_credentials, restart_ice
from trackegress.room.reorder import AudioReorderBuffer
from trackegress.room.signal import Resume, SignalClient, SignalError

log = logging.getLogger(__name__)

# Reasons an egress ends, in upstream's words (``details = "End reason: <reason>"``).
SOURCE_CLOSED = "Source closed"

_ABS_SEND_TIME = re.compile(r"^a=extmap:\d+(/\w+)? http://www\.webrtc\.org/experiments/rtp-hdrext/abs-send-time\r?\n",
                            re.MULTILINE)
_KEYFRAME_REQUEST_INTERVAL = 0.5
RESUME_TIMEOUT = 30.0


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


def allow_all_h264_profiles() -> None:
    """Let aiortc accept every H.264 profile LiveKit offers: we never decode, only depacketize."""
    known = {c.parameters.get("profile-level-id") for c in CODECS["video"] if c.mimeType == "video/H264"}
    next_pt = max(c.payloadType or 0 for c in CODECS["video"]) + 1
    for profile_level_id in ("4d001f", "640c1f", "64001f", "f4001f"):
        if profile_level_id in known:
            continue
        CODECS["video"] += [
            RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90_000,
                payloadType=next_pt,
                rtcpFeedback=[RTCRtcpFeedback(type="nack"), RTCRtcpFeedback(type="nack", parameter="pli")],
                parameters={
                    "level-asymmetry-allowed": "1",
                    "packetization-mode": "1",
                    "profile-level-id": profile_level_id,
                },
            ),
            RTCRtpCodecParameters(
                mimeType="video/rtx", clockRate=90_000, payloadType=next_pt + 1, parameters={"apt": next_pt}
            ),
        ]
        next_pt += 2


allow_all_h264_profiles()


class _IdentityMapper:
    """Keeps RTP timestamps as sent (aiortc would rebase them to zero)."""

    def map(self, timestamp: int) -> int:
        return timestamp


class _TapQueue(queue.Queue[Any]):
    """Stands in for aiortc's decoder queue: frames go to us, not to a decoder thread."""

    def __init__(self, tap: TrackTap) -> None:
        super().__init__()
        self._tap = tap

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # aiortc stopping its (idle) decoder thread
            super().put(None)
        else:
            self._tap.push(item[1].data, item[1].timestamp)


class TrackTap:
    """Turns aiortc jitter-buffer output into ``EncodedFrame``s, and asks for keyframes."""

    def __init__(self, codec: Codec, events: RoomEvents) -> None:
        self.codec = codec
        self._events = events
        self._unwrapper = TimestampUnwrapper()
        self._receiver: Any = None
        self._audio: AudioReorderBuffer | None = None
        self._fastpath: AudioFastPath | None = None
        self.keyframes = 0

    def attach(self, receiver: Any) -> None:
        """Replace the receiver's decoder queue and timestamp mapper (before its first packet)."""
        receiver._RTCRtpReceiver__decoder_queue = _TapQueue(self)
        receiver._RTCRtpReceiver__timestamp_mapper = _IdentityMapper()
        if not self.codec.is_video:
            receiver._RTCRtpReceiver__jitter_buffer = self._audio = AudioReorderBuffer(self.push)
            self._fastpath = AudioFastPath(receiver, self._audio.add)
        self._receiver = receiver

    def push(self, data: bytes, timestamp: int) -> None:
        if is_blank(self.codec, data):
            return
        keyframe = self._is_keyframe(data)
        self.keyframes += keyframe
        frame = EncodedFrame(data, self._unwrapper.unwrap(timestamp), keyframe, time.monotonic())
        self._events.on_frame(frame)

    def flush(self) -> None:
        """Hand over the last frame: the jitter buffer only releases a frame when the next one starts."""
        if self._audio is not None:
            self._audio.flush()
            return
        buffer = self._receiver._RTCRtpReceiver__jitter_buffer if self._receiver is not None else None
        if buffer is None or buffer._origin is None:
            return
        packets: list[Any] = []
        for count in range(buffer.capacity):
            packet = buffer._packets[(buffer._origin + count) % buffer.capacity]
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                break
            packets.append(packet)
        if packets and packets[-1].marker:
            buffer.remove(len(packets))
            self.push(b"".join(p._data for p in packets), packets[0].timestamp)

    @property
    def packets_lost(self) -> int:
        """RTP packets never received (from aiortc's per-SSRC receive statistics)."""
        if self._receiver is None:
            return 0
        streams = self._receiver._RTCRtpReceiver__remote_streams
        return sum(int(stream.packets_lost) for stream in streams.values())

    async def request_keyframe(self) -> None:
        """Send a PLI to every SSRC we hear (video only)."""
        if self._receiver is None or not self.codec.is_video:
            return
        for source in self._receiver.getSynchronizationSources():
            await self._receiver._send_rtcp_pli(source.source)

    def _is_keyframe(self, data: bytes) -> bool:
        if self.codec is Codec.H264:
            return h264.is_keyframe(data)
        if self.codec is Codec.VP8:
            return vp8.is_keyframe(data)
        return True


class TrackSubscriber:
    """A hidden recorder in one room, following one track until it ends."""

    def __init__(
        self, signal: SignalClient, track_sid: str, events: RoomEvents, resume_timeout: float = RESUME_TIMEOUT
    ) -> None:
        self._signal = signal
        self._track_sid = track_sid
        self._events = events
        self._resume_timeout = resume_timeout
        self._room = signal.join.room
        self._participants = {p.sid: p for p in signal.join.other_participants}
        self._found = asyncio.Event()
        self._source: TrackSource | None = None
        self._tap: TrackTap | None = None
        self._tapped: set[str] = set()
        self._pending_candidates: list[str] = []
        self._ended = False
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=_ice_servers(signal.join)))
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader = asyncio.create_task(self._read())
        self._find_track()

    @property
    def room(self) -> models.Room:
        return self._room

    @property
    def packets_lost(self) -> int:
        return self._tap.packets_lost if self._tap is not None else 0

    async def find_track(self, timeout: float) -> TrackSource:
        """Wait until the track is published; TimeoutError otherwise."""
        await asyncio.wait_for(self._found.wait(), timeout)
        assert self._source is not None
        return self._source

    async def subscribe(self, codec: Codec) -> None:
        """Subscribe to the track at the top quality; frames then flow to ``events.on_frame``."""
        assert self._source is not None
        self._tap = TrackTap(codec, self._events)
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
        if codec.is_video:
            self._spawn(self._request_first_keyframe())

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (PLI), e.g. when the file sink lost continuity (issue 15)."""
        if self._tap is not None:
            self._spawn(self._tap.request_keyframe())

    async def close(self) -> None:
        """Leave the room and tear the peer connection down."""
        self._ended = True
        for task in (*self._tasks, self._reader):
            task.cancel()
        await self._signal.close()
        await self._pc.close()

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
        """Resume the signal session as the same participant; the peer connection carries on."""
        sid = self._signal.join.participant.sid
        log.warning("signal connection lost: resuming participant %s (for up to %gs)", sid, self._resume_timeout)
        started = time.monotonic()
        reconnect = await self._signal.resume(Resume(sid, reason), self._resume_timeout)
        log.warning("signal connection resumed after %.1fs (%s)", time.monotonic() - started,
                    "ReconnectResponse" if reconnect is not None else "no ReconnectResponse")
        await self._send_sync_state()

    async def _send_sync_state(self) -> None:
        """What we have, as the JS SDK sends it after a resume: the subscriber PC's SDPs and our subscription."""
        sync = rtc.SyncState(subscription=rtc.UpdateSubscription(
            track_sids=[self._track_sid] if self._tap is not None else [], subscribe=True))
        if (offer := self._pc.remoteDescription) is not None:
            sync.offer.CopyFrom(rtc.SessionDescription(type=offer.type, sdp=offer.sdp))
        if (answer := self._pc.localDescription) is not None:
            sync.answer.CopyFrom(rtc.SessionDescription(type=answer.type, sdp=answer.sdp))
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
        # Without abs-send-time aiortc sends no REMB, so the SFU's allocator keeps us on the top layer,
        # the same feedback state LiveKit's own egress runs in.
        sdp = _ABS_SEND_TIME.sub("", offer.sdp)
        credentials = ice_credentials(sdp)
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._tap_receivers(dict(offer.mid_to_track_id))  # before any await: no packet has been handled yet
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        local = self._pc.localDescription
        await self._signal.send(
            rtc.SignalRequest(answer=rtc.SessionDescription(type="answer", sdp=local.sdp, id=offer.id))
        )
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self._add_candidate(candidate)
        self._on_connection_state()
        if credentials is not None:  # after a resume the server restarts ICE: new credentials
            self._spawn(restart_ice(self._pc, credentials))

    def _on_connection_state(self) -> None:
        """Start receivers aiortc skipped: an offer answered during the DTLS handshake is never started.

        aiortc's ``__connect`` only starts a receiver if DTLS is already connected when it runs, so a track
        whose offer lands mid-handshake would get packets that are all dropped. Running it again once
        connected is safe: every step in it is idempotent.
        """
        if self._pc.connectionState == "connected" and not self._ended:
            self._spawn(self._pc._RTCPeerConnection__connect())  # type: ignore[attr-defined]

    def _tap_receivers(self, mid_to_track: dict[str, str]) -> None:
        for transceiver in self._pc.getTransceivers():
            mid = transceiver.mid
            if mid is None or mid in self._tapped or mid_to_track.get(mid) != self._track_sid:
                continue
            if self._tap is not None:
                self._tap.attach(transceiver.receiver)
                self._tapped.add(mid)

    async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        if trickle.target != rtc.SignalTarget.SUBSCRIBER or trickle.final:
            return
        if self._pc.remoteDescription is None:
            self._pending_candidates.append(trickle.candidateInit)
        else:
            await self._add_candidate(trickle.candidateInit)

    async def _add_candidate(self, init: str) -> None:
        data = json.loads(init)
        text = str(data.get("candidate", ""))
        if not text:
            return
        candidate = candidate_from_sdp(text.removeprefix("candidate:"))
        candidate.sdpMid = data.get("sdpMid")
        candidate.sdpMLineIndex = data.get("sdpMLineIndex")
        await self._pc.addIceCandidate(candidate)

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
        if not self._ended:
            self._ended = True
            if self._tap is not None:
                self._tap.flush()
            self._events.on_ended(reason, error)

    async def _request_first_keyframe(self) -> None:
        while self._tap is not None and self._tap.keyframes == 0:
            await self._tap.request_keyframe()
            await asyncio.sleep(_KEYFRAME_REQUEST_INTERVAL)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _ice_servers(join: rtc.JoinResponse) -> list[RTCIceServer]:
    servers = []
    for server in join.ice_servers:
        urls = [u for u in server.urls if not u.startswith("turns:")]
        if urls:
            servers.append(
                RTCIceServer(urls=urls, username=server.username or None, credential=server.credential or None)
            )
    return servers


async def join_room(
    ws_url: str, token: str, track_sid: str, events: RoomEvents, resume_timeout: float = RESUME_TIMEOUT
) -> TrackSubscriber:
    """Connect the signal channel and return a subscriber that already follows the room."""
    signal = await SignalClient.connect(ws_url, token)
    return TrackSubscriber(signal, track_sid, events, resume_timeout)


