"""The HTTP ports a process serves: the API's, ``health_port`` and ``prometheus_port``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from trackegress.config import ServiceConfig
from trackegress.dispatcher import Dispatcher
from trackegress.ops.health import health_app
from trackegress.ops.metrics import Metrics


async def listen(
    app: web.Application, host: str, port: int, *, idle_timeout: float,
    runner_class: type[web.AppRunner] = web.AppRunner,
) -> web.AppRunner:
    """Serve ``app`` on ``host:port``; ``await runner.cleanup()`` to stop. A connection that has not completed a
    request's headers within ``idle_timeout`` s of opening, or stays idle that long between requests, is closed."""
    runner = runner_class(app, access_log=None, keepalive_timeout=idle_timeout)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve_ops(
    config: ServiceConfig, manager: Dispatcher, metrics: Metrics,
    capacity: Callable[[], dict[str, int] | None] | None = None, *, sockets: Path | None = None,
) -> list[web.AppRunner]:
    """The health and metrics ports that ``config`` sets (``health_port``, ``prometheus_port``; 0 = off), or with
    ``sockets`` both on the Unix sockets of that data dir (``ops_socket``: a supervised process).
    Health shows ``capacity()`` (how many more egresses of each kind would be admitted; default the manager's)."""
    health, prometheus = health_app(manager, capacity), metrics.app()
    if sockets is not None:
        return [await listen_unix(health, ops_socket(sockets, "health")),
                await listen_unix(prometheus, ops_socket(sockets, "metrics"))]
    apps = ((config.health_port, health), (config.prometheus_port, prometheus))
    return [await listen(app, config.bind, port, idle_timeout=config.idle_timeout) for port, app in apps if port]


def ops_socket(data_dir: Path, name: str) -> str:
    """The Unix socket of a supervised process's ``name`` port: in the temp dir, named after its data dir (a path
    inside a deep data dir could pass the 107 bytes a socket path may have)."""
    digest = hashlib.sha256(str(data_dir.absolute()).encode()).hexdigest()[:24]
    return os.path.join(tempfile.gettempdir(), f"trackegress-{digest}-{name}.sock")


async def listen_unix(app: web.Application, address: str) -> web.AppRunner:
    """Serve ``app`` on the Unix socket ``address`` (one a killed predecessor left is replaced; removed on
    ``runner.cleanup()``)."""

    async def remove(_: web.Application | None = None) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, address)

    await remove()
    app.on_cleanup.append(remove)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, address).start()
    return runner
