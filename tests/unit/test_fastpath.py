"""The audio fast path reads RTP headers as aiortc's ``RtpPacket.parse`` does, and rejects what it rejects."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiortc.rtcdtlstransport import State
from aiortc.rtp import RtpPacket
from hypothesis import given
from hypothesis import strategies as st
from pylibsrtp import Policy, Session

from trackegress.room.fastpath import AudioFastPath, parse_rtp


def packet(payload: bytes = b"\x01\x02\x03", csrc: int = 0, extension: bytes = b"", padding: int = 0) -> bytes:
    first = 0x80 | (0x20 if padding else 0) | (0x10 if extension else 0) | csrc
    data = bytes([first, 0x80 | 111]) + (0xFFFE).to_bytes(2, "big") + (0xDEADBEEF).to_bytes(4, "big")
    data += (0x01020304).to_bytes(4, "big")
    data += b"".join((0xC0000000 + i).to_bytes(4, "big") for i in range(csrc))
    if extension:
        assert len(extension) % 4 == 0
        data += b"\xbe\xde" + (len(extension) // 4).to_bytes(2, "big") + extension
    data += payload
    if padding:
        data += bytes(padding - 1) + bytes([padding])
    return data


@pytest.mark.parametrize(
    ("csrc", "extension", "padding"),
    [(0, b"", 0), (2, b"", 0), (15, b"", 0), (0, b"\x10\xff\x00\x00", 0), (0, b"", 4), (3, b"\x22" * 8, 1)],
)
def test_header_fields_and_payload(csrc: int, extension: bytes, padding: int) -> None:
    header = parse_rtp(packet(b"opus", csrc, extension, padding))
    assert header is not None
    assert (header.payload_type, header.marker, header.sequence_number) == (111, 1, 0xFFFE)
    assert (header.timestamp, header.ssrc, header._data) == (0xDEADBEEF, 0x01020304, b"opus")


def test_empty_payload_with_padding_only() -> None:
    header = parse_rtp(packet(b"", padding=3))
    assert header is not None and header._data == b""


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x6f\x00\x01",  # shorter than a header
        b"\x40" + bytes(11) + b"x",  # version 1
        packet(b"", csrc=2)[:-4],  # truncated CSRC list
        packet(b"", extension=b"\x00" * 8)[:-2],  # truncated extension value
        bytes([0x90]) + packet(b"")[1:12] + b"\xbe\xde",  # truncated extension header
        packet(b"", padding=1)[:-1] + b"\x00",  # padding length zero
        packet(b"ab", padding=2)[:-1] + b"\x09",  # padding longer than the payload
    ],
)
def test_malformed_packets_are_rejected(data: bytes) -> None:
    assert parse_rtp(data) is None
    with pytest.raises(ValueError):
        RtpPacket.parse(data)


@given(
    payload=st.binary(max_size=40),
    csrc=st.integers(0, 15),
    words=st.integers(0, 4),
    padding=st.integers(0, 255),
    marker=st.integers(0, 1),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
)
def test_same_as_aiortc(payload: bytes, csrc: int, words: int, padding: int, marker: int, seq: int, ts: int) -> None:
    data = packet(payload, csrc, b"\x00" * 4 * words, padding)
    data = data[:1] + bytes([(marker << 7) | 111]) + seq.to_bytes(2, "big") + ts.to_bytes(4, "big") + data[8:]
    ours = parse_rtp(data)
    theirs = RtpPacket.parse(data)
    assert ours is not None
    assert (ours.payload_type, ours.marker, ours.sequence_number, ours.timestamp, ours.ssrc, ours._data) == (
        theirs.payload_type, theirs.marker, theirs.sequence_number, theirs.timestamp, theirs.ssrc, theirs.payload
    )


def _session_pair() -> tuple[Session, Session]:
    key = bytes(range(30))
    return Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)), Session(
        Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)
    )


def _fake_receiver(rx: Session, ssrc: int) -> SimpleNamespace:
    connection = SimpleNamespace(_queue=asyncio.Queue(), slow=[])
    connection.data_received = lambda data, component: connection.slow.append(data)
    # aioice's StunProtocol: what it does not parse as STUN goes to the connection
    protocol = SimpleNamespace(stun=[])
    protocol.datagram_received = lambda data, addr: connection.data_received(data, 1)
    connection._protocols = [protocol]
    dtls = SimpleNamespace(
        _rx_srtp=rx,
        _state=State.CONNECTED,
        transport=SimpleNamespace(_connection=connection),
        _RTCDtlsTransport__rx_bytes=0,
        _RTCDtlsTransport__rx_packets=0,
    )
    receiver = SimpleNamespace(
        transport=dtls,
        _enabled=True,
        _RTCRtpReceiver__active_ssrc={},
        _RTCRtpReceiver__remote_streams={},
        _RTCRtpReceiver__codecs={111: SimpleNamespace(mimeType="audio/opus", clockRate=48_000)},
    )
    dtls._rtp_router = SimpleNamespace(ssrc_table={ssrc: receiver})
    return receiver


def test_fast_path_takes_only_our_srtp_audio() -> None:
    tx, rx = _session_pair()
    receiver = _fake_receiver(rx, 0x01020304)
    connection = receiver.transport.transport._connection
    out: list[tuple[int, bytes]] = []
    fast = AudioFastPath(receiver, lambda p: out.append((p.sequence_number, p._data)))
    assert connection.data_received == fast.data_received

    ours = tx.protect(packet(b"opus", csrc=1, extension=b"\x10\xff\x00\x00"))
    fast.data_received(ours, 1)
    assert out == [(0xFFFE, b"opus")] and connection.slow == []
    assert receiver._RTCRtpReceiver__remote_streams[0x01020304].packets_received == 1
    assert receiver.transport._RTCDtlsTransport__rx_packets == 1

    other_ssrc = packet(b"x")[:8] + (7).to_bytes(4, "big") + packet(b"x")[12:]
    other_pt = packet(b"x")[:1] + bytes([96]) + packet(b"x")[2:]
    rtcp = bytes([0x80, 201]) + bytes(10)
    for data in (b"\x00\x01" + bytes(18), b"\x16\xfe\xfd" + bytes(20), rtcp, other_ssrc, other_pt):
        fast.data_received(data, 1)
    assert len(connection.slow) == 5 and len(out) == 1

    connection._queue.put_nowait((b"older", 1))  # aiortc still has a datagram to handle: keep the order
    fast.data_received(ours, 1)
    assert connection.slow[-1] == ours and len(out) == 1


def test_after_the_first_packet_ours_are_taken_before_aioice_parses_them() -> None:
    tx, rx = _session_pair()
    receiver = _fake_receiver(rx, 0x01020304)
    connection = receiver.transport.transport._connection
    (protocol,) = connection._protocols
    out: list[int] = []
    AudioFastPath(receiver, lambda p: out.append(p.sequence_number))
    seq = [packet(b"opus")[:2] + (n).to_bytes(2, "big") + packet(b"opus")[4:] for n in (1, 2, 3)]
    protocol.datagram_received(tx.protect(seq[0]), ("127.0.0.1", 7882))  # through aioice: hooks the protocols
    connection.data_received = lambda data, component: pytest.fail("aioice got one of our packets")
    protocol.datagram_received(tx.protect(seq[1]), ("127.0.0.1", 7882))
    protocol.datagram_received(tx.protect(seq[2]), ("127.0.0.1", 7882))
    assert out == [1, 2, 3]

    stun: list[bytes] = []
    connection.data_received = lambda data, component: stun.append(data)
    binding = b"\x00\x01" + bytes(18)
    protocol.datagram_received(binding, ("127.0.0.1", 7882))  # not ours: aioice's own path, unchanged
    assert stun == [binding] and out == [1, 2, 3]


def test_replays_and_forgeries_are_dropped() -> None:
    tx, rx = _session_pair()
    receiver = _fake_receiver(rx, 0x01020304)
    out: list[int] = []
    fast = AudioFastPath(receiver, lambda p: out.append(p.sequence_number))
    protected = tx.protect(packet(b"opus"))
    fast.data_received(protected, 1)
    fast.data_received(protected, 1)  # replay
    fast.data_received(protected[:-1] + bytes([protected[-1] ^ 1]), 1)  # bad tag
    assert out == [0xFFFE] and fast.packets == 1
