"""An A/V egress's output: the one file its two track recordings are joined into (``mux.mux``), named from the
request's template filled with the video track's values (the container follows the codecs: ``.webm`` or ``.mp4``),
claimed before it is written and uploaded with its manifest like a track egress's file."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from livekit.protocol import egress

from trackegress.config import Config
from trackegress.mux import MuxResult, mux
from trackegress.outputs.file import (
    ClaimedPath,
    TemplateRoom,
    UploaderFactory,
    remove_empty_dir,
    upload_then_remove,
    write_whole,
)
from trackegress.room.subscriber import TrackSource
from trackegress.storage.base import UploadError
from trackegress.storage.local import LocalStorage
from trackegress.storage.settings import Destination
from trackegress.storage.uploader import Uploader

Manifest = Callable[[egress.EgressInfo], bytes]


@dataclass
class AvFile:
    """``claim`` names and owns the file, ``join`` writes it, ``write_results`` reports (and uploads) it."""

    filename: str  # as requested, templates filled in: relative to the base dir, or the object key's tail
    path: Path  # where it is written here
    egress_id: str
    storage: LocalStorage
    upload_to: Destination | None  # None: the file stays local
    backup: Destination | None
    manifest: bool
    uploader: UploaderFactory

    @classmethod
    def claim(cls, request: egress.DirectFileOutput, config: Config, egress_id: str, video: TrackSource,
              room: TemplateRoom, uploader: UploaderFactory = Uploader) -> AvFile:
        """Name, check and claim the file (``EgressFailure`` if any of that fails)."""
        claimed = ClaimedPath.claim(request, config, egress_id, video.codec, video, room)
        return cls(claimed.relative, claimed.path, egress_id, claimed.storage, claimed.upload_to,
                   claimed.settings.backup, not request.disable_manifest, uploader)

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
        file_info = egress.FileInfo(
            filename=self.filename, location=self.storage.location(self.path), size=self.path.stat().st_size,
            duration=duration, started_at=started_at, ended_at=started_at + duration,
        )
        uploader = self.uploader(self.upload_to, self.backup) if self.upload_to is not None else None
        error = None
        try:
            if uploader is not None:
                try:
                    file_info.location = await upload_then_remove(uploader, self.path, self.filename)
                except UploadError as exc:
                    error, uploader = str(exc), None
            info.file_results.append(file_info)
            if self.manifest:
                error = await self._write_manifest(info, manifest, uploader) or error
        finally:
            if uploader is not None:
                await uploader.close()
                info.backup_storage_used = uploader.backup_used
        if self.upload_to is not None and error is None:
            await asyncio.to_thread(remove_empty_dir, self.path.parent)
        return error

    async def _write_manifest(self, info: egress.EgressInfo, manifest: Manifest,
                              uploader: Uploader | None) -> str | None:
        path = self.path.with_name(f"{self.egress_id}.json")
        info.ended_at = time.time_ns()
        try:
            await asyncio.to_thread(write_whole, path, manifest(info))
        except OSError as exc:
            return f"manifest not written: {exc.strerror or exc}"
        info.manifest_location = self.storage.location(path)
        if uploader is None:
            return None
        try:
            info.manifest_location = await upload_then_remove(
                uploader, path, posixpath.join(posixpath.dirname(self.filename), path.name))
        except UploadError as exc:
            return str(exc)
        return None
