"""The HTTP ports a process serves: the API's, ``health_port`` and ``prometheus_port``."""

from __future__ import annotations

from collections.abc import Callable

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
    capacity: Callable[[], dict[str, int] | None] | None = None,
) -> list[web.AppRunner]:
    """The health and metrics ports that ``config`` sets (``health_port``, ``prometheus_port``; 0 = off); health
    shows ``capacity()`` (how many more egresses of each kind would be admitted) when given."""
    apps = ((config.health_port, health_app(manager, capacity)), (config.prometheus_port, metrics.app()))
    return [await listen(app, config.bind, port, idle_timeout=config.idle_timeout) for port, app in apps if port]
