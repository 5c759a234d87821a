"""Real storage servers on free loopback ports for end-to-end tests: MinIO (S3), fake-gcs-server (GCS), Azurite.

Each keeps its data in a directory, so ``stop()`` then ``start()`` (same port) is an outage that loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

from aiohttp import web

from support.process import LogFile, http_ok, stop_process, wait_ready
from support.server import REPO, free_port

BIN = REPO / ".bin"
MINIO = BIN / "minio"
FAKE_GCS = BIN / "fake-gcs-server"
AZURITE = BIN / "node" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented by Microsoft)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class StorageServer:
    """A server process bound to 127.0.0.1:``port`` with its data under ``data_dir``; restartable."""

    name = "server"

    def __init__(self, data_dir: Path, startup_timeout: float = 30.0) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = LogFile(f"{self.name}-")

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        """Whether the server answers (a TCP connect by default)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers."""
        assert self._proc is None, "already running"
        self._proc = subprocess.Popen(self.command(), stdout=self._log.file, stderr=subprocess.STDOUT,
                                      env=self.env(), cwd=self.data_dir)
        try:
            wait_ready(self._proc, self.ready, self._timeout, self.name, self.log_tail)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the server (kill it if it lingers); its data stays."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, 10)

    def close(self) -> None:
        self.stop()
        self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        return self._log.tail(lines)


class MinIO(StorageServer):
    """MinIO in single-drive mode; ``access_key`` / ``secret`` are its root credentials."""

    name = "minio"
    access_key = "trackegress"
    secret = "trackegress-minio-secret"

    def command(self) -> list[str]:
        return [str(MINIO), "server", str(self.data_dir / "data"), "--quiet", "--address", f"127.0.0.1:{self.port}",
                "--console-address", f"127.0.0.1:{free_port()}", "--certs-dir", str(self.data_dir / "certs")]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "AWS_"))}
        return env | {"MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret,
                      "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "HOME": str(self.data_dir)}

    def ready(self) -> bool:
        return http_ok(f"{self.url}/minio/health/ready")


class FakeGCS(StorageServer):
    """fake-gcs-server over plain HTTP with its filesystem backend."""

    name = "fake-gcs-server"

    def command(self) -> list[str]:
        return [str(FAKE_GCS), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                "-backend", "filesystem", "-filesystem-root", str(self.data_dir / "data"),
                "-public-host", f"127.0.0.1:{self.port}", "-external-url", self.url, "-log-level", "error"]

    def ready(self) -> bool:
        return http_ok(f"{self.url}/_internal/healthcheck")

    def create_bucket(self, name: str) -> None:
        body = json.dumps({"name": name}).encode()
        request = urllib.request.Request(f"{self.url}/storage/v1/b", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).close()

    def metadata(self, bucket: str, key: str) -> dict[str, object]:
        name = urllib.request.quote(key, safe="")
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{name}", timeout=5) as response:
            result: dict[str, object] = json.load(response)
            return result

    def download(self, bucket: str, key: str) -> bytes:
        name = urllib.request.quote(key, safe="")
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{name}?alt=media", timeout=5) as response:
            return bytes(response.read())


class Azurite(StorageServer):
    """Azurite's blob service, persisting to ``data_dir``, any API version accepted."""

    name = "azurite"

    def command(self) -> list[str]:
        return [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
                str(self.data_dir), "--skipApiVersionCheck", "--silent", "--disableTelemetry"]


class TokenServer:
    """A local OAuth2 token endpoint (``/token``) for service-account credentials; counts the grants, refuses them
    all while ``refuse`` is set (a revoked key)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/token"
        self.grants = 0
        self.refuse = False
        app = web.Application()
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app)

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        jwt_bearer = form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer" and form.get("assertion")
        if self.refuse or not jwt_bearer:
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.grants += 1
        return web.json_response({"access_token": f"test-token-{self.grants}", "expires_in": 3600,
                                  "token_type": "Bearer"})


class SlowProxy:
    """A TCP relay on a free loopback port to ``target_port`` that sends uploads at ``rate`` bytes/s, so a test can
    stop the server while a body is on the wire. ``uploaded`` counts the bytes relayed to the server."""

    def __init__(self, target_port: int, rate: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.uploaded = 0
        self._target = target_port
        self._rate = rate
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.close()
            return
        tasks = [asyncio.create_task(self._pipe(reader, up_writer, upload=True)),
                 asyncio.create_task(self._pipe(up_reader, writer, upload=False))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for stream in (writer, up_writer):
            stream.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upload: bool) -> None:
        chunk = max(1024, self._rate // 50) if upload else 1 << 16
        with contextlib.suppress(OSError):
            while data := await reader.read(chunk):
                writer.write(data)
                await writer.drain()
                if upload:
                    self.uploaded += len(data)
                    await asyncio.sleep(len(data) / self._rate)


def service_account(token_uri: str, folder: Path) -> str:
    """A service-account key document (fresh RSA key, made with openssl) whose token endpoint is ``token_uri``."""
    key = folder / "service-account.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
                   check=True, capture_output=True)
    return json.dumps({
        "type": "service_account", "project_id": "trackegress-test", "private_key_id": "test-key-1",
        "private_key": key.read_text(), "client_email": "recorder@trackegress-test.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": token_uri,
    })
