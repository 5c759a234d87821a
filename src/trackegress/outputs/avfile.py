"""An A/V egress's output: the one file both tracks are written into live (``sinks/livemux.py``), named from the
request's template filled with the video track's values (the container follows the codecs: ``.webm`` or ``.mp4``),
claimed before it is written and uploaded with its manifest like a track egress's file."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from livekit.protocol import egress

from trackegress.config import Config
from trackegress.outputs.file import ClaimedPath, Manifest, TemplateRoom, UploaderFactory
from trackegress.room.subscriber import TrackSource
from trackegress.storage.uploader import Uploader


@dataclass
class AvFile:
    """``claim`` names and owns the file, ``write_results`` reports (and uploads) it once written, ``release``
    after a failure."""

    target: ClaimedPath

    @classmethod
    def claim(cls, request: egress.DirectFileOutput, config: Config, egress_id: str, video: TrackSource,
              room: TemplateRoom, uploader: UploaderFactory = Uploader) -> AvFile:
        """Name, check and claim the file (``EgressFailure`` if any of that fails)."""
        return cls(ClaimedPath.claim(request, config, egress_id, video.codec, video, room, uploader))

    @property
    def path(self) -> Path:
        return self.target.path

    def partial_file(self, started_at: int) -> egress.FileInfo:
        """The file being written (its size is read after a crash)."""
        return self.target.file_info(0, started_at)

    async def release(self, started_at: int) -> egress.FileInfo | None:
        """After a failure: the file as it was left if anything was written into it, else it is removed."""
        size = await asyncio.to_thread(_size, self.path)
        if size:
            return self.target.file_info(size, started_at)
        await asyncio.to_thread(self.path.unlink, True)
        return None

    async def write_results(self, info: egress.EgressInfo, started_at: int, duration: int,
                            manifest: Manifest) -> str | None:
        """Put the file's ``FileInfo`` into ``info``, upload it and its manifest if configured; the upload error."""
        size = await asyncio.to_thread(_size, self.path)
        return await self.target.deliver(info, self.target.file_info(size, started_at, duration), manifest)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
