"""The media transport under a room subscriber: the one seam between LiveKit signalling and WebRTC media.

LiveKit's subscriber connection is offered by the SFU and answered by us. What the subscriber needs from
the media layer is: the SFU's offer turned into our answer (an offer with new ICE credentials is an ICE
restart, which answering performs), the SFU's trickled candidates added, our own candidates handed out,
the connection state, whole encoded frames per track (mid), keyframe requests per track, receive
statistics, and a close. Everything WebRTC (ICE, DTLS, SRTP, RTP, depacketizing) lives behind this
interface; nothing above it sees a packet.

Events are delivered on the asyncio event loop, in order, batched per wake-up.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

from trackegress.media.frames import EncodedFrame

MEDIA_PROTOCOLS = ("udp", "tcp")  # what a transport may receive over: UDP, ICE-TCP (RFC 6544); both by default


class TransportState(enum.Enum):
    """The connection's state (ICE and DTLS together), as ``RTCPeerConnection.connectionState`` names it."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # consent lost; may come back by itself or through an ICE restart
    FAILED = "failed"  # disconnected for longer than the transport's timeout: only an ICE restart helps
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN/TURN server from the JoinResponse (a transport may ignore what it cannot use)."""

    urls: tuple[str, ...]
    username: str = ""
    credential: str = ""


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """One trickled ICE candidate, as LiveKit's ``TrickleRequest.candidateInit`` JSON carries it.

    ``candidate`` is the SDP attribute value including its ``candidate:`` prefix.
    """

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    username_fragment: str | None = None

    @classmethod
    def from_json(cls, init: str) -> IceCandidate:
        """Parse a ``candidateInit`` (ValueError if it is not a JSON object)."""
        data = json.loads(init)
        if not isinstance(data, dict):
            raise ValueError("candidateInit is not a JSON object")
        index = data.get("sdpMLineIndex")
        return cls(
            candidate=str(data.get("candidate") or ""),
            sdp_mid=data.get("sdpMid"),
            sdp_mline_index=int(index) if index is not None else None,
            username_fragment=data.get("usernameFragment"),
        )

    def to_json(self) -> str:
        """The ``candidateInit`` to trickle to the SFU."""
        return json.dumps({
            "candidate": self.candidate,
            "sdpMid": self.sdp_mid,
            "sdpMLineIndex": self.sdp_mline_index,
            "usernameFragment": self.username_fragment,
        })


@dataclass(frozen=True, slots=True)
class MediaTrack:
    """A received media section: its mid, ``audio``/``video`` and the negotiated codec (lower-case MIME)."""

    mid: str
    kind: str
    mime: str


@dataclass(frozen=True, slots=True)
class TrackStats:
    """Receive statistics of one track (counters since the track started; ``jitter`` in seconds)."""

    mid: str
    packets_received: int = 0
    packets_lost: int = 0  # missing on the wire and never repaired (1 s later)
    nacks_sent: int = 0
    packets_recovered: int = 0  # missing on the wire, then delivered from an RTX retransmission or a RED block
    packets_late: int = 0  # missing, then arrived after later ones (reordering, or a retransmission without RTX)
    packets_missing: int = 0  # missing and still awaited: lost if the track ends before a retransmission comes
    jitter: float = 0.0
    frames_received: int = 0
    frames_dropped: int = 0  # incomplete frames given up (each leaves the next frame non-contiguous)
    keyframe_requests: int = 0
    decode_seconds: float = 0.0  # spent decoding Opus to PCM (``MediaTransport.decode_opus``)


@dataclass(frozen=True, slots=True)
class Reception:
    """What a subscriber's tracks received, summed: packets and how the missing ones ended, frames given up."""

    packets_received: int = 0
    packets_lost: int = 0
    packets_recovered: int = 0
    packets_late: int = 0
    packets_missing: int = 0
    nacks_sent: int = 0
    frames_dropped: int = 0

    @classmethod
    def of(cls, tracks: Sequence[TrackStats]) -> Reception:
        return cls(*(sum(getattr(t, f.name) for t in tracks) for f in fields(cls)))

    def summary(self) -> str:
        """At the track's end: what is still missing then is lost too."""
        return (
            f"{self.packets_received} packets, {self.packets_lost + self.packets_missing} lost, "
            f"{self.packets_recovered} recovered "
            f"(RTX/RED), {self.packets_late} late (reordered, or resent without RTX), {self.nacks_sent} NACKs, "
            f"{self.frames_dropped} incomplete frames dropped"
        )


class TransportEvents(Protocol):
    """What a transport reports to its subscriber, on the event loop."""

    def on_state(self, state: TransportState) -> None: ...

    def on_local_candidate(self, candidate: IceCandidate) -> None: ...

    def on_track(self, track: MediaTrack) -> None:
        """A track's media started (with its first frame: the codec in use is known then)."""
        ...

    def on_frames(self, mid: str, frames: Sequence[EncodedFrame]) -> None: ...


class MediaTransport(Protocol):
    """A receive-only WebRTC connection to the SFU (LiveKit's subscriber peer connection)."""

    @property
    def state(self) -> TransportState: ...

    @property
    def remote_description(self) -> str | None:
        """The last offer accepted (its SDP), for a signal resume's SyncState."""
        ...

    @property
    def local_description(self) -> str | None:
        """The last answer given (its SDP)."""
        ...

    async def accept_offer(self, sdp: str) -> str:
        """Apply the SFU's offer and return our answer's SDP.

        The first offer may carry only data channels; later ones add tracks. An offer with new ICE
        credentials restarts ICE (the answer carries new ones of ours).
        """
        ...

    async def add_remote_candidate(self, candidate: IceCandidate) -> None:
        """Add a candidate the SFU trickled (kept until an offer arrives if none has yet)."""
        ...

    def request_keyframe(self, mid: str) -> None:
        """Ask the sender of a video track for a keyframe (PLI); a no-op for audio or an unknown mid."""
        ...

    def decode_opus(self) -> None:
        """From now on, hand Opus frames over decoded as well (``EncodedFrame.pcm``), off the event loop."""
        ...

    def stats(self) -> list[TrackStats]:
        """Receive statistics, one entry per track."""
        ...

    def flush(self) -> None:
        """Deliver at once what has already been received (before the track's end is reported, or before an event
        loop that ran late fills silence in for media that had arrived meanwhile)."""
        ...

    async def close(self) -> None:
        """Tear the connection down; no event follows except ``CLOSED``."""
        ...


TransportFactory = Callable[[Sequence[IceServer], TransportEvents], MediaTransport]
"""Creates the transport of one subscriber connection."""
