"""What the ``livekit.Egress`` API drives: egresses in this process, or on the workers of a cluster."""

from __future__ import annotations

from typing import Protocol

from livekit.protocol import egress


class Dispatcher(Protocol):
    """What the livekit.Egress API drives: ``EgressManager`` (in-process) or ``ClusterDispatcher`` (workers)."""

    @property
    def active_count(self) -> int: ...

    @property
    def accepting(self) -> bool: ...

    def available(self) -> dict[str, int] | None:
        """How many more egresses of each kind (``cpuload.KINDS``) would be admitted now; None if not known here."""
        ...

    async def start(self, request: egress.TrackEgressRequest, egress_id: str | None = None, *,
                    source: egress.StartEgressRequest | None = None) -> egress.EgressInfo: ...

    async def list(self, room_name: str = "", egress_id: str = "", active: bool = False, *, limit: int = 0,
                   after: tuple[int, str] | None = None) -> list[egress.EgressInfo]: ...

    async def stop(self, egress_id: str) -> egress.EgressInfo: ...

    async def update_stream(self, egress_id: str) -> egress.EgressInfo: ...

    async def close(self) -> None: ...
