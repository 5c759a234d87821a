"""Every core: ``processes`` egress processes on one node, each restarted when it dies.

The supervisor runs the same command (``trackegress worker``) ``processes`` times as children, each with
``TRACKEGRESS_PROCESS=<i>``: a child keeps its own store and lock in ``data_dir/process-<i>`` (so a restarted child
reports its dead predecessor's egresses FAILED "Process killed"), claims by its own load, and serves its health and
metrics on Unix sockets (``ops.ports.ops_socket``); the supervisor serves ``health_port`` and ``prometheus_port``
for the node, summing or labelling what its children say. A child that exits unasked is started again after a
pause; SIGTERM goes to every child, which shut down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from trackegress.backoff import Backoff
from trackegress.config import ServiceConfig
from trackegress.ops.metrics import METRICS_TYPE
from trackegress.ops.ports import listen, ops_socket

log = logging.getLogger(__name__)

CHILD_ENV = "TRACKEGRESS_PROCESS"
RESTART_BACKOFF = Backoff(1.0, cap=30.0)
STABLE = 60.0  # a child that ran this long restarts after the shortest pause again
ASK_TIMEOUT = 2.0


def child_index(env: dict[str, str] | None = None) -> int | None:
    """This process's index among the node's egress processes; None if it is not a supervised child."""
    value = (os.environ if env is None else env).get(CHILD_ENV, "")
    return int(value) if value.isdigit() else None


def child_dir(data_dir: Path, index: int) -> Path:
    """Where child ``index`` keeps its store, lock and sockets."""
    return data_dir / f"process-{index}"


class Supervisor:
    """``count`` children running ``argv`` (arguments of ``python -m trackegress.cli``)."""

    def __init__(self, config: ServiceConfig, argv: Sequence[str], count: int) -> None:
        self._config = config
        self._argv = list(argv)
        self._count = count
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False

    async def run(self, stop: asyncio.Event, grace: float) -> None:
        """Run the children (and the node's ops ports) until ``stop``; then SIGTERM them and wait."""
        async with contextlib.AsyncExitStack() as stack:
            for runner in await self._serve_ops():
                stack.push_async_callback(runner.cleanup)
            keepers = [asyncio.create_task(self._keep(index)) for index in range(self._count)]
            log.info("supervising %d egress processes (data_dir %s/process-<i>)", self._count, self._config.data_dir)
            await stop.wait()
            self._stopping = True
            for child in self._children.values():
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
            await asyncio.wait(keepers, timeout=grace + 30)
            for child in self._children.values():
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            await asyncio.gather(*keepers, return_exceptions=True)

    async def _keep(self, index: int) -> None:
        """Child ``index``, started again each time it exits unasked."""
        failures = 0
        while not self._stopping:
            began = asyncio.get_running_loop().time()
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "trackegress.cli", *self._argv, env=os.environ | {CHILD_ENV: str(index)},
                preexec_fn=_die_with_parent,
            )
            self._children[index] = child
            code = await child.wait()
            if self._stopping:
                return
            failures = 1 if asyncio.get_running_loop().time() - began > STABLE else failures + 1
            delay = RESTART_BACKOFF.delay(failures)
            log.warning("egress process %d (pid %d) exited with %s; starting it again in %.0fs", index, child.pid,
                        code, delay)
            await asyncio.sleep(delay)

    async def _serve_ops(self) -> list[web.AppRunner]:
        config, runners = self._config, []
        if config.health_port:
            app = web.Application()
            app.router.add_get("/", self._health)
            app.router.add_get("/health", self._health)
            runners.append(await listen(app, config.bind, config.health_port, idle_timeout=config.idle_timeout))
        if config.prometheus_port:
            app = web.Application()
            app.router.add_get("/metrics", self._metrics)
            runners.append(await listen(app, config.bind, config.prometheus_port, idle_timeout=config.idle_timeout))
        return runners

    async def _health(self, request: web.Request) -> web.Response:
        """The node: egresses summed, ``available`` summed per kind, and each process's own answer."""
        answers = await asyncio.gather(*(self._ask(i, "health", "/") for i in range(self._count)))
        healths = [_json(a) for a in answers]
        up = [h for h in healths if h is not None]
        available: dict[str, int] = {}
        for health in up:
            for kind, count in dict(health.get("available") or {}).items():
                available[kind] = available.get(kind, 0) + int(count)
        body = {
            "status": "ok" if up else "unavailable", "active_egresses": sum(int(h["active_egresses"]) for h in up),
            "accepting": any(h["accepting"] for h in up), "available": available,
            "processes": [h if h is not None else {"status": "down"} for h in healths],
        }
        return web.json_response(body, status=200 if up else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        """Every child's metrics, each sample labelled ``process``."""
        texts = await asyncio.gather(*(self._ask(i, "metrics", "/metrics") for i in range(self._count)))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged({i: t for i, t in enumerate(texts) if t is not None}))
        return web.Response(body=generate_latest(registry), headers={"Content-Type": METRICS_TYPE})

    async def _ask(self, index: int, port: str, path: str) -> str | None:
        """GET ``path`` from child ``index``'s ``port`` (its Unix socket); None if it does not answer."""
        address = ops_socket(child_dir(self._config.data_dir, index), port)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=address),
                                             timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT)) as session, \
                    session.get(f"http://process-{index}{path}") as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("egress process %d: no answer on its %s socket: %r", index, port, exc)
            return None


class _Merged(Collector):
    """Children's metric families, one family per name, each sample labelled with its ``process``."""

    def __init__(self, texts: dict[int, str]) -> None:
        self._texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for index, text in self._texts.items():
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, sample.labels | {"process": str(index)}, sample.value)
        yield from families.values()


def _json(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (``prctl(PR_SET_PDEATHSIG)``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
