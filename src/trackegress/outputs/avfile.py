"""An A/V egress's output: the one file its two track recordings are joined into (``mux.mux``), named from the
request's template filled with the video track's values (the container follows the codecs: ``.webm`` or ``.mp4``),
claimed before it is written and uploaded with its manifest like a track egress's file."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from livekit.protocol import egress

from trackegress.config import Config
from trackegress.mux import MuxResult, mux
from trackegress.outputs.file import ClaimedPath, Manifest, TemplateRoom, UploaderFactory
from trackegress.room.subscriber import TrackSource
from trackegress.storage.uploader import Uploader


@dataclass
class AvFile:
    """``claim`` names and owns the file, ``join`` writes it, ``write_results`` reports (and uploads) it."""

    target: ClaimedPath

    @classmethod
    def claim(cls, request: egress.DirectFileOutput, config: Config, egress_id: str, video: TrackSource,
              room: TemplateRoom, uploader: UploaderFactory = Uploader) -> AvFile:
        """Name, check and claim the file (``EgressFailure`` if any of that fails)."""
        return cls(ClaimedPath.claim(request, config, egress_id, video.codec, video, room, uploader))

    @property
    def path(self) -> Path:
        return self.target.path

    async def join(self, tracks: Sequence[Path]) -> MuxResult:
        """Join the track files into a temporary file beside the claimed one, then move it into place
        (``MuxError``)."""
        temporary = self.path.with_name(f".{self.path.stem}.joining{self.path.suffix}")
        try:
            result = await asyncio.to_thread(mux, temporary, tracks)
            await asyncio.to_thread(os.replace, temporary, self.path)
        finally:
            await asyncio.to_thread(temporary.unlink, True)
        return dataclasses.replace(result, path=self.path)

    async def release(self) -> None:
        """The claimed file, never joined, is removed."""
        if self.path.exists() and self.path.stat().st_size == 0:
            await asyncio.to_thread(self.path.unlink, True)

    async def write_results(self, info: egress.EgressInfo, started_at: int, duration: int,
                            manifest: Manifest) -> str | None:
        """Put the file's ``FileInfo`` into ``info``, upload it and its manifest if configured; the upload error."""
        file_info = self.target.file_info(self.path.stat().st_size, started_at, duration)
        return await self.target.deliver(info, file_info, manifest)
