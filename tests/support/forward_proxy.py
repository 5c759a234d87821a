"""A real HTTP forward proxy for the upload tests: tinyproxy (Debian's ``tinyproxy-bin``) on a free loopback port.

``scripts/install-test.sh`` installs it. With ``username`` / ``password`` the proxy demands basic auth (``407`` without
it). Every request it forwards is logged as ``Request (file descriptor N): PUT http://host:port/path HTTP/1.1``;
``requests()`` returns those lines, so a test can prove its uploads went through the proxy.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from support.storage_servers import StorageServer

TINYPROXY = Path(shutil.which("tinyproxy") or "/usr/bin/tinyproxy")
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (.+)$")


class TinyProxy(StorageServer):
    """tinyproxy in the foreground, loopback only, logging each request (``LogLevel Info``) to ``data_dir``."""

    name = "tinyproxy"

    def __init__(self, data_dir: Path, username: str = "", password: str = "") -> None:
        super().__init__(data_dir, startup_timeout=10)
        self.username = username
        self.password = password
        self.log_path = data_dir / "tinyproxy.log"
        self.config_path = data_dir / "tinyproxy.conf"

    def command(self) -> list[str]:
        lines = [
            f"Port {self.port}", "Listen 127.0.0.1", "Allow 127.0.0.1", "Timeout 60", "MaxClients 64",
            f'LogFile "{self.log_path}"', "LogLevel Info", "DisableViaHeader Yes",
        ]
        if self.username:
            lines.append(f"BasicAuth {self.username} {self.password}")
        self.config_path.write_text("\n".join(lines) + "\n")
        return [str(TINYPROXY), "-d", "-c", str(self.config_path)]

    def requests(self) -> list[str]:
        """The request lines the proxy received (``METHOD absolute-URL HTTP/1.1``), oldest first."""
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        return [m.group(1).strip() for line in text.splitlines() if (m := _REQUEST.search(line))]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
