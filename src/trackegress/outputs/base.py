"""What an egress asks of its output, file or stream."""

from __future__ import annotations

from typing import Protocol

import av
from livekit.protocol import egress

from trackegress.sinks.base import Sink


class Output(Protocol):
    """An egress's output: frames go to ``sink``; the rest is asked for as the egress ends."""

    @property
    def sink(self) -> Sink: ...

    @property
    def bytes_out(self) -> int:
        """Bytes written (or delivered) so far."""
        ...

    def write_error(self, exc: OSError | av.FFmpegError) -> str:
        """Why writing failed, fit for the caller (no server paths)."""
        ...

    def loss_details(self) -> str:
        """``details`` about losses, told before the sink closes (``""``: none)."""
        ...

    def closed_details(self) -> str:
        """``details`` known once the sink has closed (``""``: none)."""
        ...

    def failure(self) -> str | None:
        """The error the output failed with on its own, if it did."""
        ...

    async def release_unused(self) -> None:
        """Remove what was prepared for media that never came."""

    async def write_results(self, info: egress.EgressInfo, started_at: int) -> str | None:
        """Put the output's results into ``info`` (media started at ``started_at``, ns); returns an upload error."""
        ...

    async def failed_results(self, info: egress.EgressInfo) -> None:
        """The results a failed egress still reports."""
