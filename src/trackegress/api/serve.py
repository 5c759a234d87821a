"""``trackegress serve``: store, manager, webhooks, the Twirp API and the operations ports, wired together."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from trackegress.api.auth import Authenticator
from trackegress.api.ops import Metrics, health_app
from trackegress.api.twirp import TwirpServer
from trackegress.config import ServiceConfig
from trackegress.service import EgressManager, LiveKitRooms
from trackegress.store import Store
from trackegress.webhooks import WebhookSender

log = logging.getLogger(__name__)


async def serve(config: ServiceConfig, stop: asyncio.Event) -> None:
    """Run the service until ``stop`` is set, then stop the egresses and close everything."""
    egress_config = config.egress
    store = await Store.open(config.data_dir / "egress.db")
    rooms = LiveKitRooms(egress_config.ws_url, egress_config.api_key, egress_config.api_secret)
    webhooks = WebhookSender(egress_config.api_key, egress_config.api_secret, config.webhook_urls)
    metrics = Metrics()
    manager = EgressManager(config, store, rooms.check_track, webhooks, on_delay=metrics.observe_delay)
    metrics.watch(manager)
    manager.add_listener(metrics.observe)
    runners: list[web.AppRunner] = []
    try:
        await manager.recover()
        api = TwirpServer(manager, Authenticator(egress_config.api_key, egress_config.api_secret))
        runners.append(await _listen(api.app(), config.bind, config.api_port))
        if config.health_port:
            runners.append(await _listen(health_app(manager), config.bind, config.health_port))
        if config.prometheus_port:
            runners.append(await _listen(metrics.app(), config.bind, config.prometheus_port))
        log.info("serving livekit.Egress on http://%s:%d", config.bind, config.api_port)
        await stop.wait()
        log.info("shutting down: stopping %d egress(es)", manager.active_count)
    finally:
        await manager.close()
        for runner in runners:
            await runner.cleanup()
        await webhooks.close()
        await rooms.aclose()
        await store.close()


async def _listen(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
