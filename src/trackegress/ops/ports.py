"""The HTTP ports a process serves: the API's, ``health_port`` and ``prometheus_port``."""

from __future__ import annotations

from aiohttp import web

from trackegress.config import ServiceConfig
from trackegress.dispatcher import Dispatcher
from trackegress.ops.health import health_app
from trackegress.ops.metrics import Metrics

IDLE_TIMEOUT = 20.0  # seconds a connection may stay without a complete request (headers included), on every port


async def listen(
    app: web.Application, host: str, port: int, *, runner_class: type[web.AppRunner] = web.AppRunner,
    idle_timeout: float = IDLE_TIMEOUT,
) -> web.AppRunner:
    """Serve ``app`` on ``host:port``; ``await runner.cleanup()`` to stop. A connection that has not completed a
    request's headers within ``idle_timeout`` s of opening, or stays idle that long between requests, is closed."""
    runner = runner_class(app, access_log=None, keepalive_timeout=idle_timeout)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve_ops(config: ServiceConfig, manager: Dispatcher, metrics: Metrics) -> list[web.AppRunner]:
    """The health and metrics ports that ``config`` sets (``health_port``, ``prometheus_port``; 0 = off)."""
    apps = ((config.health_port, health_app(manager)), (config.prometheus_port, metrics.app()))
    return [await listen(app, config.bind, port) for port, app in apps if port]
