"""One track egress, end to end. The status machine lives here and only here."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import av
from livekit import api
from livekit.protocol import egress, models

from trackegress.config import Config
from trackegress.errors import HTTP_STATUS, NOT_FOUND, UNAVAILABLE, UNIMPLEMENTED, EgressFailure
from trackegress.info import copy_info, is_ended, new_egress_id
from trackegress.logs import current_egress_id
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.media.sync import SyncInfo
from trackegress.outputs.base import Output
from trackegress.outputs.file import FileOutput, FileSinkFactory, UploaderFactory
from trackegress.outputs.stream import StreamOutput, StreamSinkFactory
from trackegress.redact import redact_request, redact_start_request
from trackegress.room.signal import SignalError
from trackegress.room.subscriber import SOURCE_CLOSED, RoomEvents, TrackSource, join_room
from trackegress.room.transport import Reception
from trackegress.sinks.base import Sink
from trackegress.sinks.file import FileSink
from trackegress.sinks.websocket import SinkStats, WebSocketSink
from trackegress.sinks.wsauth import Caller
from trackegress.storage.settings import SECRET_FIELDS
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
    file_sink: FileSinkFactory = FileSink  # (path, codec, request_keyframe, top=largest layer, top_wait=s)
    stream_sink: StreamSinkFactory = WebSocketSink
    uploader: UploaderFactory = Uploader


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
        self._sink: Sink | None = None
        self._output: Output | None = None
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
        return self._output.bytes_out if self._output is not None else 0

    @property
    def stream_stats(self) -> SinkStats | None:
        """The WebSocket sink's counters (reconnects, frames lost, ...); None for a file egress."""
        return self._output.stats if isinstance(self._output, StreamOutput) else None

    @property
    def partial_file(self) -> egress.FileInfo | None:
        """The file being written (filename, location, size so far) once it is open; None otherwise."""
        if not isinstance(self._output, FileOutput):
            return None
        return self._output.partial_file(self._media_started_at)

    @property
    def track(self) -> TrackSource | None:
        """The track recorded and who publishes it, once found."""
        return self._source

    @property
    def sync(self) -> SyncInfo | None:
        """When the file's first sample was captured (``media/sync.py``), once it has one; None for a stream."""
        return self._output.sink.sync if isinstance(self._output, FileOutput) else None

    @property
    def layer_switches(self) -> int:
        """Times the recorded picture size changed (simulcast / SVC layer switches)."""
        return self._output.layer_switches if isinstance(self._output, FileOutput) else 0

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
            raise EgressFailure(UNAVAILABLE, f"connection to room failed: {_with_cause(exc)}") from exc
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
            raise EgressFailure(NOT_FOUND, f"track {self._request.track_id} not found") from None

    async def _start_media(self, subscriber: JoinedRoom) -> None:
        assert self._source is not None
        try:
            codec = self._source.codec
        except ValueError as exc:
            raise EgressFailure(UNIMPLEMENTED, str(exc)) from None
        if self._request.WhichOneof("output") == "websocket_url":
            stream = StreamOutput.create(
                self._request.websocket_url, codec, self._config,
                Caller(self.egress_id, self._request.room_name, self._request.track_id),
                on_error=lambda exc: self._finish(SOURCE_CLOSED, str(exc)), on_delay=self._on_delay,
                catch_up=subscriber.deliver_received, stream_sink=self._parts.stream_sink,
            )
            self._output = stream
            await stream.start()
        else:
            self._output = FileOutput.open(
                self._request.file, self._config, self.egress_id, self._source, codec,
                room=(self.info.room_name, self.info.room_id), request_keyframe=self._request_keyframe,
                file_sink=self._parts.file_sink, uploader=self._parts.uploader,
            )
        self._sink = self._output.sink
        await subscriber.subscribe(codec, pcm=isinstance(self._output, StreamOutput) and codec is Codec.OPUS)

    def _request_keyframe(self) -> None:
        if self._subscriber is not None:
            self._subscriber.request_keyframe()

    async def _finalise(self) -> None:
        if self.frames == 0:
            await self._close_sink()
            await self._release_unused_output()
            self._output_outcome()
            if self._end_error:
                await self._fail(self._end_error, 500)
            elif self._limit_reached:
                await self._abort("Session limit reached before start signal")
            else:
                await self._abort("Start signal not received")
            return
        self.info.details = f"End reason: {self._end_reason}" + self._reception_details()
        self.info.details += self._output.loss_details() if self._output is not None else ""
        self._set_status(Status.EGRESS_ENDING)
        await self._close_sink()
        self._output_outcome()
        upload_error = await self._output.write_results(self.info, self._media_started_at) if self._output else None
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

    def _output_outcome(self) -> None:
        """An output that failed on its own fails the egress; what it lost but survived is told in ``details``."""
        if self._output is not None:
            self._end_error = self._end_error or self._output.failure()
            self.info.details += self._output.closed_details()

    async def _release_unused_output(self) -> None:
        if self._output is not None:
            await self._output.release_unused()

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
        assert self._output is not None  # only its sink writes
        message = f"writing output failed: {self._output.write_error(exc)}"
        if self._ended.is_set():
            self._end_error = self._end_error or message
        else:
            self._finish(SOURCE_CLOSED, message)

    # status changes

    def _finish(self, reason: str, error: str | None) -> None:
        if not self._ended.is_set():
            self._end_reason, self._end_error = reason, error
            self._ended.set()

    async def _fail(self, error: str, code: int) -> None:
        log.warning("egress %s failed: %s", self.egress_id, error)
        self.info.error, self.info.error_code = error, code
        await self._close_sink()
        await self._release_unused_output()
        if self._output is not None:
            await self._output.failed_results(self.info)
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

