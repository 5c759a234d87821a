"""Remuxing with PyAV: encoded frames in, container out, never a decoder or encoder on the media path.

Opus → Ogg, G.711 → WAV, VP8 / VP9 / AV1 → WebM, H.264 / H.265 → fragmented MP4 (a fragment per keyframe or
per half second, the moov up front), so a process killed mid-way leaves a file that plays up to its last fragment
(the table: ``media/codecs.py``); a VP9 SVC picture shows its top layer only (its row's ``picture``).
Timestamps are the RTP timestamps relative to the first frame: a gap in the track stays a gap in the file
(audio: filled, as Ogg and WAV have no per-packet time).
"""

from __future__ import annotations

import fractions
import logging
import struct
from pathlib import Path
from typing import Protocol

import av
from av.container import OutputContainer
from av.stream import Stream

from trackegress.media.codecs import CODECS, keyframe_size, output_format
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.media.opus import opus_packet_samples

log = logging.getLogger(__name__)

# An OpusHead with pre-skip 0: the packets are the publisher's, no encoder delay to hide.
_OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 0, 48_000, 0, 0)


class Tee(Protocol):
    """Sees every packet the muxer writes (the live A/V file's lane)."""

    def packet(self, data: bytes, timestamp: int, keyframe: bool, duration: int) -> None:
        """``timestamp``: the frame's (extended RTP) timestamp; ``duration`` in the codec's clock."""
        ...


class Muxer:
    """Writes one track's frames into ``path``; the file is created at the first usable frame. ``tee`` is handed
    every packet written."""

    def __init__(self, path: Path, codec: Codec, size: tuple[int, int] | None = None, tee: Tee | None = None) -> None:
        self.path = path
        self.codec = codec
        self._traits = CODECS[codec]
        self._tee = tee
        # the header's picture size: the largest layer when the track announces its layers, the first keyframe's
        # if larger (set once the file is open)
        self.size = size
        # Video times stay at least 1 ms apart (WebM's resolution): the SFU stamps a layer switch's keyframe a
        # tick after the previous layer's last frame.
        self._min_step = codec.clock_rate // 1000 if codec.is_video else 1
        self.frames = 0
        self.dropped = 0
        self.filled = 0
        self._time_base = fractions.Fraction(1, codec.clock_rate)
        self._container: OutputContainer | None = None
        self._stream: Stream | None = None
        self._pts_shift = 0
        self._first_ts = 0
        self.first: EncodedFrame | None = None  # the frame at the file's time 0
        self._last_ts = -1
        self._last_duration = 0
        self._last_toc = 0
        self._closed = False

    @property
    def duration_ns(self) -> int:
        """Media time from the first frame to the end of the last one."""
        if self.frames == 0:
            return 0
        ticks = self._last_ts - self._first_ts + self._last_duration
        return ticks * 1_000_000_000 // self.codec.clock_rate

    def write(self, frame: EncodedFrame) -> None:
        """Mux one frame; video before the first keyframe, invalid Opus and out-of-order frames are dropped."""
        if self._closed:
            return
        audio = not self.codec.is_video
        duration = self._traits.samples(frame.data) if audio else 0
        if (audio and not duration) or (self._container is None and not self._open(frame)) or (
            frame.timestamp <= self._last_ts
        ):
            self.dropped += 1
            return
        timestamp = frame.timestamp
        if not audio:  # a video frame lasts until the next: assume the last interval again
            if self.frames:
                timestamp = max(timestamp, self._last_ts + self._min_step)
            duration = timestamp - self._last_ts if self.frames else 0
        elif self.frames and timestamp > self._last_ts + self._last_duration:  # a gap
            self._fill_until(timestamp)
        self._mux(self._traits.picture(frame.data), timestamp, frame.keyframe, duration)

    def close(self) -> None:
        """Finish the file (idempotent)."""
        self._closed = True
        container, self._container = self._container, None
        if container is not None:
            container.close()

    def _open(self, frame: EncodedFrame) -> bool:
        size = None
        if self.codec.is_video:
            size = keyframe_size(self.codec, frame.data) if frame.keyframe else None
            if size is None:
                return False
            if self.size is not None:
                size = (max(size[0], self.size[0]), max(size[1], self.size[1]))
            self.size = size
        output = output_format(self.codec)
        options = {"flush_packets": "1", **output.mux_options}
        container = av.open(str(self.path), "w", format=output.container, options=options)
        if self.codec is Codec.OPUS:
            self._stream, self._pts_shift = opus_stream(container)
        elif size is None:  # G.711: a stream made for an encoder (never opened), as a mux stream has no channels
            self._stream = container.add_stream(output.ffmpeg_codec, rate=self.codec.clock_rate, layout="mono")
            self._stream.time_base = self._time_base
        else:
            self._stream = video_stream(container, self.codec, size)
        self._container = container
        self._first_ts = frame.timestamp
        self.first = frame
        return True

    def _fill_until(self, timestamp: int) -> None:
        """Cover an audio gap (loss, DTX, mute): Opus with TOC-only packets, which decoders treat as lost frames,
        G.711 with silence.

        Ogg and WAV have no per-packet time: without them players would close the gap and drift out of sync.
        """
        silence = self._traits.silence  # G.711 gaps in WAV: zero samples
        if silence is not None:  # a second at most per packet; ``filled`` counts frames of the last one's length
            frame = self._last_duration
            while (start := self._last_ts + self._last_duration) < timestamp:
                step = min(timestamp - start, self.codec.clock_rate)
                self._mux(bytes([silence]) * step, start, True, step)
                self.filled += -(-step // frame)
            return
        filler = bytes([self._last_toc & 0xFC])  # same mode and frame size, one frame, no payload
        step = opus_packet_samples(filler)
        while self._last_ts + self._last_duration + step <= timestamp:
            self._mux(filler, self._last_ts + self._last_duration, True, step)
            self.filled += 1

    def _mux(self, data: bytes, timestamp: int, keyframe: bool, duration: int) -> None:
        assert self._container is not None and self._stream is not None
        pts = timestamp - self._first_ts - self._pts_shift
        self._container.mux(encoded_packet(self._stream, data, pts, self._time_base, keyframe, duration))
        if self._tee is not None:
            self._tee.packet(data, timestamp, keyframe, duration)
        self._last_ts = timestamp
        self._last_duration = duration
        self._last_toc = data[0]
        self.frames += 1



def opus_stream(container: OutputContainer) -> tuple[Stream, int]:
    """An Opus stream whose header (``OpusHead``, pre-skip 0: the packets are the publisher's) we set ourselves (the
    libopus context is opened, never fed), and the encoder's pre-skip.

    FFmpeg's Ogg muxer adds that pre-skip to every granule position, so an Ogg file's packet times are shifted back
    by it to keep its timeline starting at zero.
    """
    stream = container.add_stream("libopus", rate=48_000, layout="stereo")
    context = stream.codec_context
    context.open()
    pre_skip: int = struct.unpack_from("<H", context.extradata or bytes(12), 10)[0]
    context.extradata = _OPUS_HEAD
    return stream, pre_skip


def video_stream(container: OutputContainer, codec: Codec, size: tuple[int, int]) -> Stream:
    """A stream for ``codec``'s encoded pictures of ``size``, on the codec's clock."""
    stream = container.add_mux_stream(output_format(codec).ffmpeg_codec, width=size[0], height=size[1])
    stream.time_base = fractions.Fraction(1, codec.clock_rate)
    return stream


def encoded_packet(
    stream: Stream, data: bytes, pts: int, time_base: fractions.Fraction, keyframe: bool, duration: int
) -> av.Packet[Stream]:
    """``data`` as a packet of ``stream`` at ``pts`` (``pts`` and ``duration`` in ``time_base``, the codec's clock:
    the muxer rescales it to the stream's, which its header may have changed)."""
    packet = av.Packet(data)
    packet.pts = packet.dts = pts
    packet.time_base = time_base
    packet.is_keyframe = keyframe
    packet.duration = duration
    packet.stream = stream
    return packet
