"""Command line: ``trackegress record``, ``serve``, ``worker``, and the API clients ``start`` / ``list`` / ``stop``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import trackegress_native
import uvloop
from google.protobuf.json_format import MessageToJson, Parse, ParseError
from google.protobuf.message import Message
from livekit import api
from livekit.protocol import egress

from trackegress.api.server import serve_api
from trackegress.children import SOCKET as CHILD_SOCKET
from trackegress.children import ChildrenDispatcher, child_app
from trackegress.cluster.dispatch import open_cluster
from trackegress.cluster.settings import ClusterSettings, WorkerConfig, cluster_settings, load_worker_config
from trackegress.cluster.worker import lock_data_dir, run_worker
from trackegress.config import Config, ServiceConfig, load_service_config
from trackegress.configfile import read_config
from trackegress.dispatcher import Dispatcher
from trackegress.egress import Egress
from trackegress.errors import ConfigError, RequestError
from trackegress.info import is_ended, recorded_track_id
from trackegress.logs import setup_logging
from trackegress.manager import EgressManager
from trackegress.mux import MuxError, mux
from trackegress.ops.metrics import Metrics
from trackegress.ops.ports import listen_unix, ops_socket, serve_ops
from trackegress.reporting.store import Store
from trackegress.reporting.webhooks import WebhookSender
from trackegress.request import check_track_request
from trackegress.roomservice import LiveKitRooms
from trackegress.supervisor import Supervisor, child_dir, child_index

log = logging.getLogger("trackegress")
DEFAULT_API_URL = "http://127.0.0.1:7990"
SERVE_CHILD_GRACE = 15.0  # seconds serve's egress processes get to stop their egresses on SIGTERM


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trackegress", description="Export one LiveKit track.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # --version's 2 lines
    parser.add_argument("--version", action="version", version=versions())
    parser.add_argument("--log-level", help="debug, info, warning, error (default info, or the config's)")
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser("record", help="record one track until it ends; prints the final EgressInfo")
    record.add_argument("--room", required=True, help="room name")
    record.add_argument("--track", required=True, help="track SID (TR_...)")
    output = record.add_mutually_exclusive_group()
    output.add_argument("--output", default="", help="file path template, relative to --local-dir")
    output.add_argument("--websocket-url", help="stream the audio as PCM to this ws:// or wss:// URL")
    record.add_argument("--local-dir", type=Path, help="base directory for files (default ./recordings)")
    record.add_argument("--url", help="LiveKit server URL (env LIVEKIT_URL)")
    record.add_argument("--api-key", help="env LIVEKIT_API_KEY")
    record.add_argument("--api-secret", help="env LIVEKIT_API_SECRET")
    record.add_argument("--track-timeout", type=float, help="seconds to wait for the track (default 30)")
    record.add_argument("--no-manifest", action="store_true", help="do not write the manifest JSON")
    serve = commands.add_parser("serve", help="run LiveKit's livekit.Egress Twirp API for track egress")
    serve.add_argument("--config", type=Path, help="egress.yaml (default: env EGRESS_CONFIG_FILE / EGRESS_CONFIG_BODY)")
    serve.add_argument("--port", type=int, help="API port (config api_port, default 7990)")
    serve.add_argument("--bind", help="API address (config bind, default 127.0.0.1)")
    worker = commands.add_parser("worker", help="egress worker for livekit-server: track egress over Redis (psrpc)")
    worker.add_argument("--config", type=Path, help="egress.yaml (or env EGRESS_CONFIG_FILE / EGRESS_CONFIG_BODY)")
    worker.add_argument("--shutdown-grace", type=float, default=60.0,
                        help="seconds SIGTERM lets running egresses go on before stopping them (default 60)")
    _client_commands(commands)
    return parser


def versions() -> str:
    """What ``--version`` prints, one line each: the package, the native core, and the str0m, libopus and OpenSSL
    built into the core."""
    native = trackegress_native
    return "\n".join((
        f"trackegress {importlib.metadata.version('trackegress')}",
        f"trackegress-native {native.VERSION}",
        f"str0m {native.STR0M_VERSION}",
        f"libopus {native.LIBOPUS_VERSION}",
        native.OPENSSL_VERSION,  # "OpenSSL 3.6.3 9 Jun 2026"
    ))


def _client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``start``, ``list`` and ``stop``: LiveKit's Python client against a running ``serve``."""
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", default=os.environ.get("TRACKEGRESS_URL", DEFAULT_API_URL),
                        help=f"the service's URL (env TRACKEGRESS_URL, default {DEFAULT_API_URL})")
    client.add_argument("--api-key", help="env LIVEKIT_API_KEY")
    client.add_argument("--api-secret", help="env LIVEKIT_API_SECRET")
    start = commands.add_parser("start", parents=[client], help="StartTrackEgress (or StartEgress) from a request "
                                "JSON file")
    start.add_argument("request", type=Path, help="TrackEgressRequest as JSON (as for lk egress start --type track), "
                       "or with --type egress a StartEgressRequest (e.g. PASSTHROUGH of a video and an audio track)")
    start.add_argument("--type", choices=sorted(_START), default="track",
                       help="track: StartTrackEgress (default); egress: the unified StartEgress")
    start.add_argument("--wait", action="store_true", help="show live status until the egress ends")
    listing = commands.add_parser("list", parents=[client], help="ListEgress")
    listing.add_argument("--room", default="", help="only this room")
    listing.add_argument("--id", default="", help="only this egress")
    listing.add_argument("--active", action="store_true", help="only egresses that have not ended")
    listing.add_argument("--json", action="store_true", help="print the ListEgressResponse as JSON")
    stop = commands.add_parser("stop", parents=[client], help="StopEgress")
    stop.add_argument("egress_id", help="EG_...")
    joined = commands.add_parser("mux", help="join one participant's audio and video track files into one, in sync, "
                                 "without transcoding (their manifests beside them)")
    joined.add_argument("--output", type=Path, required=True, help="OUT.webm / .mkv (VP8, VP9, AV1) or .mp4 (H.264, "
                        "H.265)")
    joined.add_argument("files", type=Path, nargs="+", help="the track egress outputs")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve_main(args)
    if args.command == "worker":
        return _worker_main(args)
    setup_logging(args.log_level or "info")
    if args.command == "record":
        return _record_main(args)
    if args.command == "mux":
        return _mux_main(args)
    return _client_main(args)


def _mux_main(args: argparse.Namespace) -> int:
    """Print ``{"output": ..., "offsets": {file: seconds}, "packets": n}``; exit 2 with the reason if refused."""
    try:
        result = mux(args.output, args.files)
    except MuxError as exc:
        print(f"trackegress mux: {exc}", file=sys.stderr)
        return 2
    offsets = {str(path): offset for path, offset in result.offsets.items()}
    print(json.dumps({"output": str(result.path), "offsets": offsets, "packets": result.packets}))
    return 0


def _record_main(args: argparse.Namespace) -> int:
    try:
        config = Config.from_env(
            ws_url=args.url, api_key=args.api_key, api_secret=args.api_secret,
            local_dir=args.local_dir, track_wait_timeout=args.track_timeout,
        )
    except ConfigError as exc:
        print(f"trackegress: {exc}", file=sys.stderr)
        return 2
    request = _request(args)
    try:
        check_track_request(request, config.local_dir)
    except RequestError as exc:
        print(f"trackegress: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    info = uvloop.run(_record(request, config))
    print(MessageToJson(info, indent=2))
    return 0 if info.status == egress.EgressStatus.EGRESS_COMPLETE else 1


def _request(args: argparse.Namespace) -> egress.TrackEgressRequest:
    request = egress.TrackEgressRequest(room_name=args.room, track_id=args.track)
    if args.websocket_url:
        request.websocket_url = args.websocket_url
    else:
        request.file.filepath = args.output
        request.file.disable_manifest = args.no_manifest
    return request


async def _record(request: egress.TrackEgressRequest, config: Config) -> egress.EgressInfo:
    job = Egress(request, config, on_update=_print_status)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, job.stop, f"Stopped by {sig.name}")
    progress = asyncio.create_task(_progress(job)) if sys.stderr.isatty() else None
    try:
        return await job.run()
    finally:
        if progress is not None:
            progress.cancel()


def _print_status(info: egress.EgressInfo) -> None:
    status = egress.EgressStatus.Name(info.status)
    extra = f" ({info.error})" if info.error else ""
    log.info("%s %s%s", info.egress_id, status, extra)


async def _progress(job: Egress) -> None:
    """One live line on the terminal: frames, bytes in, bytes written."""
    while True:
        await asyncio.sleep(1)
        status = egress.EgressStatus.Name(job.info.status).removeprefix("EGRESS_")
        sys.stderr.write(
            f"\r{job.egress_id} {status:<8} frames={job.frames} in={job.bytes_in}B out={job.bytes_out}B "
        )
        sys.stderr.flush()


# serve


def _serve_main(args: argparse.Namespace) -> int:
    try:
        raw = read_config(args.config)
        config = load_service_config(raw=raw, api_port=args.port, bind=args.bind)
        cluster = cluster_settings(raw)
    except ConfigError as exc:
        setup_logging(args.log_level or "info")
        print(f"trackegress: invalid configuration: {exc}", file=sys.stderr)
        return 2
    redis_password = cluster.redis.password if cluster else ""
    setup_logging(args.log_level or config.log_level, json_lines=config.log_json,
                   secrets=(*config.egress.log_secrets, redis_password))
    index = child_index()
    if index is not None:  # one of the node's egress processes, behind the API process
        child = dataclasses.replace(config, data_dir=child_dir(config.data_dir, index), health_port=0,
                                    prometheus_port=0)
        return _run_until_signalled(lambda stop: _serve_child(child, stop), "cannot serve")
    if cluster is None and config.processes > 1:
        argv = ["serve"] + (["--config", str(args.config)] if args.config else []) + _log_level_args(args)
        supervisor = Supervisor(config, argv, config.processes)
        return _run_until_signalled(lambda stop: _serve_front(config, supervisor, stop), "cannot serve")
    return _run_until_signalled(lambda stop: _serve(config, cluster, stop), "cannot serve")


@dataclasses.dataclass(frozen=True)
class _Parts:
    """What an API or egress process serves with: its store, room checks, metrics and webhooks."""

    store: Store
    rooms: LiveKitRooms
    metrics: Metrics
    webhooks: WebhookSender


async def _open_parts(stack: contextlib.AsyncExitStack, config: ServiceConfig) -> _Parts:
    """Open the store, room checks and webhooks of ``config``, closed with ``stack``."""
    egress_config = config.egress
    store = await Store.open(config.data_dir / "egress.db")
    stack.push_async_callback(store.close)
    rooms = LiveKitRooms(egress_config.ws_url, egress_config.api_key, egress_config.api_secret)
    stack.push_async_callback(rooms.aclose)
    metrics = Metrics()
    webhooks = WebhookSender(egress_config.api_key, egress_config.api_secret, config.webhook_urls,
                             on_drop=metrics.webhook_dropped)
    stack.push_async_callback(webhooks.close)
    return _Parts(store, rooms, metrics, webhooks)


async def _open_manager(config: ServiceConfig, parts: _Parts) -> EgressManager:
    """The egress manager, watched by the metrics, once what a previous run left unfinished is reported FAILED."""
    manager = EgressManager(config, parts.store, parts.rooms.check_track, parts.webhooks,
                            on_delay=parts.metrics.observe_delay, admission=config.admission,
                            check_pair=parts.rooms.check_av_pair)
    parts.metrics.watch(manager)
    manager.add_listener(parts.metrics.observe)
    await manager.recover()
    return manager


async def _serve(config: ServiceConfig, cluster: ClusterSettings | None, stop: asyncio.Event) -> None:
    """Store, webhooks and the dispatcher (in-process, admitted by ``cpu_cost`` as on a worker, or the
    cluster's), then the API until ``stop``."""
    async with contextlib.AsyncExitStack() as stack:
        parts = await _open_parts(stack, config)
        dispatcher: Dispatcher
        if cluster is None:
            dispatcher = await _open_manager(config, parts)
        else:
            dispatcher = await open_cluster(stack, config, cluster, parts.store, parts.rooms, parts.webhooks,
                                            parts.metrics.observe)
        await serve_api(config, dispatcher, parts.metrics, stop)


async def _serve_front(config: ServiceConfig, supervisor: Supervisor, stop: asyncio.Event) -> None:
    """The API in front of ``config.processes`` egress processes (``children.py``); the supervisor serves the
    node's health and metrics ports."""
    lock = await asyncio.to_thread(lock_data_dir, config.data_dir)
    try:
        dispatcher = ChildrenDispatcher(config.data_dir, config.processes)
        api_only = dataclasses.replace(config, health_port=0, prometheus_port=0)
        children = asyncio.create_task(supervisor.run(stop, SERVE_CHILD_GRACE))
        await dispatcher.start_polling()
        try:
            await serve_api(api_only, dispatcher, Metrics(), stop)
        finally:
            stop.set()
            await children
    finally:
        lock.close()


async def _serve_child(config: ServiceConfig, stop: asyncio.Event) -> None:
    """One egress process of ``serve``: its egresses, store and webhooks, driven over its dispatch socket."""
    async with contextlib.AsyncExitStack() as stack:
        parts = await _open_parts(stack, config)
        manager = await _open_manager(config, parts)
        stack.push_async_callback(manager.close)
        runners = [await listen_unix(child_app(manager), ops_socket(config.data_dir, CHILD_SOCKET)),
                   *await serve_ops(config, manager, parts.metrics, sockets=config.data_dir)]
        for runner in runners:
            stack.push_async_callback(runner.cleanup)
        log.info("egress process serving (data_dir %s)", config.data_dir)
        await stop.wait()


# worker


def _worker_main(args: argparse.Namespace) -> int:
    try:
        config = load_worker_config(args.config)
    except ConfigError as exc:
        setup_logging(args.log_level or "info")
        print(f"trackegress: invalid configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.service.log_level, json_lines=config.service.log_json,
                   secrets=(*config.service.egress.log_secrets, config.redis.password))
    index, processes = child_index(), config.service.processes
    if index is None and processes > 1:  # the supervisor: one worker process per core (or as configured)
        argv = ["worker", "--shutdown-grace", str(args.shutdown_grace)]
        argv += (["--config", str(args.config)] if args.config else []) + _log_level_args(args)
        supervisor = Supervisor(config.service, argv, processes)
        return _run_until_signalled(lambda stop: _supervise(supervisor, config, stop, args.shutdown_grace),
                                    "worker failed")
    if index is not None:
        config = dataclasses.replace(config, service=dataclasses.replace(
            config.service, data_dir=child_dir(config.service.data_dir, index), health_port=0, prometheus_port=0))
    return _run_until_signalled(lambda stop: run_worker(config, stop, args.shutdown_grace, index is not None),
                                "worker failed")


async def _supervise(supervisor: Supervisor, config: WorkerConfig, stop: asyncio.Event, grace: float) -> None:
    lock = await asyncio.to_thread(lock_data_dir, config.service.data_dir)
    try:
        await supervisor.run(stop, grace)
    finally:
        lock.close()


def _log_level_args(args: argparse.Namespace) -> list[str]:
    return ["--log-level", args.log_level] if args.log_level else []


def _run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]], failure: str) -> int:
    """Run ``main(stop)``, with SIGINT and SIGTERM setting ``stop``; an OSError or RuntimeError becomes
    ``trackegress: <failure>: <error>`` and exit code 1."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        uvloop.run(run())
    except (OSError, RuntimeError) as exc:
        print(f"trackegress: {failure}: {exc}", file=sys.stderr)
        return 1
    return 0


# API clients


def _client_main(args: argparse.Namespace) -> int:
    if args.command == "start":
        message, method = _START[args.type]
        try:
            request = Parse(args.request.read_text(), message())
        except (OSError, ParseError) as exc:
            print(f"trackegress: cannot read {args.request}: {exc}", file=sys.stderr)
            return 2
        return _call(args, lambda lk: _start(lk, method(lk, request), args.wait))
    if args.command == "list":
        listing = egress.ListEgressRequest(room_name=args.room, egress_id=args.id, active=args.active)
        return _call(args, lambda lk: _list(lk, listing, args.json))
    return _call(args, lambda lk: _stop(lk, args.egress_id))


# ``start --type``: the request's message and the client method that sends it
_START: dict[str, tuple[Callable[[], Message], Callable[[api.LiveKitAPI, Any], Awaitable[egress.EgressInfo]]]] = {
    "track": (egress.TrackEgressRequest, lambda lk, request: lk.egress.start_track_egress(request)),
    "egress": (egress.StartEgressRequest, lambda lk, request: lk.egress.start_egress(request)),
}


def _call(args: argparse.Namespace, action: Callable[[api.LiveKitAPI], Awaitable[int]]) -> int:
    """Run ``action`` with a client; Twirp and connection errors become a message and exit code 1."""

    async def run() -> int:
        client = api.LiveKitAPI(args.url, args.api_key, args.api_secret, failover=False)
        try:
            return await action(client)
        finally:
            await client.aclose()

    try:
        return uvloop.run(run())
    except ValueError as exc:  # missing key or secret
        print(f"trackegress: {exc}", file=sys.stderr)
    except api.TwirpError as exc:
        print(f"trackegress: {exc.code}: {exc.message}", file=sys.stderr)
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"trackegress: cannot reach {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
    return 1


async def _start(client: api.LiveKitAPI, started: Awaitable[egress.EgressInfo], wait: bool) -> int:
    info = await started
    if not wait:
        print(MessageToJson(info, indent=2))
        return 0
    _print_status(info)
    while not is_ended(info):
        await asyncio.sleep(0.5)
        latest = await client.egress.list_egress(egress.ListEgressRequest(egress_id=info.egress_id))
        if latest.items and latest.items[0].status != info.status:
            _print_status(latest.items[0])
        info = latest.items[0] if latest.items else info
    print(MessageToJson(info, indent=2))
    return 0 if info.status == egress.EgressStatus.EGRESS_COMPLETE else 1


async def _list(client: api.LiveKitAPI, request: egress.ListEgressRequest, as_json: bool) -> int:
    response = await client.egress.list_egress(request)
    if as_json:
        print(MessageToJson(response, indent=2))
        return 0
    for info in response.items:
        started = datetime.datetime.fromtimestamp(info.started_at / 1e9).isoformat(timespec="seconds")
        status = egress.EgressStatus.Name(info.status).removeprefix("EGRESS_")
        print(f"{info.egress_id}  {status:<13} {started}  {info.room_name}  {recorded_track_id(info)}  {info.error}")
    return 0


async def _stop(client: api.LiveKitAPI, egress_id: str) -> int:
    info = await client.egress.stop_egress(egress.StopEgressRequest(egress_id=egress_id))
    print(MessageToJson(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
