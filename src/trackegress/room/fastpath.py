"""A short receive path for audio SRTP: from the ICE datagram callback straight to the reorder buffer.

aiortc hands every datagram through an ``asyncio.Queue`` to the DTLS transport's task, which unprotects,
parses a full ``RtpPacket``, routes it and runs the receiver's per-packet work. For an Opus track that is
most of an egress's CPU. Once DTLS is connected, :class:`AudioFastPath` takes the SRTP packets of our
audio receiver's SSRCs in the datagram callback itself: it unprotects them with aiortc's own SRTP session,
reads the few header fields we use, feeds the receiver's RTCP statistics (receiver reports stay exact)
and hands the packet to the ``AudioReorderBuffer``. Everything else (STUN, DTLS, SRTCP, other SSRCs, a
new SSRC's first packet, anything while aiortc's queue is not empty) takes aiortc's path unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aiortc import clock
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpreceiver import StreamStatistics

log = logging.getLogger(__name__)

_RTP_HEADER = 12


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
    first = data[0]
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
    second = data[1]
    return RtpHeader(
        second & 0x7F,
        second >> 7,
        (data[2] << 8) | data[3],
        int.from_bytes(data[4:8], "big"),
        int.from_bytes(data[8:12], "big"),
        data[pos:end],
    )


class AudioFastPath:
    """Takes over ``Connection.data_received`` of the ICE connection under one audio receiver."""

    def __init__(self, receiver: Any, add: Callable[[RtpHeader], object]) -> None:
        self._receiver = receiver
        self._add = add
        self._dtls = receiver.transport
        self._connection = self._dtls.transport._connection
        self._queue = self._connection._queue
        self._router = self._dtls._rtp_router
        self._slow: Callable[[bytes, int], None] = self._connection.data_received
        self._clock_rates: dict[int, int | None] = {}
        self.packets = 0
        self.enabled = True
        self._connection.data_received = self.data_received

    def data_received(self, data: bytes, component: int) -> None:
        if not (self.enabled and self._take(data)):
            self._slow(data, component)

    def _take(self, data: bytes) -> bool:
        """Handle one datagram if it is SRTP for our receiver; False leaves it to aiortc."""
        if len(data) < _RTP_HEADER or not 127 < data[0] < 192 or 192 <= data[1] <= 208:
            return False  # not RTP (STUN, DTLS, SRTCP)
        dtls, receiver = self._dtls, self._receiver
        srtp = dtls._rx_srtp
        if srtp is None or self._queue.qsize() or not receiver._enabled:
            return False  # keys not there yet, or aiortc has older datagrams to handle first
        ssrc = int.from_bytes(data[8:12], "big")
        if self._router.ssrc_table.get(ssrc) is not receiver:
            return False  # someone else's, or a new SSRC aiortc has to learn first
        payload_type = data[1] & 0x7F
        clock_rate = self._clock_rates.get(payload_type, 0)
        if clock_rate == 0:
            clock_rate = self._clock_rates[payload_type] = self._opus_clock_rate(payload_type)
        if clock_rate is None:
            return False
        if dtls._state is not State.CONNECTED:
            return False
        try:
            self._handle(dtls, srtp, data, clock_rate)
        except Exception:
            log.exception("audio fast path failed; aiortc handles the track from now on")
            self.enabled = False
        return True

    def _handle(self, dtls: Any, srtp: Any, data: bytes, clock_rate: int) -> None:
        dtls._RTCDtlsTransport__rx_bytes += len(data)
        dtls._RTCDtlsTransport__rx_packets += 1
        try:
            plain = srtp.unprotect(data)
        except pylibsrtp.Error:
            return  # as aiortc: authentication failed or a replay
        packet = parse_rtp(plain)
        if packet is None:
            return
        self.packets += 1
        receiver = self._receiver
        receiver._RTCRtpReceiver__active_ssrc[packet.ssrc] = clock.current_datetime()
        streams = receiver._RTCRtpReceiver__remote_streams
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(clock_rate)
        stats.add(packet)
        self._add(packet)

    def _opus_clock_rate(self, payload_type: int) -> int | None:
        codec = self._receiver._RTCRtpReceiver__codecs.get(payload_type)
        if codec is None or codec.mimeType.lower() != "audio/opus":
            return None
        return int(codec.clockRate)
