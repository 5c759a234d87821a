"""A file egress's output: it claims the file, names it from the request's template, writes it through a
``FileSink``, uploads it with its manifest and reports the results; and what a restarted process makes of the
files of egresses it was running when it died."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
from livekit.protocol import egress, models

from trackegress.config import Config
from trackegress.errors import ALREADY_EXISTS, INVALID_ARGUMENT, UNAVAILABLE, ConfigError, EgressFailure
from trackegress.media.frames import Codec
from trackegress.outputs.manifest import build_manifest
from trackegress.room.subscriber import TrackSource
from trackegress.sinks.file import FileSink, write_error
from trackegress.sinks.naming import MAX_KEY, TemplateVars, check_path_limits, output_path
from trackegress.storage.base import UploadError, object_key
from trackegress.storage.claims import OutputTaken, claim_file, claim_key
from trackegress.storage.local import LocalStorage
from trackegress.storage.settings import Destination, StorageSettings
from trackegress.storage.uploader import Uploader

log = logging.getLogger(__name__)

FileSinkFactory = Callable[..., FileSink]  # (path, codec, request_keyframe, top=largest layer, top_wait=s)
UploaderFactory = Callable[[Destination, Destination | None], Uploader]
TemplateRoom = tuple[str, str]  # the room's name (as requested) and id


Manifest = Callable[[egress.EgressInfo], bytes]  # the manifest's body for the final info


@dataclass(frozen=True)
class ClaimedPath:
    """An output file named from its template, checked and claimed: where it is written (``path``), where it is
    uploaded, and how its results and manifest are delivered (``deliver``)."""

    filename: str  # as requested, templates filled in: relative to the base dir, or the object key's tail
    path: Path  # where it is written here
    egress_id: str
    storage: LocalStorage
    upload_to: Destination | None  # None: the file stays local
    backup: Destination | None
    manifest: bool
    uploader: UploaderFactory

    @classmethod
    def claim(cls, request: egress.DirectFileOutput, config: Config, egress_id: str, codec: Codec,
              source: TrackSource, room: TemplateRoom, uploader: UploaderFactory = Uploader) -> ClaimedPath:
        """``EgressFailure`` if the name is invalid or another egress owns it."""
        relative = output_path(request.filepath, codec, template_vars(source, room))
        settings = config.storage or StorageSettings()
        upload_to = _destination(settings, request)
        storage = LocalStorage(config.local_dir)
        local = f"{egress_id}/{posixpath.basename(relative)}" if upload_to else relative
        try:
            check_path_limits(relative)
            if upload_to is not None:
                check_path_limits(object_key(upload_to.prefix, relative), MAX_KEY)
            path = storage.path_for(local)
        except ValueError as exc:
            raise EgressFailure(INVALID_ARGUMENT, f"invalid filepath {relative!r}: {exc}") from None
        _claim(storage, upload_to, path, relative, egress_id)
        return cls(relative, path, egress_id, storage, upload_to, settings.backup, not request.disable_manifest,
                   uploader)

    def file_info(self, size: int, started_at: int, duration: int | None = None) -> egress.FileInfo:
        """The file's ``FileInfo`` where it lies here (``duration`` and end once it is finished)."""
        info = egress.FileInfo(filename=self.filename, location=self.storage.location(self.path), size=size,
                               started_at=started_at)
        if duration is not None:
            info.duration, info.ended_at = duration, started_at + duration
        return info

    async def deliver(self, info: egress.EgressInfo, file_info: egress.FileInfo, manifest: Manifest) -> str | None:
        """Put ``file_info`` into ``info``'s results, uploading the file and its manifest if configured; returns
        the upload error (after which the manifest stays local and names local paths)."""
        if self.upload_to is None:
            return await self._deliver(info, file_info, manifest, None)
        uploader = self.uploader(self.upload_to, self.backup)
        try:
            error = await self._deliver(info, file_info, manifest, uploader)
        finally:
            await uploader.close()
            info.backup_storage_used = uploader.backup_used
        if error is None:
            await asyncio.to_thread(_remove_empty_dir, self.path.parent)
        return error

    async def _deliver(self, info: egress.EgressInfo, file_info: egress.FileInfo, manifest: Manifest,
                       uploader: Uploader | None) -> str | None:
        error = None
        if uploader is not None:
            try:
                file_info.location = await _upload_then_remove(uploader, self.path, self.filename)
            except UploadError as exc:
                error, uploader = str(exc), None
        info.file_results.append(file_info)
        if info.HasField("track"):  # the deprecated single result, of StartTrackEgress only (as upstream)
            info.file.CopyFrom(file_info)
        if self.manifest:
            error = await self._write_manifest(info, manifest, uploader) or error
        return error

    async def _write_manifest(self, info: egress.EgressInfo, manifest: Manifest,
                              uploader: Uploader | None) -> str | None:
        path = self.path.with_name(f"{self.egress_id}.json")
        info.ended_at = time.time_ns()
        try:
            await asyncio.to_thread(_write_whole, path, manifest(info))
        except OSError as exc:
            log.error("egress %s: manifest not written: %s", self.egress_id, exc)
            return f"manifest not written: {exc.strerror or exc}"
        info.manifest_location = self.storage.location(path)
        if uploader is None:
            return None
        filename = posixpath.join(posixpath.dirname(self.filename), path.name)
        try:
            info.manifest_location = await _upload_then_remove(uploader, path, filename)
        except UploadError as exc:
            return str(exc)
        return None


@dataclass
class FileOutput:
    """The file one track is recorded to: ``open`` claims it, ``sink`` writes it, ``write_results`` finishes it."""

    sink: FileSink
    target: ClaimedPath
    source: TrackSource

    @classmethod
    def open(
        cls, request: egress.DirectFileOutput, config: Config, egress_id: str, source: TrackSource, codec: Codec, *,
        room: TemplateRoom, request_keyframe: Callable[[], None], file_sink: FileSinkFactory = FileSink,
        uploader: UploaderFactory = Uploader,
    ) -> FileOutput:
        """Name, check and claim the file, then open its sink (``EgressFailure`` if any of that fails)."""
        target = ClaimedPath.claim(request, config, egress_id, codec, source, room, uploader)
        sink = file_sink(target.path, codec, request_keyframe, top=top_layer(source.track),
                         top_wait=config.top_layer_wait)
        return cls(sink, target, source)

    @property
    def filename(self) -> str:
        return self.target.filename

    @property
    def egress_id(self) -> str:
        return self.target.egress_id

    @property
    def codec(self) -> Codec:
        return self.sink.codec

    @property
    def bytes_out(self) -> int:
        """The file's size so far."""
        return self.sink.size

    @property
    def layer_switches(self) -> int:
        """Times the recorded picture size changed (simulcast / SVC layer switches)."""
        return self.sink.layer_switches

    def partial_file(self, started_at: int) -> egress.FileInfo:
        """The file being written: filename, location, size so far (``OSError`` if it cannot be read)."""
        return self.target.file_info(self.sink.size, started_at)

    def write_error(self, exc: OSError | av.FFmpegError) -> str:
        """Why writing failed, without the file's path."""
        return write_error(exc, self.sink.path.parent)

    def loss_details(self) -> str:
        """``; video: 2 losses, 14 frames dropped until a keyframe, ...`` when the file's video saw losses."""
        if not self.codec.is_video or not self.sink.continuity.gaps:
            return ""
        stats = self.sink.continuity
        log.info("egress %s: video: %s", self.egress_id, stats.summary())
        return f"; video: {stats.summary()}"

    def closed_details(self) -> str:
        """Once the file is closed: ``; audio: 12 of 750 frames missing ...`` (frames missing from the file's
        timeline, kept there as gaps), then ``; sync: ...`` (when its first sample was captured: ``SyncInfo``)."""
        sync = self.sink.sync
        details = sync.details() if sync is not None else ""
        if self.codec.is_video or not self.sink.gap_frames:
            return details
        total = self.sink.frames + self.sink.gap_frames
        summary = f"{self.sink.gap_frames} of {total} frames missing on the timeline (loss, DTX or mute)"
        log.info("egress %s: audio: %s", self.egress_id, summary)
        return f"; audio: {summary}{details}"

    def failure(self) -> str | None:
        """Frames came but none could be written (no keyframe, no valid audio frame): an empty file is no
        recording. Otherwise a file fails through its writes (``write_error``)."""
        if not self.sink.received or self.sink.frames:
            return None
        if self.codec.is_video:
            return f"nothing recorded: no keyframe came in {self.sink.received} frames of the video track"
        return f"nothing recorded: none of the {self.sink.received} frames of the audio track was valid"

    async def release_unused(self) -> None:
        """A file claimed but never written (no media came) is removed: nothing was recorded to protect."""
        if self.sink.size == 0:
            await asyncio.to_thread(self.sink.path.unlink, True)

    async def write_results(self, info: egress.EgressInfo, started_at: int) -> str | None:
        """Fill in ``info``'s results, uploading the file and its manifest if configured; returns the upload error.
        Nothing is delivered of a file that got no frame (``failure``)."""
        if not self.sink.frames:
            return None
        file_info = self.target.file_info(self.sink.size, started_at, self.sink.duration_ns)
        return await self.target.deliver(info, file_info, self._manifest)

    async def failed_results(self, info: egress.EgressInfo) -> None:
        """A failed file egress reports no file (its partial file was reported while it ran)."""

    def _manifest(self, info: egress.EgressInfo) -> bytes:
        track = self.source.track
        return build_manifest(
            info,
            publisher_identity=self.source.participant.identity,
            track_id=track.sid,
            track_kind=_track_kind(track),
            track_source=models.TrackSource.Name(track.source).lower(),
            codec=self.codec.mime,
            sync=self.sink.sync,
        )


def template_vars(source: TrackSource, room: TemplateRoom) -> TemplateVars:
    """The values a ``filepath`` template may use, for ``source`` in ``room`` (name, id)."""
    track, participant = source.track, source.participant
    return TemplateVars(
        room_name=room[0],
        room_id=room[1],
        track_id=track.sid,
        track_type=_track_kind(track),
        track_source=models.TrackSource.Name(track.source).lower(),
        publisher_identity=participant.identity,
        now=datetime.datetime.now(),
    )


def top_layer(track: models.TrackInfo) -> tuple[int, int] | None:
    """The largest picture the track announces: its biggest simulcast/SVC layer, else its own size."""
    sizes = [(layer.width, layer.height) for layer in track.layers if layer.width and layer.height]
    if track.width and track.height:
        sizes.append((track.width, track.height))
    return max(sizes, key=lambda size: size[0] * size[1]) if sizes else None


def _track_kind(track: models.TrackInfo) -> str:
    return "audio" if track.type == models.TrackType.AUDIO else "video"


def _destination(settings: StorageSettings, request: egress.DirectFileOutput) -> Destination | None:
    """Where the file is uploaded (the request's upload, else the configured storage); None: it stays local."""
    try:
        return settings.destination(request)
    except ConfigError as exc:
        raise EgressFailure(exc.code, exc.message) from None


def _claim(
    storage: LocalStorage, upload_to: Destination | None, path: Path, relative: str, egress_id: str
) -> None:
    """Own the output before writing (see ``storage/claims.py``); ``already_exists`` if another egress does."""
    try:
        if upload_to is not None:
            claim_key(storage.base_dir, upload_to.backend, object_key(upload_to.prefix, relative), egress_id)
        claim_file(path, egress_id)
    except OutputTaken as exc:
        raise EgressFailure(ALREADY_EXISTS, f"output {relative!r} is taken: {exc}") from None
    except OSError as exc:
        raise EgressFailure(UNAVAILABLE, f"output {relative!r} cannot be created: {exc.strerror}") from None


async def _upload_then_remove(uploader: Uploader, local: Path, filename: str) -> str:
    """Upload ``local`` as ``filename``, then (only then) delete the local copy; returns the location."""
    location = await uploader.upload(local, filename)
    await asyncio.to_thread(local.unlink)
    return location


def _write_whole(path: Path, body: bytes) -> None:
    """Write ``path`` all or nothing (a temporary file renamed into place): a full disk leaves no stub."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_bytes(body)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def _remove_empty_dir(path: Path) -> None:
    """Remove the egress's local directory once everything in it was uploaded."""
    try:
        path.rmdir()
    except OSError:
        log.warning("local directory %s is not empty after the upload; kept", path)


# after a crash


async def finalised_before_kill(info: egress.EgressInfo) -> bool:
    """Whether ``info``'s file was finalised (its manifest, written last, lies beside it)."""
    return any([await asyncio.to_thread(_has_manifest, f, info.egress_id) for f in info.file_results])


async def refresh_killed_files(info: egress.EgressInfo) -> None:
    """File results from what is on disk now: size and end time from the file itself, dropped if it is gone."""
    kept = [f for f in info.file_results if await asyncio.to_thread(_refresh_from_disk, f)]
    del info.file_results[:]
    info.file_results.extend(kept)
    if kept and info.HasField("track"):  # the deprecated single result, of StartTrackEgress only (as upstream)
        info.file.CopyFrom(kept[0])
    else:
        info.ClearField("file")


def _has_manifest(file: egress.FileInfo, egress_id: str) -> bool:
    try:
        return os.path.exists(os.path.join(os.path.dirname(file.location), f"{egress_id}.json"))
    except (OSError, ValueError):
        return False


def _refresh_from_disk(file: egress.FileInfo) -> bool:
    try:
        stat = os.stat(file.location)
    except OSError:
        return False
    file.size = stat.st_size
    file.ended_at = max(stat.st_mtime_ns, file.started_at)
    file.duration = file.ended_at - file.started_at if file.started_at else 0
    return True
