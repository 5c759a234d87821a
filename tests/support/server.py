"""A real livekit-server (dev mode) on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from livekit import api
from livekit.protocol import room as room_pb

from .process import LogFile, http_ok, stop_process, wait_ready

REPO = Path(__file__).resolve().parents[2]
BINARY = REPO / ".bin" / "livekit-server"
DEV_KEY = "devkey"
DEV_SECRET = "secret"

RoomFactory = Callable[[], Awaitable[str]]
_PORTS_FROM, _PORT_BLOCK, _PORT_BLOCKS = 12000, 1000, 20  # 12000-31999
_port_turn = itertools.count(random.randrange(_PORT_BLOCK))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 right now (TCP or UDP), for a server a test starts.

    Taken below the ephemeral range (32768+), where no outgoing connection can take it before the server binds it,
    from a block of its own per pytest-xdist worker (``PYTEST_XDIST_WORKER=gw<N>``), in turn from a random start.
    """
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    base = _PORTS_FROM + (worker % _PORT_BLOCKS) * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = base + next(_port_turn) % _PORT_BLOCK
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {base}-{base + _PORT_BLOCK - 1}")


def config_body(
    tcp_port: int, redis_address: str = "", webhook_urls: Sequence[str] = (), ice_lite: bool = False,
    ip: str = "127.0.0.1",
) -> str:
    """The YAML handed to ``--config-body``: loopback-only ICE candidates (pion drops loopback unless
    ``enable_loopback_candidate``), no TURN, and remote unmute so tests can mute and unmute tracks.
    ``redis_address`` (host:port) switches on Redis (and so psrpc egress); ``webhook_urls`` get signed webhooks;
    ``ice_lite``: the server only answers connectivity checks (what puts ``impair.UdpRelay`` in the path);
    ``ip``: the one address whose interface carries media (another host's link, see ``netns.Host``)."""
    extra = f"redis:\n  address: {redis_address}\n" if redis_address else ""
    if webhook_urls:
        extra += f"webhook:\n  api_key: {DEV_KEY}\n  urls: [{', '.join(webhook_urls)}]\n"
    lite = "  use_ice_lite: true\n" if ice_lite else ""
    return extra + (
        "rtc:\n"
        f"  tcp_port: {tcp_port}\n"
        "  use_external_ip: false\n"
        + ("  enable_loopback_candidate: true\n" if ip == "127.0.0.1" else "") +
        f"{lite}"
        "  ips:\n"
        f"    includes: [{ip}/32]\n"
        "turn:\n"
        "  enabled: false\n"
        "room:\n"
        "  enable_remote_unmute: true\n"
    )


class LiveKitServer:
    """``livekit-server --dev`` bound to 127.0.0.1; use as a context manager or call ``stop()``."""

    def __init__(
        self, binary: Path = BINARY, startup_timeout: float = 20.0, *, redis_address: str = "",
        webhook_urls: Sequence[str] = (), relay_ip: str = "", host_ip: str = "", media_ip: str = "",
    ) -> None:
        self.binary = binary
        self.redis_address = redis_address
        self.webhook_urls = tuple(webhook_urls)
        self.relay_ip = relay_ip  # advertised instead of 127.0.0.1, with ICE lite: see impair.UdpRelay
        self.host_ip = host_ip  # also bound, and its link the only one for media: the SFU host of netns.Host
        self.media_ip = media_ip or host_ip  # the media sockets' address, when not the advertised one (1:1 NAT)
        self.port = free_port()
        self.tcp_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.api_key = DEV_KEY
        self.api_secret = DEV_SECRET
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.port}"
        self._log = LogFile("livekit-server-")
        self.log_path = self._log.path
        self._startup_timeout = startup_timeout
        self.restart()

    def restart(self) -> None:
        """Start the server (again, after ``kill()``: same ports, same Redis)."""
        self._proc = subprocess.Popen(self.command(), stdout=self._log.file, stderr=subprocess.STDOUT, env=_env())
        try:
            wait_ready(self._proc, lambda: http_ok(self.http_url), self._startup_timeout,
                       f"livekit-server on {self.http_url}", self.log_tail)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL, as a host that dies: no participant is told, no connection closed cleanly."""
        self._proc.kill()
        self._proc.wait()

    def command(self) -> list[str]:
        """The command line that starts the server."""
        return [
            str(self.binary),
            "--dev",
            "--bind", "127.0.0.1",
            *(["--bind", self.host_ip] if self.host_ip else []),
            "--node-ip", self.relay_ip or self.host_ip or "127.0.0.1",
            "--port", str(self.port),
            "--udp-port", str(self.udp_port),
            "--config-body", config_body(self.tcp_port, self.redis_address, self.webhook_urls, bool(self.relay_ip),
                                         self.media_ip or "127.0.0.1"),
        ]  # fmt: skip

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's combined stdout/stderr."""
        return self._log.tail(lines)

    def stop(self) -> None:
        """Terminate the server (kill it if it lingers) and remove its log."""
        stop_process(self._proc, 10)
        self._log.close()

    def __enter__(self) -> LiveKitServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()



def _env() -> dict[str, str]:
    """Our environment minus variables the server would read as configuration."""
    ignored = {"LIVEKIT_CONFIG", "LIVEKIT_KEYS", "NODE_IP", "UDP_PORT", "REDIS_HOST", "REDIS_PASSWORD"}
    return {k: v for k, v in os.environ.items() if k not in ignored}


async def create_room(client: api.LiveKitAPI, prefix: str = "e2e", egress: room_pb.RoomEgress | None = None) -> str:
    """Create a room with a unique name (recording its tracks as ``egress`` says, if given) and return the name."""
    request = api.CreateRoomRequest(name=f"{prefix}-{uuid.uuid4().hex[:10]}")
    if egress is not None:
        request.egress.CopyFrom(egress)
    room = await client.room.create_room(request)
    return str(room.name)


@contextlib.asynccontextmanager
async def temporary_room(
    server: LiveKitServer, prefix: str = "e2e", egress: room_pb.RoomEgress | None = None
) -> AsyncIterator[tuple[api.LiveKitAPI, str]]:
    """An API client and a fresh room (``create_room``), deleted afterwards."""
    client = api.LiveKitAPI(server.http_url, server.api_key, server.api_secret)
    name = await create_room(client, prefix, egress)
    try:
        yield client, name
    finally:
        with contextlib.suppress(api.TwirpError):
            await client.room.delete_room(api.DeleteRoomRequest(room=name))
        await client.aclose()
