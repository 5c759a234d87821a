"""``trackegress serve`` as a subprocess on free loopback ports, plus a webhook receiver that verifies like LiveKit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from livekit import api
from livekit.protocol import webhook

from .process import LogFile, OpsEndpoints, stop_process, wait_ready
from .server import LiveKitServer, free_port


class EgressService(OpsEndpoints):
    """``trackegress serve`` configured through ``EGRESS_CONFIG_BODY``; ``kill()`` is ``kill -9``."""

    def __init__(self, server: LiveKitServer, workdir: Path, **settings: Any) -> None:
        self.port, self.health_port, self.prometheus_port = free_port(), free_port(), free_port()
        self.local_dir = workdir / "recordings"
        self.data_dir = workdir / "data"
        config = {
            "api_key": server.api_key, "api_secret": server.api_secret, "ws_url": server.url,
            "api_port": self.port, "health_port": self.health_port, "prometheus_port": self.prometheus_port,
            "local_dir": str(self.local_dir), "data_dir": str(self.data_dir), "track_wait_timeout": "5s",
            "logging": {"level": "debug"}, "processes": 1,  # one process unless a test asks for more
        } | settings
        env = {k: v for k, v in os.environ.items() if k != "EGRESS_CONFIG_FILE"}
        env["EGRESS_CONFIG_BODY"] = yaml.safe_dump(config)
        self._log = LogFile("trackegress-serve-")
        self.log_path = self._log.path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trackegress.cli", "serve"], stdout=self._log.file, stderr=subprocess.STDOUT, env=env
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.proc, self.answers, 20.0, "trackegress serve", self.log_text)

    def log_text(self) -> str:
        return self._log.text()

    def kill(self) -> None:
        """``kill -9``: no clean-up at all."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (kill after 15 s), then remove the log."""
        stop_process(self.proc, 15)
        self._log.close()


@dataclass
class WebhookSink:
    """An HTTP receiver that checks each request with ``livekit.api.WebhookReceiver``."""

    api_key: str
    api_secret: str
    events: list[webhook.WebhookEvent] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def for_egress(self, egress_id: str) -> list[tuple[str, int]]:
        """(event, status) of the verified events about one egress, in arrival order."""
        return [(e.event, e.egress_info.status) for e in self.events if e.egress_info.egress_id == egress_id]

    async def wait_for(self, egress_id: str, event: str, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while event not in [name for name, _ in self.for_egress(egress_id)]:
                await asyncio.sleep(0.05)

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.content_types.append(request.headers.get("Content-Type", ""))
        receiver = api.WebhookReceiver(api.TokenVerifier(self.api_key, self.api_secret))
        try:
            self.events.append(receiver.receive(body, request.headers.get("Authorization", "")))
        except Exception as exc:
            self.rejected.append(str(exc))
            return web.Response(status=401)
        return web.Response(text="ok")
