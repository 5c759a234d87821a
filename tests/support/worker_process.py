"""``trackegress worker`` as a subprocess with its own egress.yaml, data dir and recordings dir, on this host or on
another one (``netns.Host``)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .netns import Host
from .process import LogFile, stop_process, wait_ready
from .redis_server import RedisServer
from .server import LiveKitServer


class Worker:
    """``start()``, then ``terminate()`` / ``kill()``; ``close()`` stops it and removes its log.

    On ``host`` it reaches livekit-server and Redis at the host's SFU address (``Host.sfu_ip``), as a worker on
    another machine does.
    """

    def __init__(
        self, workdir: Path, server: LiveKitServer, redis: RedisServer, host: Host | None = None, **settings: Any
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.local_dir = workdir / "recordings"
        self.config = workdir / "egress.yaml"
        sfu = host.sfu_ip if host else "127.0.0.1"
        config = {
            "api_key": server.api_key, "api_secret": server.api_secret, "ws_url": f"ws://{sfu}:{server.port}",
            "redis": {"address": f"{sfu}:{redis.port}"}, "local_dir": str(self.local_dir),
            "data_dir": str(workdir / "data"), "track_wait_timeout": "5s", "logging": {"level": "debug"},
            "processes": 1,  # one psrpc server (and the process measured), unless set
        } | settings
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = LogFile("trackegress-worker-")
        self.log_path = self._log.path

    def start(self, timeout: float = 20.0, grace: float = 2.0) -> Worker:
        offset = self.log_path.stat().st_size
        cmd = [sys.executable, "-m", "trackegress.cli", "worker", "--config", str(self.config),
               "--shutdown-grace", str(grace)]
        self.proc = subprocess.Popen(self.host.command(cmd) if self.host else cmd, stdout=subprocess.DEVNULL,
                                     stderr=self._log.file)
        wait_ready(self.proc, lambda: "serving (cluster_id" in self.log_text()[offset:], timeout, "trackegress worker",
                   lambda: self.log_text()[-3000:])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self._log.text()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        stop_process(self.proc, timeout)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc is not None:
            self.terminate()
        self._log.close()
