"""Never write a video frame a decoder cannot decode: after a loss, drop until the next keyframe.

A frame is dropped when something before it was lost for good (the transport marks it
``contiguous=False``, or, for H.264, its ``frame_num`` skips a reference picture), or it is an AV1 SVC unit of
another spatial layer than the last keyframe's (the SFU switched layers without one), and every frame after
it until a keyframe that a decoder can start from; each such gap asks the transport for a keyframe,
at most once per ``min_interval``. Audio passes untouched (Ogg keeps its gaps on the timeline); its
gaps are only counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from trackegress.media import av1, h264, h265, vp8, vp9
from trackegress.media.frames import Codec, EncodedFrame

log = logging.getLogger(__name__)

KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds between keyframe requests while waiting for one


@dataclass(slots=True)
class ContinuityStats:
    """What the gate saw: ``gaps`` (losses detected), ``dropped`` (frames not written because they
    followed a loss), ``resyncs`` (keyframes that ended a gap), ``skipped`` (frames before the first
    keyframe), ``keyframe_requests``."""

    frames: int = 0
    gaps: int = 0
    dropped: int = 0
    resyncs: int = 0
    skipped: int = 0
    keyframe_requests: int = 0

    def summary(self) -> str:
        return (
            f"{self.gaps} losses, {self.dropped} frames dropped until a keyframe, {self.resyncs} resyncs, "
            f"{self.keyframe_requests} keyframe requests"
        )


class _H264FrameNums:
    """Detects a lost reference picture from ``frame_num`` (7.4.3): after a reference picture the next
    picture's frame_num is one more (mod 2^bits); after a non-reference one it stays the same."""

    def __init__(self) -> None:
        self._bits: int | None = None
        self._expected: int | None = None

    def follows(self, data: bytes) -> bool:
        """Record this access unit; False if a reference picture between the last one and it is missing."""
        bits = h264.frame_num_bits(data) or self._bits
        self._bits = bits
        parsed = h264.slice_frame_num(data, bits) if bits else None
        if parsed is None:
            self._expected = None
            return True
        frame_num, reference = parsed
        ok = h264.is_keyframe(data) or self._expected is None or frame_num == self._expected
        assert bits is not None
        self._expected = (frame_num + 1) % (1 << bits) if reference else frame_num
        return ok


class _Av1SpatialLayer:
    """AV1 SVC: a keyframe unit establishes the spatial layer the recording follows (its highest). With Chromium's
    L3T3_KEY the layers predict only from themselves after the keyframe, so a unit whose highest layer differs
    references pictures the recording does not have (seen: the SFU moving from 320x180 to 640x360 mid-GOP)."""

    def __init__(self) -> None:
        self._layer: int | None = None

    def follows(self, data: bytes) -> bool:
        """Record this unit; False if its spatial layer is not the one the last keyframe established."""
        start, layer = av1.start_and_layer(data)
        if layer is None:
            return True
        if start:
            self._layer = layer
            return True
        return self._layer is None or layer == self._layer


# Where a decoder can start, per codec (H.264 and H.265 also need their parameter sets: KeyframeGate).
_KEYFRAME: Mapping[Codec, Callable[[bytes], bool]] = {
    Codec.VP8: vp8.is_keyframe,
    Codec.VP9: vp9.is_keyframe,
    Codec.AV1: lambda data: av1.start_and_layer(data)[0],  # a KEY_FRAME unit that carries its sequence header
}


class KeyframeGate:
    """Decides, frame by frame, what the file sink may write (see the module docstring).

    ``request_keyframe`` is called (synchronously; it must not block) when a keyframe is needed.
    """

    def __init__(
        self,
        codec: Codec,
        request_keyframe: Callable[[], None] | None = None,
        *,
        min_interval: float = KEYFRAME_REQUEST_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.codec = codec
        self.stats = ContinuityStats()
        self._request = request_keyframe
        self._min_interval = min_interval
        self._clock = clock
        self._started = False
        self._waiting = True
        self._last_request = float("-inf")
        self._params_seen = False
        self._follows: Callable[[bytes], bool] | None = (
            _H264FrameNums().follows if codec is Codec.H264 else _Av1SpatialLayer().follows if codec is Codec.AV1
            else None
        )

    @property
    def waiting(self) -> bool:
        """True while frames are being dropped until a keyframe."""
        return self._waiting

    def admit(self, frame: EncodedFrame) -> bool:
        """True if ``frame`` may be written."""
        stats = self.stats
        stats.frames += 1
        if not self.codec.is_video:
            stats.gaps += not frame.contiguous
            return True
        intact = frame.contiguous
        if self._follows is not None:
            intact = self._follows(frame.data) and intact
        if not intact and self._started:
            stats.gaps += 1
            if not self._waiting:
                log.info("%s: ts %d cannot be decoded after what was written (a loss, or a layer switch without a "
                         "keyframe), dropping until a keyframe", self.codec.name, frame.timestamp)
            self._waiting = True
        if self._waiting:
            if not self._recovery_point(frame):
                if self._started:
                    stats.dropped += 1
                else:
                    stats.skipped += 1
                self._ask()
                return False
            stats.resyncs += self._started
            self._started, self._waiting = True, False
        return True

    def _recovery_point(self, frame: EncodedFrame) -> bool:
        """A keyframe a decoder can start from, by the codec's own bitstream (H.264 / H.265: once the parameter
        sets came, in band; AV1: a keyframe temporal unit carries its sequence header)."""
        if self.codec is Codec.H264:
            self._params_seen |= h264.parameter_sets(frame.data) is not None
            return self._params_seen and h264.is_keyframe(frame.data)
        if self.codec is Codec.H265:
            self._params_seen |= h265.dimensions(frame.data) is not None
            return self._params_seen and h265.is_keyframe(frame.data)
        return _KEYFRAME[self.codec](frame.data)

    def _ask(self) -> None:
        now = self._clock()
        if self._request is None or now - self._last_request < self._min_interval:
            return
        self._last_request = now
        self.stats.keyframe_requests += 1
        self._request()
