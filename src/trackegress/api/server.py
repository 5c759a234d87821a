"""``trackegress serve``'s HTTP side: the Twirp API on ``api_port`` and the operations ports, over a dispatcher.

The dispatcher (built by ``cli.py``) runs the egresses in this process (``EgressManager``), or, with ``redis:``
configured, on the ``trackegress worker`` processes of ``cluster_id`` (``ClusterDispatcher``).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from trackegress.api.auth import Authenticator
from trackegress.api.twirp import TwirpRunner, TwirpServer
from trackegress.config import ServiceConfig
from trackegress.dispatcher import Dispatcher
from trackegress.ops.metrics import Metrics
from trackegress.ops.ports import listen, serve_ops

log = logging.getLogger(__name__)


async def serve_api(config: ServiceConfig, dispatcher: Dispatcher, metrics: Metrics, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then close the dispatcher (its egresses end) and the ports."""
    runners: list[web.AppRunner] = []
    try:
        api = TwirpServer(dispatcher, Authenticator(config.egress.api_key, config.egress.api_secret))
        runners.append(await listen(api.app(), config.bind, config.api_port, idle_timeout=config.idle_timeout,
                                    runner_class=TwirpRunner))
        runners.extend(await serve_ops(config, dispatcher, metrics))
        log.info("serving livekit.Egress on http://%s:%d", config.bind, config.api_port)
        await stop.wait()
        log.info("shutting down: %d egress(es) active", dispatcher.active_count)
    finally:
        await dispatcher.close()
        for runner in runners:
            await runner.cleanup()
