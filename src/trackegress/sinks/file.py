"""File output: the track's frames remuxed (never transcoded) into a local file."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path

from trackegress.media.continuity import ContinuityStats, KeyframeGate
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.media.sync import SenderClock, SyncInfo
from trackegress.sinks.layers import TOP_LAYER_WAIT, LayerWatch, Size, TopLayerStart
from trackegress.sinks.livemux import Lane
from trackegress.sinks.muxer import Muxer

# Free space under which a failed write is put down to a full disk: FFmpeg may report a short write as EINVAL.
NEARLY_FULL = 1 << 20
BATCH = 10  # frames muxed together (200 ms of Opus, 333 ms of 30 fps video): the muxer stays in the CPU cache
# At a layer switch the SFU forwards the new layer's keyframe of the same captured picture as the old layer's last
# frame, stamped a tick later: that old frame is superseded (two pictures of one instant do not fit one timeline).
SAME_INSTANT = 0.005


class FileSink:
    """Writes one track into ``path`` (Ogg, WebM or fragmented MP4 by codec).

    Video that follows a loss is dropped until the next keyframe (``KeyframeGate``), which
    ``request_keyframe`` is asked for. ``top``: the largest layer the track announces (video); the file starts on
    it (waiting up to ``top_wait`` seconds of media for it) and its header states it. ``lane``: the live A/V file
    this track is also written into (packet for packet).
    """

    def __init__(
        self, path: Path, codec: Codec, request_keyframe: Callable[[], None] | None = None, top: Size | None = None,
        top_wait: float = TOP_LAYER_WAIT, lane: Lane | None = None,
    ) -> None:
        self.path = path
        self.codec = codec
        self._muxer = Muxer(path, codec, size=top, tee=lane)
        if lane is not None:
            lane.track = self
        self._gate = KeyframeGate(codec, request_keyframe)
        self._start = TopLayerStart(codec, top, top_wait)
        self._layers = LayerWatch(codec)
        self._pending: list[EncodedFrame] = []
        self._last: EncodedFrame | None = None  # video: written once the next frame shows it is not superseded
        self._same_instant = int(SAME_INSTANT * codec.clock_rate)
        self.superseded = 0
        self.received = 0  # frames handed to ``write``
        self._clock = SenderClock(codec.clock_rate)

    def write(self, frame: EncodedFrame) -> None:
        self.received += 1
        self._clock.see(frame)
        if not self._gate.admit(frame):
            return
        if self._start.started:
            self._pending.append(frame)
        else:
            self._pending.extend(self._start.admit(frame))
        if len(self._pending) >= BATCH:
            self._flush()

    @property
    def layer_switches(self) -> int:
        """Times the picture size changed in what was written."""
        return self._layers.switches

    def set_muted(self, muted: bool) -> None:
        """Passthrough keeps gaps as gaps: nothing to do."""

    async def close(self) -> None:
        self._pending.extend(self._start.drain())
        self._flush()
        if self._last is not None:
            self._write_video(self._last)
            self._last = None
        await asyncio.to_thread(self._muxer.close)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not self.codec.is_video:
            for frame in pending:
                self._muxer.write(frame)
            return
        for frame in pending:
            last = self._last
            if last is not None:
                if frame.keyframe and frame.timestamp - last.timestamp < self._same_instant:
                    self.superseded += 1
                else:
                    self._write_video(last)
            self._last = frame

    def _write_video(self, frame: EncodedFrame) -> None:
        self._layers.see(frame)
        self._muxer.write(frame)

    @property
    def sync(self) -> SyncInfo | None:
        """When the file's first sample was captured (None while nothing is written)."""
        first = self._muxer.first
        return None if first is None else self._clock.info(first)

    @property
    def arrival_sync(self) -> SyncInfo | None:
        """When the file's first sample arrived here."""
        first = self._muxer.first
        return None if first is None else self._clock.info(first, by_arrival=True)

    @property
    def header_size(self) -> Size | None:
        """The picture size the file declares (video, once it is open)."""
        return self._muxer.size

    @property
    def continuity(self) -> ContinuityStats:
        """Losses seen and video frames dropped because of them."""
        return self._gate.stats

    @property
    def gap_frames(self) -> int:
        """Audio frames missing on the file's timeline (loss, DTX or mute), written as gaps."""
        return self._muxer.filled

    @property
    def frames(self) -> int:
        return self._muxer.frames

    @property
    def duration_ns(self) -> int:
        return self._muxer.duration_ns

    @property
    def size(self) -> int:
        """Bytes on disk so far (0 before the file exists)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


def write_error(exc: OSError | Exception, directory: Path) -> str:
    """Why writing the output failed, without its path; a full disk is named as such whatever FFmpeg made of it."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or _nearly_full(directory):
        return os.strerror(errno.ENOSPC)
    return getattr(exc, "strerror", None) or type(exc).__name__


def _nearly_full(directory: Path) -> bool:
    try:
        usage = os.statvfs(directory)
    except OSError:
        return False
    return usage.f_bavail * usage.f_frsize < NEARLY_FULL
