"""``trackegress worker``: a drop-in egress worker that livekit-server dispatches track egresses to.

Serves ``EgressInternal.StartEgress`` / ``ListActiveEgress`` (topic ``cluster_id``) and, per running egress,
``EgressHandler.StopEgress`` / ``UpdateStream`` (topic = egress id) over psrpc on Redis; reports every status
to ``IOInfo`` (livekit-server's, or ``trackegress serve``'s). Health and metrics ports as ``serve``'s.
The egress lifecycle (limits, store, restart recovery) is ``EgressManager``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from livekit.protocol import egress
from redis.exceptions import RedisError

from trackegress.cluster.settings import WorkerConfig
from trackegress.cpuload import CpuAdmission, CpuMeter, egress_kind
from trackegress.errors import ALREADY_EXISTS, INVALID_ARGUMENT, UNAVAILABLE, RequestError
from trackegress.info import is_ended, new_egress_id
from trackegress.logs import current_egress_id
from trackegress.manager import EgressManager
from trackegress.ops.metrics import Metrics
from trackegress.ops.ports import serve_ops
from trackegress.psrpc import wire as psrpc
from trackegress.psrpc.bus import Method, RedisBus, RPCClient, RPCServer
from trackegress.psrpc.wire import ListActiveEgressResponse, PsrpcError, Request, StartEgressRequest
from trackegress.reporting.ioinfo_client import IOInfoReporter
from trackegress.reporting.store import Store
from trackegress.request import av_audio_track, passthrough_track_request

log = logging.getLogger(__name__)

CREATE_WAIT = 3.0  # StartEgress waits this long for IOInfo.CreateEgress (livekit-server retries after 10 s)
STOP_WAIT = 2.0  # StopEgress answers within this (livekit-server's psrpc timeout is 3 s)
OWNER_PREFIX = "trackegress:egress:"  # Redis key naming the worker that runs an egress id
OWNER_TTL = 24 * 3600
DRAIN_TIMEOUT = 5.0  # queued reports get this at shutdown (one call; final statuses unsent are kept for the next start)
QUIET_WAIT = 2.0  # a Redis call of the shutdown (unsubscribing) gives up after this
# livekit-server's client takes a claim of affinity >= 1 at once (MaximumAffinity 1) and otherwise waits 500 ms for a
# better one (ShortCircuitTimeout); upstream's worker answers 1 only when already busy (0.5 when idle, to pack track
# egresses next to its room composites). Here every egress is a track: a worker that can take one claims it with 1,
# and the least busy answers first (``claim_delay``).
CLAIM = 1.0
CLAIM_SPREAD = 0.1  # seconds: the longest a busy process holds its claim back
# A request we cannot run (a StartEgress of another shape) is claimed this low, so that any worker that can run it
# wins, and otherwise we answer it with the reason instead of leaving livekit-server to time out.
REFUSAL = 0.01


def claim_delay(admission: CpuAdmission, reserved: float, measured: float, cost: float, busy: int) -> float | None:
    """Seconds before claiming with ``CLAIM``: ``CLAIM_SPREAD * busy / (busy + 1)`` for the ``busy`` egresses the
    process runs or is claiming, so the least busy of several answers first (a budget share would not spread: at
    the measured prices one egress is under 1 % of it); None (no claim) when ``cost`` does not fit next to what is
    ``reserved`` (running and claimed egresses at their cost) or next to what is ``measured``."""
    if admission.budget <= 0 or not admission.admits(reserved, measured, cost):
        return None
    return CLAIM_SPREAD * busy / (busy + 1)


@dataclass(frozen=True)
class _Claim:
    """A StartEgress we claimed and may be chosen for: its cost is reserved until ``expiry`` (ns)."""

    egress_id: str
    cost: float
    expiry: int


@dataclass
class _Running:
    cost: float
    room_id: str
    launch: asyncio.Task[egress.EgressInfo]
    ended: bool = False
    info: egress.EgressInfo | None = None  # the latest status reported


class Worker:
    """psrpc front of an ``EgressManager``: ``await start()``, then ``await shutdown(grace)``."""

    def __init__(self, config: WorkerConfig, bus: RedisBus, manager: EgressManager) -> None:
        self.server_id = psrpc.new_id("SRV_")
        self._config = config
        self._admission = config.service.admission
        self._bus = bus
        self._manager = manager
        self._internal = RPCServer(bus, psrpc.EGRESS_INTERNAL, self.server_id)
        self._handler = RPCServer(bus, psrpc.EGRESS_HANDLER, self.server_id)
        self._io = RPCClient(bus, psrpc.IOINFO)
        self._reporter = IOInfoReporter(self._io, on_final=self._on_final, redis_up=lambda: bus.connected)
        self._running: dict[str, _Running] = {}
        self._pending: dict[str, _Claim] = {}  # by request id
        self._accepting = True
        self._meter = CpuMeter()
        self._outbox = Outbox(config.service.data_dir / "unreported")
        self._idle = asyncio.Event()
        self._start_method = Method("StartEgress", StartEgressRequest.decode, self._start_egress, self._affinity,
                                    unclaimed=self._release)
        self._list_method = Method("ListActiveEgress", _empty, self._list_active, claim=False)
        self._stop_method = Method("StopEgress", psrpc.parser(egress.StopEgressRequest), self._stop_egress, queue=True)
        self._update_method = Method("UpdateStream", psrpc.parser(egress.UpdateStreamRequest), self._update_stream,
                                     queue=True)

    async def start(self) -> None:
        """Report what a previous run left unfinished (FAILED "Process killed"), then start claiming."""
        await self._io.start()
        self._meter.start()
        self._manager.add_listener(self._meter.observe)
        self._manager.add_listener(self._on_update)
        self._bus.on_reconnect(self._on_reconnect)
        for info in await self._manager.recover():
            log.warning("egress %s: reported FAILED (Process killed) after a restart", info.egress_id)
        for info in await asyncio.to_thread(self._outbox.load):
            log.warning("egress %s: sending its final status (%s) kept by the last run", info.egress_id,
                        egress.EgressStatus.Name(info.status))
            self._reporter.report(info)
        await self._internal.register(self._start_method, self._config.cluster_id)
        await self._internal.register(self._list_method, self._config.cluster_id)
        admission = self._admission
        log.info("worker %s serving (cluster_id %r, CPU budget %.2f; costs: audio file %g, video file %g, "
                 "websocket %g)", self.server_id, self._config.cluster_id, admission.budget, admission.audio_file,
                 admission.video_file, admission.websocket)

    async def shutdown(self, grace: float) -> None:
        """Stop claiming; let running egresses end for ``grace`` seconds, stop the rest; report everything.

        Bounded whatever Redis does: a Redis away costs at most ``REDIS_TIMEOUT`` per command, reports get
        ``DRAIN_TIMEOUT`` (a second without Redis), and final statuses still unsent are kept in ``data_dir`` for
        the next start to send.
        """
        self._accepting = False
        self._meter.stop()
        await _quietly(self._internal.unregister(self._start_method, self._config.cluster_id))
        if self._busy():
            log.info("shutting down: waiting up to %.0fs for %d egress(es)", grace, self._manager.active_count)
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        await self._manager.close()
        await asyncio.to_thread(self._outbox.keep, self._reporter.unsent())  # each forgotten once it is sent
        await self._reporter.drain(DRAIN_TIMEOUT if self._bus.connected else 1.0)
        if unsent := self._reporter.unsent():
            log.warning("%d final status(es) not sent to IOInfo: kept for the next start", len(unsent))
        await _quietly(self._internal.unregister(self._list_method, self._config.cluster_id))

    # EgressInternal

    # Each psrpc delivery runs in a task of its own: its lines carry the egress it is about.

    async def _affinity(self, request: Request, start: StartEgressRequest) -> float:
        current_egress_id.set(start.egress_id)
        if not self._accepting or start.kind not in ("track", "egress"):
            return -1.0
        if start.kind == "egress":
            try:
                _as_track(start)
            except PsrpcError:
                return REFUSAL
        now = time.time_ns()
        self._pending = {rid: claim for rid, claim in self._pending.items() if claim.expiry > now}
        if start.egress_id in self._running or any(c.egress_id == start.egress_id for c in self._pending.values()):
            return CLAIM  # a repeat of one we run or are starting: answer it again
        if start.egress_id and await self._owner(start.egress_id) not in (None, self.server_id):
            return -1.0  # another worker runs it
        cost = self._cost(start)
        reserved, measured = self._load()
        busy = sum(not r.ended for r in self._running.values()) + len(self._pending)
        delay = claim_delay(self._admission, reserved, measured, cost, busy)
        if delay is None:
            log.info("egress %s: not claimed, at capacity (%.2f CPUs reserved, %.3f measured, of %.2f)",
                     start.egress_id, reserved, measured, self._admission.budget)
            return -1.0
        self._pending[request.request_id] = _Claim(start.egress_id, cost, request.expiry)
        if delay > 0:
            await asyncio.sleep(delay)
        return CLAIM

    def available(self) -> dict[str, int]:
        """How many more egresses of each kind this worker would claim now."""
        return self._admission.available(*self._load())

    def _cost(self, start: StartEgressRequest) -> float:
        """CPUs a StartEgress is priced at: livekit-server's estimate, else the kind's cost (a file of a track of
        unknown type at the video price until it runs; an A/V egress at a video and an audio file's)."""
        if start.estimated_cpu:
            return start.estimated_cpu
        if start.track:
            return self._admission.cost(egress_kind(start.track))
        av = isinstance(start.request, egress.StartEgressRequest) and av_audio_track(start.request) is not None
        return self._admission.video_file + (self._admission.audio_file if av else 0.0)

    def _load(self) -> tuple[float, float]:
        """CPUs reserved (running and claimed egresses at their cost) and measured (claims included)."""
        claimed = sum(c.cost for c in self._pending.values())
        reserved = sum(r.cost for r in self._running.values()) + claimed
        return reserved, self._meter.measured + claimed

    def _release(self, request: Request) -> None:
        """Another worker got the request: its cost is no longer reserved here."""
        self._pending.pop(request.request_id, None)

    async def _start_egress(self, request: Request, start: StartEgressRequest) -> bytes:
        pending = self._pending.pop(request.request_id, None)
        track, source = _as_track(start)
        egress_id = start.egress_id or new_egress_id()
        current_egress_id.set(egress_id)
        running = self._running.get(egress_id)
        if running is None:
            if not self._accepting:
                raise PsrpcError(UNAVAILABLE, "worker is shutting down")
            cost = pending.cost if pending else self._cost(start)
            launch = asyncio.ensure_future(self._launch(egress_id, track, source, not start.estimated_cpu))
            running = self._running[egress_id] = _Running(cost, start.room_id, launch)
            self._meter.reserve(egress_id, cost)
        elif running.launch.done():
            log.info("egress %s: repeated StartEgress, answering with its current state", egress_id)
        try:
            info = await asyncio.shield(running.launch)
        except RequestError as exc:
            raise PsrpcError(exc.code, exc.message) from None
        current = await self._manager.list(egress_id=egress_id)
        answer = current[0] if current else info
        answer.room_id = answer.room_id or start.room_id
        return answer.SerializeToString()

    async def _launch(self, egress_id: str, track: egress.TrackEgressRequest,
                      source: egress.StartEgressRequest | None, reprice: bool) -> egress.EgressInfo:
        owned = False
        try:
            await self._own(egress_id)
            owned = True
            await self._handler.register(self._stop_method, egress_id)
            await self._handler.register(self._update_method, egress_id)
            info = await self._manager.start(track, egress_id, source=source)
        except Exception:
            self._meter.release(egress_id)
            self._running.pop(egress_id, None)
            await self._unregister_handlers(egress_id)
            if owned:
                await self._bus.redis.delete(OWNER_PREFIX + egress_id)
            raise
        kinds, running = self._manager.kinds(egress_id), self._running.get(egress_id)
        if reprice and kinds is not None and running is not None and not running.ended:
            running.cost = sum(map(self._admission.cost, kinds))  # the track's type is known now
        await self._reporter.wait_created(egress_id, CREATE_WAIT)
        return info

    async def _own(self, egress_id: str) -> None:
        """Cluster-wide: one worker per egress id (livekit-server retries StartEgress with the same id)."""
        if await self._bus.redis.set(OWNER_PREFIX + egress_id, self.server_id, nx=True, ex=OWNER_TTL):
            return
        if await self._owner(egress_id) != self.server_id:
            raise PsrpcError(ALREADY_EXISTS, f"egress {egress_id} already exists")

    async def _owner(self, egress_id: str) -> str | None:
        owner = await self._bus.redis.get(OWNER_PREFIX + egress_id)
        return owner if owner is None or isinstance(owner, str) else owner.decode(errors="replace")

    async def _list_active(self, request: Request, _: None) -> bytes:
        return ListActiveEgressResponse(tuple(job.egress_id for job in self._manager.running())).encode()

    # EgressHandler

    async def _stop_egress(self, request: Request, stop: egress.StopEgressRequest) -> bytes:
        current_egress_id.set(stop.egress_id)
        try:
            info = await asyncio.wait_for(self._manager.stop(stop.egress_id), STOP_WAIT)
        except TimeoutError:
            info = next(iter(await self._manager.list(egress_id=stop.egress_id)), egress.EgressInfo())
        except RequestError as exc:
            raise PsrpcError(exc.code, exc.message) from None
        return info.SerializeToString()

    async def _update_stream(self, request: Request, update: egress.UpdateStreamRequest) -> bytes:
        current_egress_id.set(update.egress_id)
        try:
            info = await self._manager.update_stream(update.egress_id)
        except RequestError as exc:
            raise PsrpcError(exc.code, exc.message) from None
        return info.SerializeToString()

    # status reports

    def _on_update(self, info: egress.EgressInfo) -> None:
        running = self._running.get(info.egress_id)
        if running is not None:
            info.room_id = info.room_id or running.room_id
            running.info = info
            if is_ended(info):
                running.cost, running.ended = 0.0, True  # kept until the final report is sent
        self._reporter.report(info)
        if not self._busy():
            self._idle.set()

    def _on_reconnect(self) -> None:
        self._reporter.wake()
        self._bus.spawn(self._resync(), "resync after a Redis reconnect")

    async def _resync(self) -> None:
        """After a Redis reconnect: a Redis that restarted empty has lost our ownership keys and livekit-server's
        egress records, so claim the running egresses again and re-announce them (``CreateEgress``: ignored for an
        egress livekit-server still has). Final statuses still queued are retried by the reporter itself."""
        for egress_id, running in list(self._running.items()):
            if running.ended or running.info is None:
                continue
            try:
                if not await self._bus.redis.set(OWNER_PREFIX + egress_id, self.server_id, nx=True, ex=OWNER_TTL) \
                        and await self._owner(egress_id) != self.server_id:
                    log.warning("egress %s: another worker claimed its id while Redis was away", egress_id)
            except RedisError as exc:
                log.warning("egress %s: could not re-claim after the Redis reconnect: %s", egress_id, exc)
                return  # lost again: the next reconnect resyncs
            log.info("egress %s: re-announced (%s) to IOInfo after the Redis reconnect", egress_id,
                     egress.EgressStatus.Name(running.info.status))
            self._reporter.resync(running.info)

    def _busy(self) -> bool:
        return any(not running.ended for running in self._running.values())

    def _on_final(self, egress_id: str) -> None:
        """The final status is with livekit-server: forget the egress, stop serving its topic."""
        self._running.pop(egress_id, None)
        self._bus.spawn(asyncio.to_thread(self._outbox.forget, egress_id), f"sent {egress_id}")
        self._bus.spawn(self._unregister_handlers(egress_id), f"unregister {egress_id}")

    async def _unregister_handlers(self, egress_id: str) -> None:
        await self._handler.unregister(self._stop_method, egress_id)
        await self._handler.unregister(self._update_method, egress_id)


class Outbox:
    """Final statuses a shutdown could not send (Redis away), one ``<egress_id>.pb`` each, sent by the next start."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def keep(self, infos: list[egress.EgressInfo]) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        for info in infos:
            path = self._folder / f"{info.egress_id}.pb"
            path.with_suffix(".tmp").write_bytes(info.SerializeToString())
            path.with_suffix(".tmp").replace(path)

    def load(self) -> list[egress.EgressInfo]:
        return [egress.EgressInfo.FromString(path.read_bytes()) for path in sorted(self._folder.glob("*.pb"))]

    def forget(self, egress_id: str) -> None:
        (self._folder / f"{egress_id}.pb").unlink(missing_ok=True)


async def _quietly(call: Awaitable[None]) -> None:
    """Run a Redis call of the shutdown for up to ``QUIET_WAIT``; a Redis away is logged, not raised (the process
    must still stop)."""
    try:
        await asyncio.wait_for(call, QUIET_WAIT)
    except (RedisError, OSError, RuntimeError, TimeoutError) as exc:
        log.warning("shutting down without Redis: %s", exc)


def _as_track(start: StartEgressRequest) -> tuple[egress.TrackEgressRequest, egress.StartEgressRequest | None]:
    """The track egress ``start`` asks for, and the unified ``StartEgress`` it was made from (``egress`` field, preset
    ``PASSTHROUGH``: ``passthrough_track_request``); ``PsrpcError`` invalid_argument for anything else."""
    if start.track is not None:
        return start.track, None
    if isinstance(start.request, egress.StartEgressRequest):
        try:
            return passthrough_track_request(start.request), start.request
        except RequestError as exc:
            raise PsrpcError(exc.code, exc.message) from None
    raise PsrpcError(INVALID_ARGUMENT, "only track egresses and StartEgress with preset PASSTHROUGH run here")


async def _checked_after_joining(room_name: str, track_id: str) -> None:
    """A worker looks for the track only once joined (waiting ``track_wait_timeout``, then FAILED not_found), as
    upstream egress does: livekit-server found the room, ``serve`` checked the track, and the participant list
    RoomService answers from can lag a track just published by seconds (a pre-check here refused 2 of 10 auto track
    egresses, tracks published at once, with not_found)."""


def _empty(data: bytes) -> None:
    """``rpc.ListActiveEgressRequest`` has no fields."""


async def run_worker(config: WorkerConfig, stop: asyncio.Event, grace: float, supervised: bool = False) -> None:
    """Serve until ``stop`` is set, then shut down gracefully (see ``Worker.shutdown``). ``supervised``: one of a
    node's processes (``supervisor.py``), its health and metrics on Unix sockets in its data_dir."""
    service = config.service
    async with contextlib.AsyncExitStack() as stack:
        lock = await asyncio.to_thread(lock_data_dir, service.data_dir)
        stack.callback(lock.close)
        redis = config.redis.connect()
        stack.push_async_callback(redis.aclose)
        await redis.ping()
        store = await Store.open(service.data_dir / "worker.db")
        stack.push_async_callback(store.close)
        bus = RedisBus(redis)
        stack.push_async_callback(bus.close)
        metrics = Metrics()
        manager = EgressManager(service, store, _checked_after_joining, on_delay=metrics.observe_delay)
        manager.add_listener(metrics.observe)
        worker = Worker(config, bus, manager)
        metrics.watch(manager, worker.available)
        await worker.start()
        sockets = service.data_dir if supervised else None
        for runner in await serve_ops(service, manager, metrics, worker.available, sockets=sockets):
            stack.push_async_callback(runner.cleanup)
        await stop.wait()
        log.info("shutting down")
        await worker.shutdown(grace)


def lock_data_dir(data_dir: Path) -> IO[bytes]:
    """One worker per data dir: its store is what a restart reports as killed."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "worker.lock", "wb")  # held for the process's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another worker is using data_dir {data_dir}") from None
    handle.write(str(os.getpid()).encode())
    handle.flush()
    return handle
