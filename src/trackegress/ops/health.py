"""Health endpoint: ``GET /`` (and ``/health``) on ``health_port``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from trackegress.dispatcher import Dispatcher


def health_app(manager: Dispatcher, capacity: Callable[[], dict[str, int] | None] | None = None) -> web.Application:
    """``GET /`` (and ``/health``): ``{"status": "ok", "active_egresses": n, "accepting": bool}``, and with
    ``capacity`` ``"available": {kind: n}``: how many more egresses of each kind would be admitted now."""

    async def health(request: web.Request) -> web.Response:
        body: dict[str, object] = {"status": "ok", "active_egresses": manager.active_count,
                                   "accepting": manager.accepting}
        available = (capacity or manager.available)()
        if available is not None:
            body["available"] = available if manager.accepting else dict.fromkeys(available, 0)
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/", health)
    app.router.add_get("/health", health)
    return app
