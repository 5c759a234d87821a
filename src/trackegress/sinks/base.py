"""What every sink (file muxer, WebSocket PCM stream) offers the egress."""

from __future__ import annotations

from typing import Protocol

from trackegress.media.frames import EncodedFrame


class Sink(Protocol):
    """Receives the encoded frames of one track, in order, on the event loop."""

    def write(self, frame: EncodedFrame) -> None:
        """Take one frame; must not block."""

    def set_muted(self, muted: bool) -> None:
        """The publisher muted/unmuted the track, or media stalled/resumed."""

    async def close(self) -> None:
        """Flush and finalise; called once, after the last frame."""
