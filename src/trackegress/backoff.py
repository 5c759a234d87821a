"""The one backoff rule every retry loop uses: no wait before the first try, then ``first`` doubling to ``cap``."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays for attempt 0 (the first try: none), 1 (``first``), 2 (``2 * first``), ... at most ``cap``.

    ``jitter`` spreads each delay uniformly over ``[d, 2d)`` (still at most ``cap``), so clients that failed
    together do not retry together.
    """

    first: float
    cap: float = math.inf
    jitter: bool = False

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt`` (0-based)."""
        if attempt <= 0:
            return 0.0
        seconds: float = self.first * 2.0 ** (attempt - 1)
        if self.jitter:
            seconds *= 1 + random.random()
        return min(self.cap, seconds)
