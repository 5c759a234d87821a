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
from collections.abc import Callable
from dataclasses import dataclass

from trackegress.media.codecs import CODECS
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
        self._traits = CODECS[codec]
        self.stats = ContinuityStats()
        self._request = request_keyframe
        self._min_interval = min_interval
        self._clock = clock
        self._started = False
        self._waiting = True
        self._last_request = float("-inf")
        self._params_seen = False
        check = self._traits.continuity
        self._follows: Callable[[bytes], bool] | None = check().follows if check is not None else None

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
        traits = self._traits
        if traits.parameter_sets is not None:
            self._params_seen |= traits.parameter_sets(frame.data)
            return self._params_seen and traits.keyframe(frame.data)
        return traits.keyframe(frame.data)

    def _ask(self) -> None:
        now = self._clock()
        if self._request is None or now - self._last_request < self._min_interval:
            return
        self._last_request = now
        self.stats.keyframe_requests += 1
        self._request()
