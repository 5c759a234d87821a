"""A short receive path for audio SRTP: from the UDP socket's callback straight to the reorder buffer.

aiortc hands every datagram through aioice's STUN parse attempt and an ``asyncio.Queue`` to the DTLS
transport's task, which unprotects, parses a full ``RtpPacket``, routes it and runs the receiver's
per-packet work. For an Opus track that is most of an egress's CPU. Once DTLS is connected,
:class:`AudioFastPath` takes the SRTP packets of our audio receiver's SSRCs in the datagram callback of
aioice's protocols: it unprotects them with aiortc's own SRTP session (through libsrtp directly, without
pylibsrtp's per-call allocations), reads the few header fields we use, feeds the receiver's RTCP
statistics (receiver reports stay exact) and hands the packet to the ``AudioReorderBuffer``. Everything
else (STUN, DTLS, SRTCP, other SSRCs, a new SSRC's first packet, anything while aiortc's queue is not
empty) takes aiortc's path unchanged. The receiver's ``getSynchronizationSources`` is not fed: nothing
reads it for audio.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpreceiver import StreamStatistics
from pylibsrtp._binding import ffi, lib

log = logging.getLogger(__name__)

_RTP_HEADER = 12
_HEADER = struct.Struct("!BBHII")


class RtpHeader:
    """The fields of an RTP packet the audio path uses; ``_data`` is the payload (aiortc's name for it)."""

    __slots__ = ("_data", "marker", "payload_type", "sequence_number", "ssrc", "timestamp")

    def __init__(self, payload_type: int, marker: int, sequence_number: int, timestamp: int, ssrc: int,
                 data: bytes) -> None:
        self.payload_type = payload_type
        self.marker = marker
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self._data = data


def parse_rtp(data: bytes) -> RtpHeader | None:
    """Parse a plain RTP packet (as ``RtpPacket.parse`` validates it); None if it is malformed."""
    size = len(data)
    if size < _RTP_HEADER or data[0] >> 6 != 2:
        return None
    first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data)
    pos = _RTP_HEADER + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in 32-bit words
        if size < pos + 4:
            return None
        pos += 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    if size < pos:
        return None
    end = size
    if first & 0x20:  # padding: its length is the last byte
        padding = data[-1]
        if not padding or padding > size - pos:
            return None
        end -= padding
    return RtpHeader(second & 0x7F, second >> 7, sequence_number, timestamp, ssrc, data[pos:end])


class SrtpReader:
    """``pylibsrtp.Session.unprotect`` without its per-call allocation and checks (half its cost).

    Shares the session's buffer: every call happens on the event loop and copies its result out.
    """

    def __init__(self, session: Any) -> None:
        self._session = session  # keeps the libsrtp context alive
        self._context = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._capacity = len(session._buffer)
        self._length = ffi.new("int *")

    def unprotect(self, data: bytes) -> bytes | None:
        """The plain RTP packet, or None if authentication failed, it is a replay or too long."""
        size = len(data)
        if size > self._capacity:
            return None
        length = self._length
        length[0] = size
        self._buffer[0:size] = data
        if lib.srtp_unprotect(self._context, self._cdata, length):
            return None
        return self._buffer[0 : length[0]]  # type: ignore[no-any-return]


class AudioFastPath:
    """Takes our audio receiver's SRTP packets out of the ICE connection under it."""

    def __init__(self, receiver: Any, add: Callable[[RtpHeader], object]) -> None:
        self._receiver = receiver
        self._add = add
        self._dtls = receiver.transport
        self._connection = self._dtls.transport._connection
        self._pending = self._connection._queue._queue  # aiortc's datagrams not handled yet
        self._ssrcs = self._dtls._rtp_router.ssrc_table
        self._streams = receiver._RTCRtpReceiver__remote_streams
        self._slow: Callable[[bytes, int], None] = self._connection.data_received
        self._clock_rates: dict[int, int | None] = {}
        self._srtp: SrtpReader | None = None
        self._hooked = False
        self.packets = 0
        self.enabled = True
        self._connection.data_received = self.data_received

    def data_received(self, data: bytes, component: int) -> None:
        """aioice's ``Connection.data_received``: every datagram that is not STUN."""
        if not self._take(data):
            self._slow(data, component)
        elif not self._hooked:
            self._hook_protocols()

    def _hook_protocols(self) -> None:
        """From now on, take our packets before aioice tries to parse them as STUN (and fails)."""
        self._hooked = True
        for protocol in self._connection._protocols:
            protocol.datagram_received = self._protocol_hook(protocol.datagram_received)

    def _protocol_hook(self, slow: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
        take = self._take

        def datagram_received(data: bytes, addr: Any) -> None:
            if not take(data):
                slow(data, addr)

        return datagram_received

    def _take(self, data: bytes) -> bool:
        """Handle one datagram if it is SRTP for our receiver; False leaves it to aiortc."""
        if len(data) < _RTP_HEADER or not 127 < data[0] < 192 or 192 <= data[1] <= 208:
            return False  # not RTP (STUN, DTLS, SRTCP)
        receiver = self._receiver
        if not self.enabled or self._pending or self._dtls._state is not State.CONNECTED or not receiver._enabled:
            return False  # aiortc has older datagrams to handle first, or is not (or no longer) receiving
        ssrc = int.from_bytes(data[8:12], "big")
        if self._ssrcs.get(ssrc) is not receiver:
            return False  # someone else's, or a new SSRC aiortc has to learn first
        payload_type = data[1] & 0x7F
        clock_rate = self._clock_rates.get(payload_type, 0)
        if clock_rate == 0:
            clock_rate = self._clock_rates[payload_type] = self._opus_clock_rate(payload_type)
        if clock_rate is None:
            return False
        try:
            self._handle(data, ssrc, clock_rate)
        except Exception:
            log.exception("audio fast path failed; aiortc handles the track from now on")
            self.enabled = False
        return True

    def _handle(self, data: bytes, ssrc: int, clock_rate: int) -> None:
        dtls = self._dtls
        dtls._RTCDtlsTransport__rx_bytes += len(data)
        dtls._RTCDtlsTransport__rx_packets += 1
        srtp = self._srtp
        if srtp is None or srtp._session is not dtls._rx_srtp:
            srtp = self._srtp = SrtpReader(dtls._rx_srtp)
        plain = srtp.unprotect(data)
        if plain is None:
            return  # as aiortc: authentication failed or a replay
        packet = parse_rtp(plain)
        if packet is None:
            return
        self.packets += 1
        stats = self._streams.get(ssrc)
        if stats is None:
            stats = self._streams[ssrc] = StreamStatistics(clock_rate)
        stats.add(packet)
        self._add(packet)

    def _opus_clock_rate(self, payload_type: int) -> int | None:
        codec = self._receiver._RTCRtpReceiver__codecs.get(payload_type)
        if codec is None or codec.mimeType.lower() != "audio/opus":
            return None
        return int(codec.clockRate)
