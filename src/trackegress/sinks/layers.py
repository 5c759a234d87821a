"""Simulcast and SVC layers as a recording sees them: start on the top layer, notice layer switches.

The SFU starts a new subscriber on the lowest simulcast layer and switches up once its bandwidth estimate
allows, each switch beginning with a keyframe of the new layer's size. A recording that simply started at the
first keyframe would begin (and, in WebM/MP4, declare its size) at 320x180. ``TopLayerStart`` holds frames back
until a keyframe of the top layer the track announces (``TrackInfo.layers``); if that layer does not come within
``wait`` seconds of media (from the first frame received), the recording starts with the frames held since the
first lower-layer keyframe, so the fallback loses nothing.
"""

from __future__ import annotations

import logging

from trackegress.media.codecs import keyframe_size
from trackegress.media.frames import Codec, EncodedFrame

log = logging.getLogger(__name__)

Size = tuple[int, int]
TOP_LAYER_WAIT = 5.0  # seconds of media the recording waits for the top layer before starting on a lower one


def covers(size: Size, top: Size) -> bool:
    """Whether a picture of ``size`` is (at least) the top layer's."""
    return size[0] >= top[0] and size[1] >= top[1]


class TopLayerStart:
    """Admits a video track's frames once a keyframe of size ``top`` arrived (or the bounded fallback fired)."""

    def __init__(self, codec: Codec, top: Size | None, wait: float = TOP_LAYER_WAIT) -> None:
        self.codec = codec
        self.top = top
        self.started = top is None or not codec.is_video
        self._wait_ticks = int(wait * codec.clock_rate)
        self._held: list[EncodedFrame] = []
        self._first_ts: int | None = None
        self.skipped = 0

    def admit(self, frame: EncodedFrame) -> list[EncodedFrame]:
        """The frames to write now: none while waiting, then the top layer's keyframe (or everything held)."""
        if self.started:
            return [frame]
        assert self.top is not None
        if self._first_ts is None:
            self._first_ts = frame.timestamp
        size = keyframe_size(self.codec, frame.data) if frame.keyframe else None
        if size is not None and covers(size, self.top):
            self.started = True
            self.skipped += len(self._held)
            self._held = []
            log.info("recording starts on the top layer %dx%d", *size)
            return [frame]
        if self._held or size is not None:
            self._held.append(frame)
        else:
            self.skipped += 1
        if self._held and frame.timestamp - self._first_ts >= self._wait_ticks:
            return self._fall_back()
        return []

    def drain(self) -> list[EncodedFrame]:
        """At the end: what is held, if the top layer never came (a short recording of a lower layer)."""
        return [] if self.started or not self._held else self._fall_back()

    def _fall_back(self) -> list[EncodedFrame]:
        assert self.top is not None
        size = keyframe_size(self.codec, self._held[0].data) or (0, 0)
        log.warning(
            "top layer %dx%d not received within %.1f s of media; recording starts on %dx%d",
            *self.top, self._wait_ticks / self.codec.clock_rate, *size,
        )
        self.started = True
        held, self._held = self._held, []
        return held


class LayerWatch:
    """Counts and logs changes of the keyframe size in what is written (a simulcast or SVC layer switch)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.size: Size | None = None
        self.switches = 0

    def see(self, frame: EncodedFrame) -> None:
        if not frame.keyframe or not self.codec.is_video:
            return
        size = keyframe_size(self.codec, frame.data)
        if size is None or size == self.size:
            return
        if self.size is not None:
            self.switches += 1
            log.info("layer switch %dx%d -> %dx%d", *self.size, *size)
        self.size = size
