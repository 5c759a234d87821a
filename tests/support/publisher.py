"""Publishes one pre-encoded media file into a LiveKit room, like ``lk room join --publish FILE``.

The file's frames go out as they are (aiortc ``pack()``s ``av.Packet``s into RTP, no re-encoding), paced
in real time. Signalling is LiveKit v0 (``/rtc``) through ``trackegress.room.signal.SignalClient``. aiortc
cannot trickle: our candidates travel inside the offer; the server's trickled ones are added as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import candidate_from_sdp
from av.packet import Packet
from av.stream import Stream
from livekit import api
from livekit.protocol import models, rtc

from trackegress.room.signal import Resume, SignalClient

from .icerestart import ice_credentials, restart_ice
from .media import Frame, codec_name, h264_canonical, read_frames, video_size

log = logging.getLogger(__name__)

H264_PROFILE_LEVEL_ID = "42e01f"
PRIME_LEAD = 0.2  # seconds between the priming frame and the file's first frame


@dataclass(frozen=True, slots=True)
class FileCodec:
    """How a file's codec is published."""

    name: str  # LiveKit's codec name (SimulcastCodec.codec)
    mime: str
    kind: str
    clock_rate: int


CODECS = {
    "opus": FileCodec("opus", "audio/opus", "audio", 48_000),
    "h264": FileCodec("h264", "video/H264", "video", 90_000),
    "vp8": FileCodec("vp8", "video/VP8", "video", 90_000),
}


def publisher_token(api_key: str, api_secret: str, room: str, identity: str) -> str:
    """A token that may join ``room`` and publish, but not subscribe."""
    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=False)
    return api.AccessToken(api_key, api_secret).with_identity(identity).with_grants(grants).to_jwt()


class FileTrack(MediaStreamTrack):
    """A track whose ``recv()`` yields the file's encoded frames as ``av.Packet``s, in real time."""

    def __init__(self, codec: FileCodec, frames: list[Frame], loop: bool = False, prime: bool = False) -> None:
        super().__init__()
        self.kind = codec.kind
        self.sent: list[bytes] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._codec = codec
        self._frames = frames
        self._looping = loop  # not `_loop`: pyee's event emitter base keeps its event loop there
        self._gate = asyncio.Event()
        self._index = 0
        self._offset = 0.0
        self._t0: float | None = None
        self._period = _file_period(frames)
        self._prime = prime and codec.kind == "video" and bool(frames)

    @property
    def t0(self) -> float | None:
        """The event loop time at which the file's first frame was due (frame at ``pts`` goes at ``t0 + pts``)."""
        return self._t0

    def open_gate(self) -> None:
        """Allow the first frame out (until then ``recv()`` waits)."""
        self._gate.set()

    async def recv(self) -> Packet[Stream]:
        await self._gate.wait()
        if self._prime:
            return self._priming_packet()
        if self._index == len(self._frames):
            if not self._looping:
                self._finish()
                await asyncio.Event().wait()  # nothing more to send; aiortc cancels us on close
            self._index, self._offset = 0, self._offset + self._period
        frame = self._frames[self._index]
        self._index += 1
        at = frame.pts_seconds - self._frames[0].pts_seconds + self._offset
        await self._pace(at)
        data = h264_canonical(frame.data) if self._codec.name == "h264" else frame.data
        self.sent.append(data)
        return self._packet(data, at, frame.keyframe)

    def _priming_packet(self) -> Packet[Stream]:
        """The first frame, sent once ``PRIME_LEAD`` before the file starts and not counted in ``sent``."""
        self._prime = False
        self._t0 = asyncio.get_running_loop().time() + PRIME_LEAD
        first = self._frames[0]
        data = h264_canonical(first.data) if self._codec.name == "h264" else first.data
        return self._packet(data, -PRIME_LEAD, first.keyframe)

    def _packet(self, data: bytes, at: float, keyframe: bool) -> Packet[Stream]:
        packet: Packet[Stream] = av.Packet(data)
        packet.pts = packet.dts = round(at * self._codec.clock_rate)
        packet.time_base = Fraction(1, self._codec.clock_rate)
        packet.is_keyframe = keyframe
        return packet

    async def _pace(self, at: float) -> None:
        now = asyncio.get_running_loop().time()
        if self._t0 is None:
            self._t0 = now - at
        delay = self._t0 + at - now
        if delay > 0:
            await asyncio.sleep(delay)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _file_period(frames: list[Frame]) -> float:
    """The file's length when looped: last frame time plus one frame step."""
    if len(frames) < 2:
        return 0.02
    step = frames[-1].pts_seconds - frames[-2].pts_seconds
    return frames[-1].pts_seconds - frames[0].pts_seconds + step


class Publisher:
    """``async with Publisher(url, token_or_creds, room, identity, path) as pub:`` publishes one track.

    ``token_or_creds`` is a JWT or an ``(api_key, api_secret)`` pair. ``pub.sent`` holds the frames handed to
    the RTP sender, in order (H.264 with 4-byte start codes, as a depacketizer rebuilds them);
    ``await pub.done`` returns once the whole file has been sent (never with ``loop=True``).

    ``resume``: resume a dropped signal connection (as the SDKs do) instead of giving up.
    ``sender_reports``: False sends no RTCP at all (no sender reports for the SFU to forward).
    ``start_delay``: seconds between the publication and the first frame; ``None`` waits for ``begin()``.
    ``prime`` (video only): send the first frame once more, ``PRIME_LEAD`` earlier, outside ``sent``. The SFU declares a
    video layer live on its first packet and forwards only from the *next* keyframe start, and pre-encoded
    media cannot answer PLIs, so without priming subscribers start at the file's second keyframe.
    """

    def __init__(
        self,
        url: str,
        token_or_creds: str | tuple[str, str],
        room: str,
        identity: str,
        path: Path,
        *,
        loop: bool = False,
        start_delay: float | None = 1.0,
        prime: bool = False,
        track_name: str | None = None,
        timeout: float = 10.0,
        resume: bool = False,
        sender_reports: bool = True,
    ) -> None:
        self.url = url
        self.room = room
        self.identity = identity
        self.path = Path(path)
        self.codec = CODECS[codec_name(self.path)]
        self.track_sid = ""
        self.track_info: models.TrackInfo | None = None
        self._token = (
            token_or_creds if isinstance(token_or_creds, str) else publisher_token(*token_or_creds, room, identity)
        )
        self._looping = loop
        self._start_delay = start_delay
        self._prime = prime
        self._track_name = track_name or self.path.name
        self._timeout = timeout
        self._resume = resume
        self._sender_reports = sender_reports
        self._signal: SignalClient | None = None
        self._pc: RTCPeerConnection | None = None
        self._subscriber_pc: RTCPeerConnection | None = None
        self._track: FileTrack | None = None
        self._sender: RTCRtpSender | None = None
        self._cid = ""
        self._published: asyncio.Future[models.TrackInfo] | None = None
        self._answered: asyncio.Future[None] | None = None
        self._pending: dict[int, list[str]] = {rtc.PUBLISHER: [], rtc.SUBSCRIBER: []}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None

    @property
    def sent(self) -> list[bytes]:
        """The frames handed to the RTP sender so far, in order."""
        return self._track.sent if self._track else []

    @property
    def t0(self) -> float | None:
        """The event loop time (``time.monotonic()``) at which the file's first frame was due; None before."""
        return self._track.t0 if self._track else None

    @property
    def done(self) -> asyncio.Future[None]:
        """Resolves once every frame of the file has been sent."""
        assert self._track is not None, "not started"
        return self._track.done

    @property
    def sender(self) -> RTCRtpSender:
        """The aiortc RTP sender of the track."""
        assert self._sender is not None, "not started"
        return self._sender

    async def packets_sent(self) -> int:
        """RTP packets sent so far, from the sender's ``outbound-rtp`` stats."""
        stats = await self.sender.getStats()
        return sum(s.packetsSent for s in stats.values() if s.type == "outbound-rtp")

    async def __aenter__(self) -> Publisher:
        try:
            await asyncio.wait_for(self.start(), self._timeout)
        except BaseException:
            await self.leave()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave()

    async def start(self) -> None:
        """Join, announce the track, negotiate the publisher connection and schedule the first frame."""
        loop = asyncio.get_running_loop()
        self._published, self._answered = loop.create_future(), loop.create_future()
        self._track = FileTrack(self.codec, read_frames(self.path), loop=self._looping, prime=self._prime)
        self._cid = self._track.id  # the SDP's msid track id: the server matches it with the AddTrackRequest
        self._signal = await SignalClient.connect(self.url, self._token)
        self._reader = asyncio.create_task(self._read())
        await self._signal.send(rtc.SignalRequest(add_track=self._add_track_request()))
        self.track_info = await self._published
        self.track_sid = self.track_info.sid
        self._pc = RTCPeerConnection()
        self._add_transceiver(self._pc, self._track)
        await self._pc.setLocalDescription(await self._pc.createOffer())
        offer = rtc.SessionDescription(type="offer", sdp=self._pc.localDescription.sdp)
        await self._signal.send(rtc.SignalRequest(offer=offer))
        await self._answered
        if self._start_delay is not None:
            self._spawn(self._open_gate_later(self._track, self._start_delay))

    def begin(self) -> None:
        """Send the first frame now (for ``start_delay=None``; harmless otherwise)."""
        assert self._track is not None, "not started"
        self._track.open_gate()

    async def leave(self) -> None:
        """Leave the room and close every connection (idempotent)."""
        for task in (*self._tasks, *([self._reader] if self._reader else [])):
            task.cancel()
        self._tasks.clear()
        self._reader = None
        if self._signal is not None:
            signal, self._signal = self._signal, None
            await signal.close()
        for pc in (self._pc, self._subscriber_pc):
            if pc is not None:
                await pc.close()

    def _add_track_request(self) -> rtc.AddTrackRequest:
        codec = self.codec
        simulcast = rtc.SimulcastCodec(codec=codec.name, cid=self._cid)
        if codec.kind == "audio":
            return rtc.AddTrackRequest(
                cid=self._cid, name=self._track_name, type=models.TrackType.AUDIO,
                source=models.TrackSource.MICROPHONE, stereo=True, disable_red=True, disable_dtx=True,
                simulcast_codecs=[simulcast],
            )  # fmt: skip
        width, height = video_size(self.path)
        layer = models.VideoLayer(quality=models.VideoQuality.HIGH, width=width, height=height)
        simulcast.layers.append(layer)
        return rtc.AddTrackRequest(
            cid=self._cid, name=self._track_name, type=models.TrackType.VIDEO,
            source=models.TrackSource.CAMERA, width=width, height=height, layers=[layer],
            simulcast_codecs=[simulcast],
        )  # fmt: skip

    def _add_transceiver(self, pc: RTCPeerConnection, track: FileTrack) -> None:
        transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(_codec_preferences(self.codec))
        self._sender = transceiver.sender
        if not self._sender_reports:
            self._sender._run_rtcp = functools.partial(_no_rtcp, self._sender)  # type: ignore[method-assign]

    @staticmethod
    async def _open_gate_later(track: FileTrack, delay: float) -> None:
        await asyncio.sleep(delay)
        track.open_gate()

    # signal handling

    async def _read(self) -> None:
        assert self._signal is not None
        try:
            while True:
                async for response in self._signal.responses():
                    await self._handle(response)
                if not self._resume:
                    break
                await self._signal.resume(Resume(self._signal.join.participant.sid), 30)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("publisher signal handling failed")
            self._fail(exc)
            return
        self._fail(ConnectionError("signal connection closed"))

    async def _handle(self, response: rtc.SignalResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "track_published" and response.track_published.cid == self._cid:
            _resolve(self._published, response.track_published.track)
        elif kind == "answer":
            await self._on_answer(response.answer)
        elif kind == "offer":
            await self._on_subscriber_offer(response.offer)
        elif kind == "trickle":
            await self._on_trickle(response.trickle)
        elif kind == "request_response" and response.request_response.reason != rtc.RequestResponse.OK:
            self._fail(RuntimeError(f"server refused a request: {response.request_response}"))
        elif kind == "leave":
            self._fail(ConnectionError(f"server asked us to leave: {response.leave}"))

    async def _on_answer(self, answer: rtc.SessionDescription) -> None:
        assert self._pc is not None
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        await self._flush_candidates(rtc.PUBLISHER)
        _resolve(self._answered, None)

    async def _on_subscriber_offer(self, offer: rtc.SessionDescription) -> None:
        """Answer the server's subscriber connection (data channels only: we never subscribe)."""
        assert self._signal is not None
        if self._subscriber_pc is None:
            self._subscriber_pc = RTCPeerConnection()
        pc = self._subscriber_pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = rtc.SessionDescription(type="answer", sdp=pc.localDescription.sdp, id=offer.id)
        await self._signal.send(rtc.SignalRequest(answer=answer))
        await self._flush_candidates(rtc.SUBSCRIBER)
        if (credentials := ice_credentials(offer.sdp)) is not None:  # the ICE restart after a resume
            self._spawn(restart_ice(pc, credentials))

    async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        if trickle.final or trickle.target not in self._pending:
            return
        pc = self._pc_for(trickle.target)
        if pc is None or pc.remoteDescription is None:
            self._pending[trickle.target].append(trickle.candidateInit)
        else:
            await _add_candidate(pc, trickle.candidateInit)

    async def _flush_candidates(self, target: int) -> None:
        pc = self._pc_for(target)
        pending, self._pending[target] = self._pending[target], []
        for init in pending:
            if pc is not None:
                await _add_candidate(pc, init)

    def _pc_for(self, target: int) -> RTCPeerConnection | None:
        return self._pc if target == rtc.PUBLISHER else self._subscriber_pc

    def _fail(self, exc: BaseException) -> None:
        for future in (self._published, self._answered):
            if future is not None and not future.done():
                future.set_exception(exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _codec_preferences(codec: FileCodec) -> list[RTCRtpCodecCapability]:
    """The file's codec only (one H.264 profile), plus RTX for video."""
    chosen = []
    for capability in RTCRtpSender.getCapabilities(codec.kind).codecs:
        mime = capability.mimeType.lower()
        if mime == codec.mime.lower():
            profile = capability.parameters.get("profile-level-id")
            if codec.name != "h264" or profile == H264_PROFILE_LEVEL_ID:
                chosen.append(capability)
        elif mime == "video/rtx" and codec.kind == "video":
            chosen.append(capability)
    return chosen


async def _no_rtcp(sender: RTCRtpSender) -> None:
    """aiortc's RTCP loop of ``sender`` without its sender reports (or anything else), until the track stops."""
    events = sender._RTCRtpSender__rtcp_started, sender._RTCRtpSender__rtcp_exited  # type: ignore[attr-defined]
    events[0].set()
    try:
        await asyncio.Event().wait()
    finally:
        events[1].set()


async def _add_candidate(pc: RTCPeerConnection, init: str) -> None:
    data = json.loads(init)
    text = str(data.get("candidate", ""))
    if not text:
        return
    candidate = candidate_from_sdp(text.removeprefix("candidate:"))
    candidate.sdpMid = data.get("sdpMid")
    candidate.sdpMLineIndex = data.get("sdpMLineIndex")
    with contextlib.suppress(Exception):
        await pc.addIceCandidate(candidate)


def _resolve(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)
