"""Health endpoint: ``GET /`` (and ``/health``) on ``health_port``."""

from __future__ import annotations

from aiohttp import web

from trackegress.dispatcher import Dispatcher


def health_app(manager: Dispatcher) -> web.Application:
    """``GET /`` (and ``/health``): ``{"status": "ok", "active_egresses": n, "accepting": bool}``."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "active_egresses": manager.active_count, "accepting": manager.accepting}
        )

    app = web.Application()
    app.router.add_get("/", health)
    app.router.add_get("/health", health)
    return app
