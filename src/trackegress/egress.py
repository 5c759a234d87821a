"""One track egress, end to end. The status machine lives here and only here."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import posixpath
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
from livekit import api
from livekit.protocol import egress, models

from trackegress.config import Config
from trackegress.errors import HTTP_STATUS, INVALID_ARGUMENT, UNIMPLEMENTED, CodedError, ConfigError
from trackegress.info import copy_info, is_ended, new_egress_id
from trackegress.logs import current_egress_id
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.redact import redact_request, redact_start_request
from trackegress.reporting.manifest import build_manifest
from trackegress.room.signal import SignalError
from trackegress.room.subscriber import SOURCE_CLOSED, RoomEvents, TrackSource, join_room
from trackegress.room.transport import Reception
from trackegress.sinks.base import Sink
from trackegress.sinks.file import FileSink, write_error
from trackegress.sinks.naming import MAX_KEY, TemplateVars, check_path_limits, output_path
from trackegress.sinks.websocket import SinkStats, WebSocketSink, WebSocketSinkError
from trackegress.storage.base import UploadError, object_key
from trackegress.storage.claims import OutputTaken, claim_file, claim_key
from trackegress.storage.local import LocalStorage
from trackegress.storage.settings import SECRET_FIELDS, Destination, StorageSettings
from trackegress.storage.uploader import Uploader

log = logging.getLogger(__name__)

Status = egress.EgressStatus
STOP_API = "StopEgress API"
LIMIT_REACHED = "Session limit reached"


def egress_token(config: Config, room_name: str, egress_id: str) -> str:
    """A hidden recorder's join token, with upstream's grants (identity = egress id, 24 h)."""
    grants = api.VideoGrants(
        room_join=True, room=room_name, can_subscribe=True, can_publish=False,
        can_publish_data=False, hidden=True, recorder=True,
    )
    return (
        api.AccessToken(config.api_key, config.api_secret)
        .with_identity(egress_id)
        .with_kind("egress")
        .with_grants(grants)
        .with_ttl(datetime.timedelta(hours=24))
        .to_jwt()
    )


class EgressFailure(CodedError):
    """Ends the egress FAILED with ``message``; ``error_code`` is the HTTP status of the Twirp ``code``."""


class JoinedRoom(Protocol):
    """What an egress needs of the room it joined (``room.subscriber.TrackSubscriber``)."""

    @property
    def room(self) -> models.Room: ...

    @property
    def reception(self) -> Reception: ...

    async def find_track(self, timeout: float) -> TrackSource: ...

    async def subscribe(self, codec: Codec, *, pcm: bool = False) -> None: ...

    def request_keyframe(self) -> None: ...

    def deliver_received(self) -> None: ...

    async def close(self) -> None: ...


JoinRoom = Callable[[str, str, str, RoomEvents, float, Sequence[str]], Awaitable[JoinedRoom]]


@dataclass(frozen=True)
class Parts:
    """What an egress is built from: the room join, the sinks and the uploader (tests swap them)."""

    join_room: JoinRoom = join_room
    file_sink: Callable[..., FileSink] = FileSink  # (path, codec, request_keyframe, top=largest layer, top_wait=s)
    stream_sink: Callable[..., WebSocketSink] = WebSocketSink
    uploader: Callable[[Destination, Destination | None], Uploader] = Uploader


class Egress:
    """Records one track: STARTING → ACTIVE (first media) → ENDING → COMPLETE, or FAILED / ABORTED."""

    def __init__(
        self,
        request: egress.TrackEgressRequest,
        config: Config,
        *,
        egress_id: str | None = None,
        on_update: Callable[[egress.EgressInfo], None] | None = None,
        on_delay: Callable[[float], None] | None = None,
        parts: Parts = Parts(),
        source: egress.StartEgressRequest | None = None,
    ) -> None:
        self._parts = parts
        self._request = request
        self._config = config
        self._on_update = on_update or (lambda info: None)
        self._on_delay = on_delay
        self._subscriber: JoinedRoom | None = None
        now = time.time_ns()
        self.info = egress.EgressInfo(
            egress_id=egress_id or new_egress_id(),
            room_name=request.room_name,
            source_type=egress.EgressSourceType.EGRESS_SOURCE_TYPE_SDK,
            status=Status.EGRESS_STARTING,
            started_at=now,
            updated_at=now,
        )
        if source is None:
            self.info.track.CopyFrom(redact_request(request, SECRET_FIELDS))
        else:  # a unified StartEgress run as this track egress: reported as the request it was (upstream's `egress`)
            self.info.egress.CopyFrom(redact_start_request(source, SECRET_FIELDS))
        self._storage = LocalStorage(config.local_dir)
        self._upload_to: Destination | None = None
        self._sink: Sink | None = None
        self._file: FileSink | None = None
        self._stream: WebSocketSink | None = None
        self._filename = ""
        self._source: TrackSource | None = None
        self._ended = asyncio.Event()
        self._end_reason = SOURCE_CLOSED
        self._end_error: str | None = None
        self._limit_reached = False
        self._media_started_at = 0
        self.frames = 0
        self.bytes_in = 0

    @property
    def egress_id(self) -> str:
        return self.info.egress_id

    @property
    def bytes_out(self) -> int:
        """Bytes written so far (file size, or PCM delivered)."""
        if self._stream is not None:
            return self._stream.bytes_sent
        return self._file.size if self._file else 0

    @property
    def stream_stats(self) -> SinkStats | None:
        """The WebSocket sink's counters (reconnects, frames lost, ...); None for a file egress."""
        return self._stream.stats if self._stream is not None else None

    @property
    def partial_file(self) -> egress.FileInfo | None:
        """The file being written (filename, location, size so far) once it is open; None otherwise."""
        if self._file is None:
            return None
        return egress.FileInfo(
            filename=self._filename,
            location=self._storage.location(self._file.path),
            size=self._file.size,
            started_at=self._media_started_at,
        )

    @property
    def layer_switches(self) -> int:
        """Times the recorded picture size changed (simulcast / SVC layer switches)."""
        return self._file.layer_switches if self._file is not None else 0

    @property
    def reception(self) -> Reception:
        """The track's receive counters: packets lost, recovered by retransmission, incomplete frames."""
        return self._subscriber.reception if self._subscriber is not None else Reception()

    def stop(self, reason: str = STOP_API) -> None:
        """Finish the egress as soon as possible (e.g. ``StopEgress``)."""
        self._finish(reason, None)

    def limit_reached(self) -> None:
        """A session limit fired: finalise normally, then end LIMIT_REACHED."""
        if not self._ended.is_set():
            self._limit_reached = True
            self._finish(LIMIT_REACHED, None)

    async def run(self) -> egress.EgressInfo:
        """Run until the egress ends; returns the final ``EgressInfo``."""
        current_egress_id.set(self.egress_id)  # run in a task of its own: its lines and its children's carry the id
        try:
            subscriber = await self._join()
            if not self._ended.is_set():
                await self._start_media(subscriber)
                await self._ended.wait()
            await self._finalise()
        except EgressFailure as exc:
            await self._fail(exc.message, HTTP_STATUS[exc.code])
        except Exception as exc:
            log.exception("egress %s crashed", self.egress_id)
            await self._fail(f"internal error: {_without_paths(exc)}", 500)
        finally:
            if self._subscriber is not None:  # also when the track was not found
                await self._subscriber.close()
        return self.info

    # RoomEvents

    def on_frame(self, frame: EncodedFrame) -> None:
        if self._sink is None or self._ended.is_set():
            return
        if self.frames == 0:
            self._media_started_at = time.time_ns()
            self._set_status(Status.EGRESS_ACTIVE)
        self.frames += 1
        self.bytes_in += len(frame.data)
        try:
            self._sink.write(frame)
        except (OSError, av.FFmpegError) as exc:
            self._write_failed(exc)

    def on_muted(self, muted: bool) -> None:
        if self._sink is not None:
            self._sink.set_muted(muted)

    def on_ended(self, reason: str, error: str | None) -> None:
        self._finish(reason, error)

    # steps

    async def _join(self) -> JoinedRoom:
        token = egress_token(self._config, self._request.room_name, self.egress_id)
        joined = asyncio.ensure_future(
            self._parts.join_room(
                self._config.ws_url, token, self._request.track_id, self, self._config.signal_resume_timeout,
                self._config.media_protocols,
            )
        )
        stopped = asyncio.ensure_future(self._ended.wait())
        await asyncio.wait((joined, stopped), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        try:
            subscriber = await joined
        except SignalError as exc:
            raise EgressFailure("unavailable", f"connection to room failed: {_with_cause(exc)}") from exc
        self._subscriber = subscriber
        self.info.room_id = subscriber.room.sid
        if not self._ended.is_set():
            self._source = await self._wait_for_track(subscriber)
        return subscriber

    async def _wait_for_track(self, subscriber: JoinedRoom) -> TrackSource | None:
        found = asyncio.ensure_future(subscriber.find_track(self._config.track_wait_timeout))
        stopped = asyncio.ensure_future(self._ended.wait())
        await asyncio.wait((found, stopped), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not found.done():
            found.cancel()
            return None
        try:
            return found.result()
        except TimeoutError:
            raise EgressFailure("not_found", f"track {self._request.track_id} not found") from None

    async def _start_media(self, subscriber: JoinedRoom) -> None:
        assert self._source is not None
        try:
            codec = self._source.codec
        except ValueError as exc:
            raise EgressFailure(UNIMPLEMENTED, str(exc)) from None
        if self._request.WhichOneof("output") == "websocket_url":
            self._sink = await self._open_stream(codec, subscriber)
        else:
            self._sink = self._open_file(codec)
        await subscriber.subscribe(codec, pcm=self._stream is not None and codec is Codec.OPUS)

    async def _open_stream(self, codec: Codec, subscriber: JoinedRoom) -> WebSocketSink:
        if codec.is_video:
            raise EgressFailure(INVALID_ARGUMENT, f"format websocket incompatible with codec {codec.mime}")
        self._stream = self._parts.stream_sink(
            self._request.websocket_url,
            codec=codec,
            sample_rate=self._config.websocket_sample_rate,
            channels=self._config.websocket_channels,
            on_error=lambda exc: self._finish(SOURCE_CLOSED, str(exc)),
            on_delay=self._on_delay,
            catch_up=subscriber.deliver_received,
        )
        try:
            await self._stream.start()
        except WebSocketSinkError as exc:
            raise EgressFailure(INVALID_ARGUMENT, str(exc)) from None
        return self._stream

    def _open_file(self, codec: Codec) -> FileSink:
        assert self._source is not None
        relative = output_path(self._request.file.filepath, codec, self._template_vars())
        self._upload_to = self._destination()
        local = f"{self.egress_id}/{posixpath.basename(relative)}" if self._upload_to else relative
        try:
            check_path_limits(relative)
            if self._upload_to is not None:
                check_path_limits(object_key(self._upload_to.prefix, relative), MAX_KEY)
            path = self._storage.path_for(local)
        except ValueError as exc:
            raise EgressFailure(INVALID_ARGUMENT, f"invalid filepath {relative!r}: {exc}") from None
        self._claim(path, relative)
        self._file = self._parts.file_sink(path, codec, self._request_keyframe, top=top_layer(self._source.track),
                                           top_wait=self._config.top_layer_wait)
        self._filename = relative
        return self._file

    def _request_keyframe(self) -> None:
        if self._subscriber is not None:
            self._subscriber.request_keyframe()

    def _claim(self, path: Path, relative: str) -> None:
        """Own the output before writing (see ``storage/claims.py``); ``already_exists`` if another egress does."""
        try:
            if self._upload_to is not None:
                key = object_key(self._upload_to.prefix, relative)
                claim_key(self._storage.base_dir, self._upload_to.backend, key, self.egress_id)
            claim_file(path, self.egress_id)
        except OutputTaken as exc:
            raise EgressFailure("already_exists", f"output {relative!r} is taken: {exc}") from None
        except OSError as exc:
            raise EgressFailure("unavailable", f"output {relative!r} cannot be created: {exc.strerror}") from None

    def _destination(self) -> Destination | None:
        """Where the file is uploaded (the request's upload, else the configured storage); None: it stays local."""
        try:
            return (self._config.storage or StorageSettings()).destination(self._request.file)
        except ConfigError as exc:
            raise EgressFailure(exc.code, exc.message) from None

    def _template_vars(self) -> TemplateVars:
        assert self._source is not None
        track, participant = self._source.track, self._source.participant
        return TemplateVars(
            room_name=self.info.room_name,
            room_id=self.info.room_id,
            track_id=track.sid,
            track_type="audio" if track.type == models.TrackType.AUDIO else "video",
            track_source=models.TrackSource.Name(track.source).lower(),
            publisher_identity=participant.identity,
            now=datetime.datetime.now(),
        )

    async def _finalise(self) -> None:
        if self.frames == 0:
            await self._close_sink()
            await self._release_unused_output()
            self._stream_outcome()
            if self._end_error:
                await self._fail(self._end_error, 500)
            elif self._limit_reached:
                await self._abort("Session limit reached before start signal")
            else:
                await self._abort("Start signal not received")
            return
        self.info.details = f"End reason: {self._end_reason}" + self._reception_details() + self._loss_details()
        self._set_status(Status.EGRESS_ENDING)
        await self._close_sink()
        self.info.details += self._audio_gap_details()
        self._stream_outcome()
        upload_error = await self._write_results()
        if self._end_error:
            await self._fail(self._end_error, 500)
        elif upload_error:
            await self._fail(upload_error, 500)
        elif self._limit_reached:
            self.info.error, self.info.error_code = LIMIT_REACHED, 413
            self._set_status(Status.EGRESS_LIMIT_REACHED, ended=True)
        else:
            self._set_status(Status.EGRESS_COMPLETE, ended=True)

    def _reception_details(self) -> str:
        """``; received: 900 packets, 27 lost, 25 recovered (RTX/RED), ...`` when packets went missing."""
        reception = self.reception
        if not (reception.packets_lost or reception.packets_missing or reception.packets_recovered
                or reception.packets_late):
            return ""
        log.info("egress %s: received: %s", self.egress_id, reception.summary())
        return f"; received: {reception.summary()}"

    def _loss_details(self) -> str:
        """``; video: 2 losses, 14 frames dropped until a keyframe, ...`` when the file's video saw losses."""
        if self._file is None or not self._file.codec.is_video or not self._file.continuity.gaps:
            return ""
        stats = self._file.continuity
        log.info("egress %s: video: %s", self.egress_id, stats.summary())
        return f"; video: {stats.summary()}"

    def _audio_gap_details(self) -> str:
        """``; audio: 12 of 750 frames missing ...``: frames missing from the file's timeline (kept there as gaps),
        once the file is closed."""
        if self._file is None or self._file.codec.is_video or not self._file.gap_frames:
            return ""
        file = self._file
        total = file.frames + file.gap_frames
        summary = f"{file.gap_frames} of {total} frames missing on the timeline (loss, DTX or mute)"
        log.info("egress %s: audio: %s", self.egress_id, summary)
        return f"; audio: {summary}"

    def _stream_outcome(self) -> None:
        """A WebSocket sink that failed fails the egress; audio it lost but survived is told in ``details``."""
        if self._stream is None:
            return
        info, stats = self._stream.stream_info(), self._stream.stats
        if info.status == egress.StreamInfo.FAILED:
            self._end_error = self._end_error or info.error
        elif stats.frames_lost:
            total = stats.frames_lost + stats.bytes_sent // max(1, self._stream.message_size)
            self.info.details += f"; websocket: {stats.frames_lost} of {total} 10 ms messages not delivered"

    async def _release_unused_output(self) -> None:
        """An output claimed but never written (no media came) is removed: nothing was recorded to protect."""
        if self._file is not None and self._file.size == 0:
            await asyncio.to_thread(self._file.path.unlink, True)

    async def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            await sink.close()
        except (OSError, av.FFmpegError) as exc:  # the file's last frames or trailer: what is on disk stays
            self._write_failed(exc)

    def _write_failed(self, exc: OSError | av.FFmpegError) -> None:
        """End with the write error (kept as the egress's error when it was already ending)."""
        log.error("egress %s: writing failed: %s", self.egress_id, exc)
        directory = self._file.path.parent if self._file is not None else self._storage.base_dir
        message = f"writing output failed: {write_error(exc, directory)}"
        if self._ended.is_set():
            self._end_error = self._end_error or message
        else:
            self._finish(SOURCE_CLOSED, message)

    async def _write_results(self) -> str | None:
        """Fill in the results, uploading the file and its manifest if configured; returns the upload error."""
        if self._stream is not None:
            stream_info = self._stream.stream_info()
            self.info.stream_results.append(stream_info)
            self.info.stream.info.append(stream_info)
        if self._file is None:
            return None
        if self._upload_to is None:
            await self._write_file_results(None)
            return None
        settings = self._config.storage or StorageSettings()
        uploader = self._parts.uploader(self._upload_to, settings.backup)
        try:
            error = await self._write_file_results(uploader)
        finally:
            await uploader.close()
            self.info.backup_storage_used = uploader.backup_used
        if error is None:
            await asyncio.to_thread(_remove_empty_dir, self._file.path.parent)
        return error

    async def _write_file_results(self, uploader: Uploader | None) -> str | None:
        """FileInfo and manifest; after an upload failure the manifest stays local and names local paths."""
        assert self._file is not None
        file_info = egress.FileInfo(
            filename=self._filename,
            location=self._storage.location(self._file.path),
            size=self._file.size,
            duration=self._file.duration_ns,
            started_at=self._media_started_at,
            ended_at=self._media_started_at + self._file.duration_ns,
        )
        error = None
        if uploader is not None:
            try:
                file_info.location = await self._upload(uploader, self._file.path, self._filename)
            except UploadError as exc:
                error, uploader = str(exc), None
        self.info.file_results.append(file_info)
        if self.info.HasField("track"):  # the deprecated single result, of StartTrackEgress only (as upstream)
            self.info.file.CopyFrom(file_info)
        if not self._request.file.disable_manifest:
            error = await self._write_manifest(uploader) or error
        return error

    async def _upload(self, uploader: Uploader, local: Path, filename: str) -> str:
        """Upload ``local`` as ``filename``, then (only then) delete the local copy; returns the location."""
        location = await uploader.upload(local, filename)
        await asyncio.to_thread(local.unlink)
        return location

    async def _write_manifest(self, uploader: Uploader | None) -> str | None:
        assert self._file is not None and self._source is not None
        path = self._file.path.with_name(f"{self.egress_id}.json")
        track = self._source.track
        self.info.ended_at = time.time_ns()
        body = build_manifest(
            self.info,
            publisher_identity=self._source.participant.identity,
            track_id=track.sid,
            track_kind="audio" if track.type == models.TrackType.AUDIO else "video",
            track_source=models.TrackSource.Name(track.source).lower(),
        )
        try:
            await asyncio.to_thread(_write_whole, path, body)
        except OSError as exc:
            log.error("egress %s: manifest not written: %s", self.egress_id, exc)
            return f"manifest not written: {exc.strerror or exc}"
        self.info.manifest_location = self._storage.location(path)
        if uploader is None:
            return None
        filename = posixpath.join(posixpath.dirname(self._filename), path.name)
        try:
            self.info.manifest_location = await self._upload(uploader, path, filename)
        except UploadError as exc:
            return str(exc)
        return None

    # status changes

    def _finish(self, reason: str, error: str | None) -> None:
        if not self._ended.is_set():
            self._end_reason, self._end_error = reason, error
            self._ended.set()

    async def _fail(self, error: str, code: int) -> None:
        log.warning("egress %s failed: %s", self.egress_id, error)
        self.info.error, self.info.error_code = error, code
        await self._close_sink()
        if self.frames == 0:
            await self._release_unused_output()
        if self._stream is not None and not self.info.stream_results:
            await self._write_results()
        self._set_status(Status.EGRESS_FAILED, ended=True)

    async def _abort(self, error: str) -> None:
        self.info.error, self.info.error_code = error, 412
        self._set_status(Status.EGRESS_ABORTED, ended=True)

    def _set_status(self, status: egress.EgressStatus, *, ended: bool = False) -> None:
        if is_ended(self.info):
            return
        now = time.time_ns()
        self.info.status = status
        self.info.updated_at = now
        if ended:
            self.info.ended_at = now
        log.info("egress %s %s", self.egress_id, egress.EgressStatus.Name(status))
        try:
            self._on_update(copy_info(self.info))
        except Exception:  # a broken listener must not stop the egress from ending
            log.exception("egress %s: update callback failed", self.egress_id)


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


def _without_paths(exc: Exception) -> str:
    """An error for callers: a file error's cause without the server's path it names."""
    if isinstance(exc, (OSError, av.FFmpegError)) and exc.strerror:
        return str(exc.strerror)
    return str(exc)


def _with_cause(exc: BaseException) -> str:
    """``str(exc)``, completed with its cause's class when it ends without one (``...: ``)."""
    text = str(exc).rstrip()
    if text.endswith(":") or not text:
        cause = exc.__cause__ or exc.__context__
        text = f"{text} {type(cause).__name__ if cause else type(exc).__name__}".strip()
        if cause is not None and str(cause):
            text += f" ({cause})"
    return text


def top_layer(track: models.TrackInfo) -> tuple[int, int] | None:
    """The largest picture the track announces: its biggest simulcast/SVC layer, else its own size."""
    sizes = [(layer.width, layer.height) for layer in track.layers if layer.width and layer.height]
    if track.width and track.height:
        sizes.append((track.width, track.height))
    return max(sizes, key=lambda size: size[0] * size[1]) if sizes else None
