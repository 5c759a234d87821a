"""``trackegress serve``: store, dispatcher, webhooks, the Twirp API and the operations ports, wired together.

The dispatcher runs the egresses in this process (``EgressManager``), or, with ``redis:`` configured, on the
``trackegress worker`` processes of ``cluster_id`` (``ClusterDispatcher``); the API is the same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from trackegress.api.auth import Authenticator
from trackegress.api.ops import Metrics, listen, serve_ops
from trackegress.api.twirp import TwirpServer
from trackegress.cluster.settings import ClusterSettings
from trackegress.config import ServiceConfig
from trackegress.service import Dispatcher, EgressManager, LiveKitRooms
from trackegress.store import Store
from trackegress.webhooks import WebhookSender

log = logging.getLogger(__name__)


async def serve(config: ServiceConfig, stop: asyncio.Event, cluster: ClusterSettings | None = None) -> None:
    """Run the service until ``stop`` is set, then stop the dispatcher and close everything."""
    egress_config = config.egress
    async with contextlib.AsyncExitStack() as stack:
        store = await Store.open(config.data_dir / "egress.db")
        stack.push_async_callback(store.close)
        rooms = LiveKitRooms(egress_config.ws_url, egress_config.api_key, egress_config.api_secret)
        stack.push_async_callback(rooms.aclose)
        webhooks = WebhookSender(egress_config.api_key, egress_config.api_secret, config.webhook_urls)
        stack.push_async_callback(webhooks.close)
        metrics = Metrics()
        if cluster is None:
            dispatcher: Dispatcher = await _in_process(config, store, rooms, webhooks, metrics)
        else:
            from trackegress.cluster.dispatch import open_cluster

            dispatcher = await open_cluster(stack, config, cluster, store, rooms, webhooks, metrics.observe)
        runners: list[web.AppRunner] = []
        try:
            api = TwirpServer(dispatcher, Authenticator(egress_config.api_key, egress_config.api_secret))
            runners.append(await listen(api.app(), config.bind, config.api_port))
            runners.extend(await serve_ops(config, dispatcher, metrics))
            log.info("serving livekit.Egress on http://%s:%d", config.bind, config.api_port)
            await stop.wait()
            log.info("shutting down: %d egress(es) active", dispatcher.active_count)
        finally:
            await dispatcher.close()
            for runner in runners:
                await runner.cleanup()


async def _in_process(
    config: ServiceConfig, store: Store, rooms: LiveKitRooms, webhooks: WebhookSender, metrics: Metrics
) -> EgressManager:
    """Egresses run here; what a previous run left unfinished is reported FAILED first."""
    manager = EgressManager(config, store, rooms.check_track, webhooks, on_delay=metrics.observe_delay)
    metrics.watch(manager)
    manager.add_listener(metrics.observe)
    await manager.recover()
    return manager
