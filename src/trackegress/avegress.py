"""One participant's audio and video tracks recorded into one synced file, without transcoding: ``StartEgress``
with preset ``PASSTHROUGH`` naming ``video_track_id`` and one audio route (upstream refuses a second track).

Each track is recorded as any track egress records it (its own room join, its own file and manifest with its sync
fields) into a private directory under the base dir, ``.trackegress-av/<egress id>/``, and every packet its file
gets goes into the requested file too, live (``sinks/livemux.py``: aligned by capture times as ``trackegress mux``
aligns track files, written as it records, playable up to about a second before a crash). Once both have ended the
file is finished and uploaded like a track egress's; the private directory is removed. One ``EgressInfo`` tells it
all: STARTING → ACTIVE (both tracks recording; ``file_results`` lists the A/V file and the track files as they are
written, what a crash leaves) → ENDING → COMPLETE.

A track that fails, or never sends anything, fails the egress (the other is stopped): FAILED with that track's
error, the files recorded so far (the A/V file, if it was opened, and the track files) kept and listed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from livekit.protocol import egress, models

from trackegress.config import Config
from trackegress.egress import LIMIT_REACHED, STOP_API, Egress, Parts
from trackegress.errors import HTTP_STATUS, UNIMPLEMENTED, EgressFailure, RequestError
from trackegress.info import copy_info, is_ended, new_egress_id
from trackegress.logs import current_egress_id
from trackegress.media.frames import Codec
from trackegress.outputs.avfile import AvFile
from trackegress.outputs.manifest import build_av_manifest
from trackegress.redact import redact_start_request
from trackegress.request import PublishedTrack, check_av_pair
from trackegress.room.subscriber import TrackSource
from trackegress.room.transport import Reception
from trackegress.sinks.livemux import KINDS, LiveMux
from trackegress.sinks.websocket import SinkStats
from trackegress.storage.local import LocalStorage
from trackegress.storage.settings import SECRET_FIELDS

log = logging.getLogger(__name__)

Status = egress.EgressStatus
AV_DIR = ".trackegress-av"  # under the base dir: each A/V egress's track recordings until its file is finished
_RECORDED = (Status.EGRESS_COMPLETE, Status.EGRESS_LIMIT_REACHED)
_VIDEO_CODECS = (Codec.VP8, Codec.VP9, Codec.AV1, Codec.H264, Codec.H265)


class AvEgress:
    """Records a video and an audio track of one participant into one file (see the module docstring)."""

    def __init__(
        self,
        request: egress.TrackEgressRequest,
        audio_track_id: str,
        config: Config,
        *,
        source: egress.StartEgressRequest,
        egress_id: str | None = None,
        on_update: Callable[[egress.EgressInfo], None] | None = None,
        parts: Parts | None = None,
    ) -> None:
        self._request, self._config, self._parts = request, config, parts or Parts()
        self._on_update = on_update or (lambda info: None)
        now = time.time_ns()
        self.info = egress.EgressInfo(
            egress_id=egress_id or new_egress_id(), room_name=request.room_name,
            source_type=egress.EgressSourceType.EGRESS_SOURCE_TYPE_SDK, status=Status.EGRESS_STARTING,
            started_at=now, updated_at=now,
        )
        self.info.egress.CopyFrom(redact_start_request(source, SECRET_FIELDS))
        self._folder = f"{AV_DIR}/{self.egress_id}"
        private = dataclasses.replace(config, storage=None)  # the track files stay here until the A/V file is done
        self._live = LiveMux()
        self._tracks = {
            kind: Egress(
                egress.TrackEgressRequest(room_name=request.room_name, track_id=track_id,
                                          file=egress.DirectFileOutput(filepath=f"{self._folder}/{kind}")),
                private, egress_id=f"{self.egress_id}_{kind}", on_update=functools.partial(self._track_changed, kind),
                parts=dataclasses.replace(self._parts, file_sink=functools.partial(
                    self._parts.file_sink, lane=self._live.lanes[kind])),
            )
            for kind, track_id in zip(KINDS, (request.track_id, audio_track_id), strict=True)
        }
        self._output: AvFile | None = None
        self._av_started_at = 0  # when the A/V file was listed, both tracks recording
        self._error: tuple[str, int] | None = None  # a failure of the pair (not of a track): message, HTTP status
        self._limit_reached = False

    @property
    def egress_id(self) -> str:
        return self.info.egress_id

    @property
    def bytes_out(self) -> int:
        """Bytes of the track files written so far."""
        return sum(track.bytes_out for track in self._tracks.values())

    @property
    def stream_stats(self) -> SinkStats | None:
        return None

    @property
    def partial_file(self) -> egress.FileInfo | None:
        """None: the track files being written are in ``file_results`` from ACTIVE on."""
        return None

    @property
    def layer_switches(self) -> int:
        return self._tracks["video"].layer_switches

    @property
    def reception(self) -> Reception:
        """Both tracks' receive counters, summed."""
        counts = [track.reception for track in self._tracks.values()]
        return Reception(*(sum(getattr(c, f.name) for c in counts) for f in dataclasses.fields(Reception)))

    def stop(self, reason: str = STOP_API) -> None:
        """Stop both recordings; the A/V file is finished once they have ended."""
        for track in self._tracks.values():
            track.stop(reason)

    def limit_reached(self) -> None:
        """A session limit fired: both recordings end, the A/V file is finished, and the egress ends LIMIT_REACHED."""
        self._limit_reached = True
        for track in self._tracks.values():
            track.limit_reached()

    async def run(self) -> egress.EgressInfo:
        """Record both tracks until they end, then finish the A/V file; returns the final ``EgressInfo``."""
        current_egress_id.set(self.egress_id)
        try:
            infos = dict(zip(KINDS, await asyncio.gather(*(t.run() for t in self._tracks.values())), strict=True))
            await self._finish(infos)
        except Exception as exc:
            log.exception("egress %s crashed", self.egress_id)
            await asyncio.to_thread(self._live.close)
            await self._fail(f"internal error: {type(exc).__name__}", 500, [])
        return self.info

    # while recording

    def _track_changed(self, kind: str, info: egress.EgressInfo) -> None:
        """A track's status changed: the pair's status follows (ACTIVE once both record, ENDING once neither does);
        a track that failed or never started stops the other."""
        self.info.room_id = self.info.room_id or info.room_id
        if is_ended(info) and info.status not in _RECORDED:
            self.stop(f"{kind} track ended {Status.Name(info.status)}")
        statuses = [track.info.status for track in self._tracks.values()]
        if self.info.status == Status.EGRESS_STARTING and all(s == Status.EGRESS_ACTIVE for s in statuses):
            self._both_recording()
        elif self.info.status == Status.EGRESS_ACTIVE and Status.EGRESS_ACTIVE not in statuses:
            self._set_status(Status.EGRESS_ENDING)

    def _both_recording(self) -> None:
        """Check the pair and claim the A/V file (stopping both on failure), then ACTIVE, the A/V file and the track
        files listed in ``file_results`` while they are written (what a crash leaves)."""
        if not self._prepare():
            self.stop("the tracks cannot be joined")
            return
        assert self._output is not None
        self._av_started_at = time.time_ns()
        self.info.file_results.append(self._output.partial_file(self._av_started_at))
        for track in self._tracks.values():
            partial = track.partial_file
            if partial is not None:
                self.info.file_results.append(partial)
        self._set_status(Status.EGRESS_ACTIVE)

    def _prepare(self) -> bool:
        """Check that the tracks can be joined, claim the file and start writing it; on failure ``_error`` says
        why."""
        if self._output is not None:
            return True
        video, audio = (self._tracks[kind].track for kind in KINDS)
        assert video is not None and audio is not None  # both have recorded
        try:
            _check_pair(video, audio)
            self._output = AvFile.claim(self._request.file, self._config, self.egress_id, video,
                                        (self.info.room_name, self.info.room_id), uploader=self._parts.uploader)
        except EgressFailure as exc:
            log.warning("egress %s: %s", self.egress_id, exc.message)
            self._error = (exc.message, HTTP_STATUS[exc.code])
            return False
        self._live.start(self._output.path, video.codec)
        return True

    # once both have ended

    async def _finish(self, infos: dict[str, egress.EgressInfo]) -> None:
        self.info.details = "; ".join(f"{kind} track {self._request_track(kind)}: [{info.details}]"
                                      for kind, info in infos.items())
        kept = [f for info in infos.values() for f in info.file_results]
        failed = [(kind, info) for kind, info in infos.items() if info.status not in _RECORDED]
        if self._error is None and not failed:
            self._prepare()  # both recorded, but never at once (one ended before the other began)
        await asyncio.to_thread(self._live.close)
        if self._error is not None:
            await self._fail(self._error[0], self._error[1], kept)
        elif all(info.status == Status.EGRESS_ABORTED for info in infos.values()):
            self.info.error, self.info.error_code = infos["video"].error, infos["video"].error_code
            self._set_status(Status.EGRESS_ABORTED, ended=True)
        elif failed:
            kind, info = failed[0]
            await self._fail(f"{kind} track {self._request_track(kind)}: {info.error}", info.error_code or 500, kept)
        elif self._live.error is not None:
            await self._fail(self._live.error, 500, kept)
        else:
            await self._complete(infos)

    async def _complete(self, infos: dict[str, egress.EgressInfo]) -> None:
        """Report the finished A/V file (uploaded if configured), remove the track files, COMPLETE."""
        assert self._output is not None
        self._set_status(Status.EGRESS_ENDING)
        live = self._live
        self.info.details += f"; joined live, {live.summary()}"
        first = min(KINDS, key=lambda kind: live.offsets[kind])
        started_at = infos[first].file_results[0].started_at + round(live.skipped[first] * 1e9)
        del self.info.file_results[:]
        error = await self._output.write_results(self.info, started_at, round(live.duration * 1e9),
                                                 self._manifest)
        if error is not None:  # the A/V file stays here, listed where it lies
            await self._fail(error, 500, list(self.info.file_results))
            return
        await asyncio.to_thread(shutil.rmtree, self._private_dir(), True)
        if self._limit_reached:
            self.info.error, self.info.error_code = LIMIT_REACHED, 413
            self._set_status(Status.EGRESS_LIMIT_REACHED, ended=True)
        else:
            self._set_status(Status.EGRESS_COMPLETE, ended=True)

    def _manifest(self, info: egress.EgressInfo) -> bytes:
        tracks: list[dict[str, object]] = []
        for kind in KINDS:
            source = self._tracks[kind].track
            sync = self._tracks[kind].sync
            assert source is not None
            tracks.append({
                "track_id": source.track.sid, "track_kind": kind, "codec": source.codec.mime,
                "track_source": models.TrackSource.Name(source.track.source).lower(),
                "sync": None if sync is None else sync.to_json(), "aligned_by": self._live.aligned_by,
                "offset": self._live.offsets[kind], "skipped": self._live.skipped[kind],
            })
        video = self._tracks["video"].track
        return build_av_manifest(info, publisher_identity=video.participant.identity if video else "", tracks=tracks)

    async def _fail(self, error: str, code: int, kept: list[egress.FileInfo]) -> None:
        """FAILED; what was recorded stays and is listed: the A/V file if it was written, the track files in the
        private directory."""
        log.warning("egress %s failed: %s", self.egress_id, error)
        del self.info.file_results[:]
        if self._output is not None:
            written = await self._output.release(self._av_started_at)
            if written is not None:
                self.info.file_results.append(written)
        self.info.error, self.info.error_code = error, code
        self.info.file_results.extend(kept)
        self._set_status(Status.EGRESS_FAILED, ended=True)

    def _request_track(self, kind: str) -> str:
        return self._tracks[kind].info.track.track_id

    def _private_dir(self) -> Path:
        return LocalStorage(self._config.local_dir).base_dir / self._folder

    def _set_status(self, status: egress.EgressStatus, *, ended: bool = False) -> None:
        if is_ended(self.info) or status == self.info.status:
            return
        now = time.time_ns()
        self.info.status, self.info.updated_at = status, now
        if ended:
            self.info.ended_at = now
        log.info("egress %s %s", self.egress_id, Status.Name(status))
        try:
            self._on_update(copy_info(self.info))
        except Exception:  # a broken listener must not stop the egress from ending
            log.exception("egress %s: update callback failed", self.egress_id)


def _check_pair(video: TrackSource, audio: TrackSource) -> None:
    """``EgressFailure`` unless ``video`` and ``audio`` are a video and an audio track of one participant
    (``check_av_pair``: a worker looks no track up before joining), in codecs one file holds without transcoding."""
    try:
        check_av_pair(*(PublishedTrack(s.track.sid, s.participant.identity, s.track.type) for s in (video, audio)))
    except RequestError as exc:
        raise EgressFailure(exc.code, exc.message) from None
    if audio.codec is not Codec.OPUS or video.codec not in _VIDEO_CODECS:
        raise EgressFailure(UNIMPLEMENTED, f"{audio.codec.mime} and {video.codec.mime} cannot be joined without "
                            "transcoding (Opus with VP8, VP9, AV1, H.264 or H.265)")
