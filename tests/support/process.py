"""What the tests' subprocess wrappers share: a log file, waiting until the process answers, stopping it, and the
health / metrics endpoints of ``trackegress serve`` and ``trackegress worker``."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


class LogFile:
    """A temporary file for a subprocess's output; ``close()`` removes it."""

    def __init__(self, prefix: str) -> None:
        self.file: IO[bytes] = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".log", delete=False)
        self.path = Path(self.file.name)

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def tail(self, lines: int) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def wait_ready(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, what: str,
    log: Callable[[], str] = lambda: "", interval: float = 0.1,
) -> None:
    """Poll ``ready()`` until it is true; RuntimeError (with ``log()``) if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(_with_log(f"{what} exited with {proc.returncode}", log))
        if ready():
            return
        time.sleep(interval)
    raise RuntimeError(_with_log(f"{what} did not answer within {timeout:.0f}s", log))


def _with_log(message: str, log: Callable[[], str]) -> str:
    text = log()
    return f"{message}:\n{text}" if text else message


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class OpsEndpoints:
    """``health_port`` and ``prometheus_port`` of a ``trackegress serve`` or ``worker`` process."""

    health_port: int
    prometheus_port: int

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/", timeout=2) as response:
            return dict(json.load(response))

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.prometheus_port}/metrics", timeout=2) as response:
            return str(response.read().decode())

    def answers(self) -> bool:
        """Whether the health endpoint answers yet."""
        try:
            self.health()
        except OSError:
            return False
        return True
