"""psrpc's wire format on Redis, as livekit-server v1.13.5 (psrpc v0.7.2) speaks it.

Owns everything that crosses the wire: the ``internal.*`` envelope messages, the ``rpc.*`` egress messages
that livekit-protocol's Python package does not ship, the ``Any`` wrapping, channel names, error codes and
the client's server selection. The definitions are our own, built at import time from descriptors with
upstream's package names, message names and field numbers; fields we never read or write (``Any``
payloads, metadata) are left out, and protobuf keeps their bytes as unknown fields.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from livekit.protocol import egress

from trackegress.errors import UNAVAILABLE

TYPE_URL_PREFIX = "type.googleapis.com/"
# psrpc service names (livekit/protocol rpc/*.proto)
EGRESS_INTERNAL = "EgressInternal"  # StartEgress, ListActiveEgress: topic cluster_id
EGRESS_HANDLER = "EgressHandler"  # StopEgress, UpdateStream: topic egress id
IOINFO = "IOInfo"  # CreateEgress, UpdateEgress, GetEgress, ListEgress
LOCK_TTL_MS = 5000  # psrpc's queue lock: SET <sha256 of payload> <rand> NX PX 5000

_ALPHANUM = string.ascii_letters + string.digits
_F = descriptor_pb2.FieldDescriptorProto


class MalformedMessage(ValueError):
    """Bytes on a channel that are not the psrpc message expected there."""


class PsrpcError(Exception):
    """An RPC failure carried in ``Response.error`` / ``Response.code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def new_id(prefix: str) -> str:
    """``CLI_`` / ``SRV_`` / ``REQ_`` + 12 alphanumerics, like psrpc's ``rand.NewXxxID``."""
    return prefix + "".join(secrets.choice(_ALPHANUM) for _ in range(12))


# channels (psrpc pkg/info/channels.go, "Legacy" names: the ones the Redis bus uses)


def sanitize(part: str) -> str:
    """Keep ``[0-9A-Za-z_]``; anything else becomes ``u+xxxx`` (``U+xxxxxxxx`` above U+FFFF)."""
    out = []
    for char in part:
        if char.isascii() and (char.isalnum() or char == "_"):
            out.append(char)
        elif ord(char) < 0x10000:
            out.append(f"u+{ord(char):04x}")
        else:
            out.append(f"U+{ord(char):08x}")
    return "".join(out)


def channel(*parts: str) -> str:
    """Sanitized parts joined with ``|``; empty parts (an empty topic) add nothing."""
    return "|".join(sanitize(part) for part in parts if part)


def request_channel(service: str, method: str, topic: str = "") -> str:
    return channel(service, method, topic, "REQ")


def claim_response_channel(service: str, method: str, topic: str = "") -> str:
    return channel(service, method, topic, "RCLAIM")


def claim_request_channel(service: str, client_id: str) -> str:
    return channel(service, client_id, "CLAIM")


def response_channel(service: str, client_id: str) -> str:
    return channel(service, client_id, "RES")


# message definitions


def _field(name: str, number: int, kind: int, type_name: str = "", *, repeated: bool = False,
           oneof: int | None = None) -> _F:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    field = _F(name=name, number=number, type=kind, label=label)  # type: ignore[arg-type]
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof
    return field


def _build(name: str, package: str, messages: dict[str, list[_F]], oneofs: dict[str, str] | None = None,
           deps: tuple[str, ...] = ()) -> dict[str, type[Message]]:
    """Register one file of messages in the default pool; returns the classes by short name."""
    pool = descriptor_pool.Default()
    file = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3", dependency=deps)
    for message_name, fields in messages.items():
        message = file.message_type.add(name=message_name)
        message.field.extend(fields)
        if oneofs and message_name in oneofs:
            message.oneof_decl.add(name=oneofs[message_name])
    try:
        descriptor = pool.FindFileByName(name)
    except KeyError:
        pool.Add(file)
        descriptor = pool.FindFileByName(name)
    return {n: message_factory.GetMessageClass(descriptor.message_types_by_name[n]) for n in messages}


_INTERNAL = _build("trackegress/psrpc_internal.proto", "internal", {
    "Request": [
        _field("request_id", 1, _F.TYPE_STRING), _field("client_id", 2, _F.TYPE_STRING),
        _field("sent_at", 3, _F.TYPE_INT64), _field("expiry", 4, _F.TYPE_INT64),
        _field("multi", 5, _F.TYPE_BOOL), _field("raw_request", 8, _F.TYPE_BYTES),
    ],
    "Response": [
        _field("request_id", 1, _F.TYPE_STRING), _field("server_id", 2, _F.TYPE_STRING),
        _field("sent_at", 3, _F.TYPE_INT64), _field("error", 5, _F.TYPE_STRING),
        _field("code", 6, _F.TYPE_STRING), _field("raw_response", 7, _F.TYPE_BYTES),
    ],
    "ClaimRequest": [
        _field("request_id", 1, _F.TYPE_STRING), _field("server_id", 2, _F.TYPE_STRING),
        _field("affinity", 3, _F.TYPE_FLOAT),
    ],
    "ClaimResponse": [_field("request_id", 1, _F.TYPE_STRING), _field("server_id", 2, _F.TYPE_STRING)],
})

# rpc.StartEgressRequest's `request` oneof: field name → (number, livekit message)
_START_REQUESTS = {
    "egress": (16, "StartEgressRequest"), "replay": (17, "ExportReplayRequest"),
    "room_composite": (5, "RoomCompositeEgressRequest"), "web": (11, "WebEgressRequest"),
    "participant": (13, "ParticipantEgressRequest"), "track_composite": (6, "TrackCompositeEgressRequest"),
    "track": (7, "TrackEgressRequest"),
}

_RPC = _build("trackegress/psrpc_rpc_egress.proto", "rpc", {
    "StartEgressRequest": [
        _field("egress_id", 1, _F.TYPE_STRING),
        *(_field(n, num, _F.TYPE_MESSAGE, f".livekit.{t}", oneof=0) for n, (num, t) in _START_REQUESTS.items()),
        _field("room_id", 3, _F.TYPE_STRING), _field("room_name", 18, _F.TYPE_STRING),
        _field("token", 8, _F.TYPE_STRING), _field("ws_url", 9, _F.TYPE_STRING),
        _field("cloud_backup_enabled", 10, _F.TYPE_BOOL), _field("estimated_cpu", 14, _F.TYPE_DOUBLE),
        _field("retry_count", 15, _F.TYPE_INT32),
    ],
    "ListActiveEgressRequest": [],
    "ListActiveEgressResponse": [_field("egress_ids", 1, _F.TYPE_STRING, repeated=True)],
    "GetEgressRequest": [_field("egress_id", 1, _F.TYPE_STRING)],
}, oneofs={"StartEgressRequest": "request"}, deps=(egress.DESCRIPTOR.name,))


M = TypeVar("M", bound="_Wire")
P = TypeVar("P", bound=Message)


@dataclass(frozen=True)
class _Wire:
    """A dataclass mirror of one message: ``encode()`` to protobuf bytes, ``decode()`` back."""

    _proto: ClassVar[type[Message]]

    def encode(self) -> bytes:
        message = self._proto()
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                getattr(message, field.name).extend(value)
            else:
                setattr(message, field.name, value)
        return message.SerializeToString()

    @classmethod
    def decode(cls: type[M], data: bytes) -> M:
        """Parse ``data``; raises ``MalformedMessage``."""
        message = _parse(cls._proto, data)
        fields = message.DESCRIPTOR.fields_by_name
        values = {}
        for field in dataclasses.fields(cls):
            value = getattr(message, field.name)
            values[field.name] = tuple(value) if fields[field.name].is_repeated else value
        return cls(**values)

    @classmethod
    def full_name(cls) -> str:
        return str(cls._proto.DESCRIPTOR.full_name)


@dataclass(frozen=True)
class Request(_Wire):
    """``internal.Request``: ``raw_request`` is the RPC's request message, unwrapped."""

    _proto = _INTERNAL["Request"]
    request_id: str
    client_id: str
    sent_at: int
    expiry: int
    multi: bool = False
    raw_request: bytes = b""


@dataclass(frozen=True)
class Response(_Wire):
    """``internal.Response``: ``raw_response`` on success, ``error`` + ``code`` on failure."""

    _proto = _INTERNAL["Response"]
    request_id: str
    server_id: str
    sent_at: int
    error: str = ""
    code: str = ""
    raw_response: bytes = b""


@dataclass(frozen=True)
class ClaimRequest(_Wire):
    """``internal.ClaimRequest``: a server offers to handle a request with ``affinity``."""

    _proto = _INTERNAL["ClaimRequest"]
    request_id: str
    server_id: str
    affinity: float


@dataclass(frozen=True)
class ClaimResponse(_Wire):
    """``internal.ClaimResponse``: the client's choice, published to the method's RCLAIM channel."""

    _proto = _INTERNAL["ClaimResponse"]
    request_id: str
    server_id: str


@dataclass(frozen=True)
class ListActiveEgressResponse(_Wire):
    """``rpc.ListActiveEgressResponse``."""

    _proto = _RPC["ListActiveEgressResponse"]
    egress_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class GetEgressRequest(_Wire):
    """``rpc.GetEgressRequest`` (IOInfo.GetEgress)."""

    _proto = _RPC["GetEgressRequest"]
    egress_id: str = ""


@dataclass(frozen=True)
class StartEgressRequest:
    """``rpc.StartEgressRequest``; ``kind`` names the ``request`` oneof case (``"track"`` for ours)."""

    egress_id: str
    kind: str | None = None
    request: Message | None = None
    room_id: str = ""
    room_name: str = ""
    token: str = ""
    ws_url: str = ""
    estimated_cpu: float = 0.0
    retry_count: int = 0

    @property
    def track(self) -> egress.TrackEgressRequest | None:
        return self.request if isinstance(self.request, egress.TrackEgressRequest) else None

    def encode(self) -> bytes:
        message = _RPC["StartEgressRequest"]()
        for name in ("egress_id", "room_id", "room_name", "token", "ws_url", "estimated_cpu", "retry_count"):
            setattr(message, name, getattr(self, name))
        if self.kind is not None and self.request is not None:
            getattr(message, self.kind).MergeFromString(self.request.SerializeToString())
        return message.SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> StartEgressRequest:
        """Parse ``data``; raises ``MalformedMessage``."""
        message: Any = _parse(_RPC["StartEgressRequest"], data)
        kind = message.WhichOneof("request")
        request = None
        if kind is not None:
            request = getattr(egress, _START_REQUESTS[kind][1])()
            request.MergeFromString(getattr(message, kind).SerializeToString())
        return cls(
            egress_id=message.egress_id, kind=kind, request=request, room_id=message.room_id,
            room_name=message.room_name, token=message.token, ws_url=message.ws_url,
            estimated_cpu=message.estimated_cpu, retry_count=message.retry_count,
        )


def _parse(proto: type[P], data: bytes) -> P:
    message = proto()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MalformedMessage(f"not a {proto.DESCRIPTOR.full_name}: {exc}") from None
    return message


def parse_message(proto: type[P], data: bytes) -> P:
    """``proto`` parsed from ``data`` (e.g. a livekit request); raises ``MalformedMessage``."""
    return _parse(proto, data)


def parser(proto: type[P]) -> Callable[[bytes], P]:
    """``parse_message`` of ``proto``, as a ``Method``'s ``decode``."""
    return functools.partial(parse_message, proto)


# envelopes


def wrap(message: _Wire) -> bytes:
    """What goes on a channel: ``google.protobuf.Any`` (== ``internal.Msg`` with no channel) around ``message``."""
    return any_pb2.Any(type_url=TYPE_URL_PREFIX + message.full_name(), value=message.encode()).SerializeToString()


def unwrap(payload: bytes, expected: type[M]) -> M:
    """The ``expected`` message inside a channel payload; raises ``MalformedMessage``."""
    envelope = any_pb2.Any()
    try:
        envelope.ParseFromString(payload)
    except DecodeError as exc:
        raise MalformedMessage(f"not a psrpc envelope: {exc}") from None
    if envelope.type_url != TYPE_URL_PREFIX + expected.full_name():
        raise MalformedMessage(f"expected {expected.full_name()}, got type_url {envelope.type_url[:80]!r}")
    return expected.decode(envelope.value)


# the client's server selection (psrpc pkg/client/rpc.go selectServer)


@dataclass(frozen=True)
class SelectionOpts:
    """How a client picks among claims; livekit-server's StartEgress uses max 1, 1 s, 500 ms."""

    minimum_affinity: float = 0.0
    maximum_affinity: float = 0.0
    accept_first_available: bool = False
    affinity_timeout: float = 1.0
    short_circuit_timeout: float = 0.2


class Selection:
    """Feed claims to ``offer``; a returned server id wins at once, else ``best`` when time is up."""

    def __init__(self, opts: SelectionOpts) -> None:
        self.opts = opts
        self.claims = 0
        self._best = ""
        self._affinity = 0.0

    def offer(self, claim: ClaimRequest) -> str | None:
        self.claims += 1
        opts = self.opts
        if opts.minimum_affinity > 0 and claim.affinity < opts.minimum_affinity:
            return None
        if opts.accept_first_available or (opts.maximum_affinity > 0 and claim.affinity >= opts.maximum_affinity):
            return claim.server_id
        if claim.affinity > self._affinity:  # strict, from 0: a claim with affinity 0 never wins
            self._best, self._affinity = claim.server_id, claim.affinity
        return None

    def best(self) -> str:
        """The winner when time is up; raises ``PsrpcError(unavailable)`` if none."""
        if self._best:
            return self._best
        if self.claims:
            raise PsrpcError(UNAVAILABLE, f"no servers available (received {self.claims} responses)")
        raise PsrpcError(UNAVAILABLE, "no response from servers")
