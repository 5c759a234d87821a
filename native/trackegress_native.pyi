"""trackegress's native media core (Rust, str0m 0.24.0): receive-only WebRTC peers on one I/O thread."""

from typing import Final, Literal, TypeAlias, final

__all__ = [
    "EV_ANSWER",
    "EV_CANDIDATE",
    "EV_CLOSED",
    "EV_FRAME",
    "EV_MEDIA",
    "EV_STATE",
    "LIBOPUS_VERSION",
    "OPENSSL_VERSION",
    "STR0M_VERSION",
    "VERSION",
    "Core",
    "host_addresses",
]

VERSION: Final[str]
STR0M_VERSION: Final[str]
LIBOPUS_VERSION: Final[str]
OPENSSL_VERSION: Final[str]

# The kind of each event ``Core.drain()`` returns (its first element); the values are the native module's
# (stubtest checks them: tests/unit/test_native_stub.py).
EV_ANSWER: Final = 0
EV_STATE: Final = 1
EV_CANDIDATE: Final = 2
EV_MEDIA: Final = 3
EV_FRAME: Final = 4
EV_CLOSED: Final = 5

PeerState: TypeAlias = Literal["new", "connecting", "connected", "disconnected", "failed"]

AnswerEvent: TypeAlias = tuple[Literal[0], int, int, bool, str]
"""(kind, peer, request, ok, the answer SDP if ok else the error)."""
StateEvent: TypeAlias = tuple[Literal[1], int, PeerState]
"""(kind, peer, state)."""
CandidateEvent: TypeAlias = tuple[Literal[2], int, str]
"""(kind, peer, a local candidate ``candidate:...``)."""
MediaEvent: TypeAlias = tuple[Literal[3], int, str, Literal["audio", "video"], str]
"""(kind, peer, mid, media kind, lower-case MIME type): a track, with its first frame."""
FrameEvent: TypeAlias = tuple[
    Literal[4], int, str, str, int, bool, bool, int, int, float, bytes, bytes | None, tuple[int, int] | None
]
"""(kind, peer, mid, MIME type, RTP timestamp extended to 64 bits, keyframe, contiguous, spatial layer,
temporal layer, arrival in ``time.monotonic()`` seconds, data, pcm, sender report): ``pcm`` is None, or once
``decode_opus`` was called the Opus frame as 48 kHz stereo s16le (empty if libopus refused it); the sender report is
the latest RTCP SR received before the frame, (its NTP time in Unix ns, its RTP timestamp in 32 bits), None before
the first."""
ClosedEvent: TypeAlias = tuple[Literal[5], int, str | None]
"""(kind, peer, the error that closed it or None)."""
Event: TypeAlias = AnswerEvent | StateEvent | CandidateEvent | MediaEvent | FrameEvent | ClosedEvent

StatsRow: TypeAlias = tuple[str, int, int, int, int, int, int, float, int, int, int, float]
"""One track's counters, in the order of the fields of ``trackegress.room.transport.TrackStats``."""

def host_addresses() -> list[str]:
    """The IPv4 addresses of the machine's interfaces that are up (loopback included)."""

@final
class Core:
    """One I/O thread multiplexing every peer; events are read with ``drain()`` when ``fileno()`` is readable."""

    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def open(self, addresses: list[str], udp: bool = True, tcp: bool = True) -> tuple[int, list[str]]: ...
    def accept_offer(self, peer: int, req: int, sdp: str) -> None: ...
    def add_remote_candidate(self, peer: int, candidate: str, ufrag: str | None = None) -> None: ...
    def request_keyframe(self, peer: int, mid: str) -> None: ...
    def decode_opus(self, peer: int) -> None: ...
    def close_peer(self, peer: int) -> None: ...
    def stats(self, peer: int) -> list[StatsRow]: ...
    def forget(self, peer: int) -> None: ...
    def drain(self) -> list[Event]: ...
    def shutdown(self) -> None: ...
