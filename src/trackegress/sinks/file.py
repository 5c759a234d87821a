"""File output: the track's frames remuxed (never transcoded) into a local file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from trackegress.media.continuity import ContinuityStats, KeyframeGate
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.sinks.muxer import Muxer

BATCH = 10  # frames muxed together (200 ms of Opus, 333 ms of 30 fps video): the muxer stays in the CPU cache


class FileSink:
    """Writes one track into ``path`` (Ogg, WebM or fragmented MP4 by codec).

    Video that follows a loss is dropped until the next keyframe (``KeyframeGate``), which
    ``request_keyframe`` is asked for.
    """

    def __init__(self, path: Path, codec: Codec, request_keyframe: Callable[[], None] | None = None) -> None:
        self.path = path
        self.codec = codec
        self._muxer = Muxer(path, codec)
        self._gate = KeyframeGate(codec, request_keyframe)
        self._pending: list[EncodedFrame] = []

    def write(self, frame: EncodedFrame) -> None:
        if not self._gate.admit(frame):
            return
        self._pending.append(frame)
        if len(self._pending) >= BATCH:
            self._flush()

    def set_muted(self, muted: bool) -> None:
        """Passthrough keeps gaps as gaps: nothing to do."""

    async def close(self) -> None:
        self._flush()
        await asyncio.to_thread(self._muxer.close)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for frame in pending:
            self._muxer.write(frame)

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
