"""Audio packet ordering without a jitter delay: one RTP packet is one Opus frame, released at once.

aiortc's jitter buffer holds every frame until the next one starts (20 ms at best, 80 ms by default)
and merges packets that share a timestamp, which the SFU's blank frames do. This buffer releases an
in-order packet immediately and waits only when one is missing: at most ``patience`` later packets,
then the hole is given up as lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Emit = Callable[[bytes, int], None]


def _seq_delta(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, in -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


class AudioReorderBuffer:
    """Stands in for aiortc's ``JitterBuffer`` on an audio receiver; frames go to ``emit(data, timestamp)``."""

    def __init__(self, emit: Emit, patience: int = 3) -> None:
        self._emit = emit
        self._patience = patience
        self._next: int | None = None
        self._held: dict[int, Any] = {}
        self.lost = 0
        self.late = 0

    def add(self, packet: Any) -> tuple[bool, None]:
        """aiortc's ``JitterBuffer.add`` signature: never asks for a PLI, never returns a frame itself."""
        seq = packet.sequence_number
        if seq == self._next and not self._held:  # the usual case: in order, nothing missing
            self._next = (seq + 1) & 0xFFFF
            self._emit(packet._data, packet.timestamp)
            return False, None
        if self._next is None:
            self._next = seq
        delta = _seq_delta(seq, self._next)
        if delta < 0 or seq in self._held:
            self.late += 1
            return False, None
        self._held[seq] = packet
        self._release()
        if len(self._held) > self._patience:
            self._skip_hole()
        return False, None

    def flush(self) -> None:
        """Release everything held, holes given up (the track ended)."""
        while self._held:
            self._skip_hole()

    def _release(self) -> None:
        assert self._next is not None
        while (packet := self._held.pop(self._next, None)) is not None:
            self._next = (self._next + 1) & 0xFFFF
            self._emit(packet._data, packet.timestamp)

    def _skip_hole(self) -> None:
        assert self._next is not None
        first = min(self._held, key=lambda seq: _seq_delta(seq, self._next or 0))
        self.lost += _seq_delta(first, self._next)
        self._next = first
        self._release()
