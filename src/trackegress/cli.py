"""Command line: ``trackegress record`` (and, later, serve/worker/start/list/stop)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from google.protobuf.json_format import MessageToJson
from livekit.protocol import egress

from trackegress.config import Config, ConfigError
from trackegress.egress import Egress
from trackegress.request import RequestError, check_track_request

log = logging.getLogger("trackegress")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trackegress", description="Export one LiveKit track.")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
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
    info = asyncio.run(_record(request, config))
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
        loop.add_signal_handler(sig, job.stop)
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


if __name__ == "__main__":
    sys.exit(main())
