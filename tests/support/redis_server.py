"""A real redis-server (Debian's) on a free loopback port, no persistence, for end-to-end tests."""

from __future__ import annotations

import shutil
import socket
import subprocess

from .process import stop_process, wait_ready
from .server import free_port


class RedisServer:
    """``redis-server`` on 127.0.0.1; use as a context manager or call ``stop()``.

    ``kill()`` and ``start()`` simulate a crash and a restart on the same port; without persistence the restarted
    server starts empty (every key, lock and subscription of the old one is gone).
    """

    def __init__(self, startup_timeout: float = 10.0, also_bind: str = "") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (run scripts/install-test.sh)")
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._binds = ["127.0.0.1", *([also_bind] if also_bind else [])]  # another address: protected mode off
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start the server on ``self.port`` (after ``kill()``: a fresh, empty one)."""
        assert self._proc is None or self._proc.poll() is not None, "redis-server is already running"
        self._proc = subprocess.Popen(
            [self._binary, "--bind", *self._binds, "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--protected-mode", "no" if len(self._binds) > 1 else "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(self._proc, self._pong, self._startup_timeout, f"redis-server on {self.address}",
                       interval=0.05)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL, as a crash: clients see their connections reset, nothing is saved."""
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait()

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, 5)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
