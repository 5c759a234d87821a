"""EgressManager: starts, lists and stops egresses; applies session limits; keeps the store, webhooks and
listeners informed. Transport-free, so the Twirp API and a psrpc worker can both drive it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from livekit.protocol import egress, models

from trackegress.avegress import AvEgress
from trackegress.config import ServiceConfig
from trackegress.cpuload import CpuAdmission, CpuMeter, egress_kind
from trackegress.egress import Egress
from trackegress.errors import (
    ALREADY_EXISTS,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    RequestError,
)
from trackegress.info import copy_info, is_ended, new_egress_id, request_webhooks
from trackegress.outputs.file import finalised_before_kill, refresh_killed_files
from trackegress.reporting.store import Store
from trackegress.reporting.webhooks import WebhookSender
from trackegress.request import av_audio_track, check_track_request, check_webhooks

log = logging.getLogger(__name__)

Status = egress.EgressStatus
Listener = Callable[[egress.EgressInfo], None]
TrackCheck = Callable[[str, str], Awaitable[int | None]]  # raises unless the track exists; its TrackType if known
PairCheck = Callable[[str, str, str], Awaitable[None]]  # (room, video, audio track): raises unless an A/V pair
Tasks = list[asyncio.Task[object]]
Runner = Egress | AvEgress
PROCESS_KILLED = "Process killed"
SHUTDOWN = "Server shutting down"  # upstream's ErrShuttingDown ("server is shutting down"), as an end reason
STATUS_LOST = "Process stopped before the final status was stored; the output was finalised"
SIZE_CHECK_INTERVAL = 1.0  # seconds between file_output_max_size checks
STOP_WAIT = 5.0  # seconds StopEgress waits for the egress to leave STARTING/ACTIVE


@dataclass
class _Job:
    runner: Runner
    info: egress.EgressInfo
    webhooks: tuple[models.WebhookConfig, ...]
    kinds: tuple[str, ...] = ()  # cpuload.KINDS it records: one, or an A/V egress's video and audio file
    cost: float = 0.0  # CPUs it is priced at (admission)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: Tasks = field(default_factory=list)


class EgressManager:
    """The egresses of this process. ``on_update`` listeners get a copy of every EgressInfo change."""

    def __init__(
        self,
        config: ServiceConfig,
        store: Store,
        check_track: TrackCheck,
        webhooks: WebhookSender | None = None,
        on_delay: Callable[[float], None] | None = None,
        admission: CpuAdmission | None = None,
        check_pair: PairCheck | None = None,
    ) -> None:
        self._config = config
        self._check_pair = check_pair
        self._admission = admission
        self._meter = CpuMeter()
        self._on_delay = on_delay
        self._store = store
        self._check_track = check_track
        self._webhooks = webhooks
        self._listeners: list[Listener] = [self._meter.observe]
        self._jobs: dict[str, _Job] = {}
        self._admitting: dict[str, float] = {}  # admitted, its store entry being written: egress id -> cost
        self._accepting = True

    @property
    def active_count(self) -> int:
        """Egresses running in this process."""
        return len(self._jobs)

    @property
    def accepting(self) -> bool:
        """False once ``close()`` has begun."""
        return self._accepting

    def running(self) -> list[Runner]:
        """The egresses running in this process."""
        return [job.runner for job in self._jobs.values()]

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(info)`` on every change (STARTING included), after the store has it queued."""
        self._listeners.append(listener)

    async def recover(self) -> list[egress.EgressInfo]:
        """Egresses a dead process left unfinished become FAILED "Process killed", keeping the partial files."""
        recovered = []
        for info in await self._store.unfinished():
            await _finish_killed(info)
            log.warning("egress %s was running when the service stopped: FAILED (%s)", info.egress_id, info.error)
            self._store.save(info)
            self._announce(info, request_webhooks(info))
            recovered.append(info)
        return recovered

    async def start(self, request: egress.TrackEgressRequest, egress_id: str | None = None, *,
                    source: egress.StartEgressRequest | None = None) -> egress.EgressInfo:
        """Validate ``request`` (nothing starts on error: ``RequestError``), start it, return the STARTING info.
        ``source``: the unified ``StartEgress`` request ``request`` was made from (the info reports it); one that
        also names an audio track (``av_audio_track``) runs as an ``AvEgress`` of ``request``'s video track."""
        if not self._accepting:
            raise RequestError(UNAVAILABLE, "the egress service is shutting down")
        check_track_request(request, self._config.egress.local_dir)
        check_webhooks(request, self._config.egress.api_key)
        if egress_id in self._jobs:
            raise RequestError(ALREADY_EXISTS, f"egress {egress_id} is already running")
        track_type = await self._check_track(request.room_name, request.track_id)
        audio_track = av_audio_track(source) if source is not None else None
        if audio_track is not None:
            await self._check_track(request.room_name, audio_track)
            if self._check_pair is not None:  # else checked once both record (AvEgress)
                await self._check_pair(request.room_name, request.track_id, audio_track)
        egress_id = egress_id or new_egress_id()
        kinds = (egress_kind(request, track_type), *(("audio_file",) if audio_track is not None else ()))
        cost = self._admit(egress_id, kinds)  # reserved from here on
        job: Runner
        if source is not None and audio_track is not None:
            job = AvEgress(request, audio_track, self._config.egress, egress_id=egress_id, source=source,
                           on_update=lambda info: self._on_update(egress_id, info))
        else:
            job = Egress(request, self._config.egress, egress_id=egress_id, source=source,
                         on_update=lambda info: self._on_update(egress_id, info), on_delay=self._on_delay)
        try:
            await self._store.put(job.info)
        except Exception as exc:
            self._meter.release(egress_id)
            log.error("egress %s not started: the store cannot be written: %s", egress_id, exc)
            raise RequestError(UNAVAILABLE, "the egress store cannot be written (data_dir full?)") from None
        finally:
            self._admitting.pop(egress_id, None)
        state = _Job(job, job.info, tuple(request.webhooks), kinds, cost)
        self._jobs[egress_id] = state
        self._announce(job.info, state.webhooks)
        state.tasks = [
            asyncio.create_task(self._run(state), name=f"egress {job.egress_id}"),
            *self._limit_tasks(state, request),
        ]
        log.info("egress %s started for track %s in room %s", job.egress_id, request.track_id, request.room_name,
                 extra={"egress_id": job.egress_id})
        return copy_info(job.info)

    async def list(self, room_name: str = "", egress_id: str = "", active: bool = False, *, limit: int = 0,
                   after: tuple[int, str] | None = None) -> list[egress.EgressInfo]:
        """Stored egresses matching the filters (a page: ``Store.query``), with running ones as of now."""
        infos = await self._store.query(room_name=room_name, egress_id=egress_id, active=active, limit=limit,
                                        after=after)
        return [copy_info(self._jobs[i.egress_id].info) if i.egress_id in self._jobs else i for i in infos]

    async def stop(self, egress_id: str) -> egress.EgressInfo:
        """Ask a running egress to finish (``End reason: StopEgress API``); its info once it has left ACTIVE."""
        job = self._jobs.get(egress_id)
        if job is None:
            raise await self._not_running(egress_id)
        if is_ended(job.info):  # ended, still finishing its bookkeeping
            raise _cannot_stop(job.info)
        job.changed.clear()
        job.runner.stop()
        try:
            async with asyncio.timeout(STOP_WAIT):
                while job.info.status in (Status.EGRESS_STARTING, Status.EGRESS_ACTIVE):
                    await job.changed.wait()
                    job.changed.clear()
        except TimeoutError:
            pass
        return copy_info(job.info)

    async def update_stream(self, egress_id: str) -> egress.EgressInfo:
        """Track egress has no stream outputs to change: always an error, like upstream."""
        if egress_id not in self._jobs and await self._store.get(egress_id) is None:
            raise RequestError(NOT_FOUND, "egress does not exist")
        raise RequestError(INVALID_ARGUMENT, "UpdateStream called on non-streaming egress")

    async def close(self) -> None:
        """Stop accepting, stop every running egress (``End reason: Server shutting down``) and wait for them."""
        self._accepting = False
        self._meter.stop()
        for job in list(self._jobs.values()):
            job.runner.stop(SHUTDOWN)
        runs = [job.tasks[0] for job in self._jobs.values()]
        if runs:
            await asyncio.gather(*runs, return_exceptions=True)

    # internals

    def kinds(self, egress_id: str) -> tuple[str, ...] | None:
        """What ``egress_id`` records (``cpuload.KINDS``: an A/V egress a video and an audio file), while it runs
        here."""
        job = self._jobs.get(egress_id)
        return job.kinds if job else None

    def available(self) -> dict[str, int] | None:
        """How many more egresses of each kind this process would admit now (None without admission)."""
        if self._admission is None:
            return None
        self._meter.start()
        return self._admission.available(self._reserved(), self._meter.measured)

    def _admit(self, egress_id: str, kinds: tuple[str, ...]) -> float:
        """Reserve what an egress recording ``kinds`` costs, or ``resource_exhausted`` if it does not fit; the cost."""
        if self._admission is None:
            return 0.0
        self._meter.start()
        admission = self._admission
        cost, reserved, measured = sum(map(admission.cost, kinds)), self._reserved(), self._meter.measured
        if not admission.admits(reserved, measured, cost):
            raise RequestError(RESOURCE_EXHAUSTED, f"at capacity: {len(self._jobs)} egresses running, "
                               f"{reserved:.2f} CPUs reserved, {measured:.2f} measured; a {' + '.join(kinds)} "
                               f"egress costs {cost:g}, budget {admission.budget:g} CPUs")
        self._meter.reserve(egress_id, cost)
        self._admitting[egress_id] = cost
        return cost

    def _reserved(self) -> float:
        """What the running egresses are priced at, and those being admitted (reserved, not yet jobs)."""
        running = sum(job.cost for job in self._jobs.values() if not is_ended(job.info))
        return running + sum(self._admitting.values())

    async def _not_running(self, egress_id: str) -> RequestError:
        info = await self._store.get(egress_id)
        if info is None:
            return RequestError(NOT_FOUND, "egress does not exist")
        return _cannot_stop(info)

    async def _run(self, job: _Job) -> None:
        try:
            await job.runner.run()
        finally:
            for task in job.tasks[1:]:
                task.cancel()
            if not is_ended(job.info):  # its final update never got through: the runner's own info is the truth
                self._ended_unreported(job)
            self._jobs.pop(job.runner.egress_id, None)

    def _ended_unreported(self, job: _Job) -> None:
        info = copy_info(job.runner.info)
        if not is_ended(info):
            info.status, info.error_code = Status.EGRESS_FAILED, 500
            info.error = "internal error: ended without a status"
            info.ended_at = info.updated_at = time.time_ns()
        log.error("egress %s ended %s without its update being recorded; recording it now", info.egress_id,
                  Status.Name(info.status))
        job.info = info
        job.changed.set()
        self._store.save(info)
        self._announce(info, job.webhooks)

    def _on_update(self, egress_id: str, info: egress.EgressInfo) -> None:
        """Egress status change: remember it, persist it, announce it."""
        job = self._jobs[egress_id]
        if not is_ended(info) and not info.file_results:
            try:
                partial = job.runner.partial_file
            except OSError as exc:
                log.warning("egress %s: partial file unreadable: %s", egress_id, exc)
                partial = None
            if partial is not None:
                info.file_results.append(partial)
        job.info = info
        job.changed.set()
        self._store.save(info)
        self._announce(info, job.webhooks)

    def _announce(self, info: egress.EgressInfo, hooks: tuple[models.WebhookConfig, ...]) -> None:
        if self._webhooks is not None:
            self._webhooks.notify(info, hooks)
        for listener in self._listeners:
            try:
                listener(copy_info(info))
            except Exception:
                log.exception("egress %s: update listener failed", info.egress_id)

    def _limit_tasks(self, job: _Job, request: egress.TrackEgressRequest) -> Tasks:
        limits = self._config.session_limits
        streaming = request.WhichOneof("output") == "websocket_url"
        duration = limits.stream_output_max_duration if streaming else limits.file_output_max_duration
        tasks: Tasks = []
        if duration > 0:
            tasks.append(asyncio.create_task(_after(duration, job.runner.limit_reached)))
        if not streaming and limits.file_output_max_size > 0:
            tasks.append(asyncio.create_task(_watch_size(job.runner, limits.file_output_max_size)))
        return tasks


async def _after(seconds: float, action: Callable[[], None]) -> None:
    await asyncio.sleep(seconds)
    action()


async def _watch_size(job: Runner, max_size: int) -> None:
    """``limit_reached()`` once the file has grown to ``max_size`` bytes."""
    while True:
        await asyncio.sleep(SIZE_CHECK_INTERVAL)
        if job.bytes_out >= max_size:
            job.limit_reached()
            return


async def _finish_killed(info: egress.EgressInfo) -> None:
    """Mark ``info`` FAILED "Process killed" (or ``STATUS_LOST`` when its manifest shows the file was finalised:
    only the final status write was lost); file results from what is on disk now (dropped if absent)."""
    now = time.time_ns()
    cause = STATUS_LOST if await finalised_before_kill(info) else PROCESS_KILLED
    info.status = Status.EGRESS_FAILED
    info.error, info.error_code = cause, 500
    info.details = f"End reason: {cause}"
    info.updated_at = info.ended_at = now
    await refresh_killed_files(info)


def _cannot_stop(info: egress.EgressInfo) -> RequestError:
    return RequestError(FAILED_PRECONDITION, f"egress with status {Status.Name(info.status)} cannot be stopped")
