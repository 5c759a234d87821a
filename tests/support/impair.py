"""A userspace network impairment relay for UDP on loopback (netem and iptables are not available here).

``Impairment`` is the pure, seeded model of one direction: random or bursty (Gilbert-Elliott) loss,
jitter, reordering, duplication and a bandwidth cap with a bounded queue. ``decide(now, size)`` says when
each copy of a datagram leaves (no copy: dropped). ``UdpRelay`` runs two models (client→server "up",
server→client "down") in a thread of its own, between livekit-server and every ICE client.

How it is put in the path (``LiveKitServer(relay_ip=...)``): livekit-server binds its UDP mux on
127.0.0.1:udp_port only (``rtc.ips.includes``), rewrites its host candidate to ``--node-ip`` 127.0.0.2
(NAT 1:1 rewrite) and runs ICE lite, so it never sends connectivity checks of its own: every client
reaches it through the relay on 127.0.0.2:udp_port, which forwards each client's datagrams from a
socket of that client's own on 127.0.0.1 (the server learns it as a peer-reflexive candidate). Only
clients in the room go through it; signalling (TCP) does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Two-state bursty loss: Good→Bad with ``p``, Bad→Good with ``r`` per packet; loss in each state."""

    p: float
    r: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    @classmethod
    def bursty(cls, mean_loss: float, mean_burst: float) -> GilbertElliott:
        """Mean loss ``mean_loss`` in bursts of ``mean_burst`` packets on average (loss only in Bad)."""
        r = 1.0 / mean_burst
        return cls(p=r * mean_loss / (1.0 - mean_loss), r=r)

    @property
    def mean_loss(self) -> float:
        bad = self.p / (self.p + self.r)
        return bad * self.loss_bad + (1 - bad) * self.loss_good


@dataclass(frozen=True, slots=True)
class Profile:
    """What happens to one direction. Times in seconds, rates in bit/s; 0 switches a feature off.

    ``jitter``: each datagram waits an extra uniform [0, jitter), order kept (a later datagram never
    overtakes); ``reorder``: probability that a datagram is held ``reorder_delay`` longer (and so
    overtaken); ``rate``: a bottleneck of that many bit/s whose queue holds at most ``queue`` seconds.
    """

    loss: float = 0.0
    burst: GilbertElliott | None = None
    delay: float = 0.0
    jitter: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.020
    duplicate: float = 0.0
    rate: float = 0.0
    queue: float = 0.200

    @property
    def clean(self) -> bool:
        return self == Profile()


@dataclass(slots=True)
class Counters:
    """What one direction's model did."""

    packets: int = 0
    lost: int = 0  # random or bursty loss
    overflow: int = 0  # dropped at the bandwidth cap's full queue
    duplicated: int = 0
    reordered: int = 0
    bursts: int = 0  # runs of consecutive losses

    @property
    def dropped(self) -> int:
        return self.lost + self.overflow


@dataclass(slots=True)
class Impairment:
    """The seeded model of one direction (see ``Profile``); not thread-safe, one per direction."""

    profile: Profile = field(default_factory=Profile)
    seed: int = 0
    counters: Counters = field(default_factory=Counters)
    _rng: random.Random = field(init=False)
    _bad: bool = field(default=False, init=False)
    _last_lost: bool = field(default=False, init=False)
    _last_release: float = field(default=0.0, init=False)
    _link_free: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.reseed(self.seed)

    def reseed(self, seed: int) -> None:
        """Start the random draws (and the burst state) afresh from ``seed``."""
        self.seed, self._rng, self._bad, self._last_lost = seed, random.Random(seed), False, False

    def decide(self, now: float, size: int) -> list[float]:
        """When the copies of a ``size``-byte datagram that arrived at ``now`` leave; [] if it is dropped."""
        c = self.counters
        c.packets += 1
        lost = self._lose()
        if lost and not self._last_lost:
            c.bursts += 1
        self._last_lost = lost
        if lost:
            c.lost += 1
            return []
        p = self.profile
        at = now
        if p.rate:
            start = max(now, self._link_free)
            if start - now > p.queue:
                c.overflow += 1
                return []
            self._link_free = at = start + size * 8 / p.rate
        at += p.delay
        if p.jitter:
            at = max(at + self._rng.random() * p.jitter, self._last_release)
        self._last_release = at
        if p.reorder and self._rng.random() < p.reorder:
            c.reordered += 1
            at += p.reorder_delay
        copies = [at]
        if p.duplicate and self._rng.random() < p.duplicate:
            c.duplicated += 1
            copies.append(at + 0.001)
        return copies

    def _lose(self) -> bool:
        p = self.profile
        if p.burst is not None:
            ge = p.burst
            self._bad = self._rng.random() >= ge.r if self._bad else self._rng.random() < ge.p
            return self._rng.random() < (ge.loss_bad if self._bad else ge.loss_good)
        return bool(p.loss) and self._rng.random() < p.loss


class _Scheduler:
    """Sends datagrams at their release times, in time order, from the relay's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, asyncio.DatagramTransport, bytes, Address | None]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None

    def send(self, at: float, transport: asyncio.DatagramTransport, data: bytes, addr: Address | None) -> None:
        if at <= self._loop.time() and not self._heap:
            transport.sendto(data, addr)
            return
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, transport, data, addr))
        if self._heap[0][1] == self._seq:
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(self._heap[0][0], self._run) if self._heap else None

    def _run(self) -> None:
        now = self._loop.time()
        while self._heap and self._heap[0][0] <= now + 0.0005:
            _, _, transport, data, addr = heapq.heappop(self._heap)
            if not transport.is_closing():
                transport.sendto(data, addr)
        self._timer = None
        self._arm()


class _Downstream(asyncio.DatagramProtocol):
    """A client's own socket towards the server: what the server sends goes back to that client."""

    def __init__(self, relay: UdpRelay, client: Address) -> None:
        self._relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []  # from the client while the socket is being set up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        pending, self.pending = self.pending, []
        for data in pending:
            self._relay._from_client(self.client, data)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._relay._from_server(self.client, data)


class _Front(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self._relay = relay

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._relay._from_client(addr, data)


class UdpRelay:
    """Relays UDP between clients (at ``listen``) and ``server``, impairing each direction.

    Runs in a daemon thread with its own event loop, so a busy test loop does not distort the network.
    ``select(client_address)`` decides which clients' flows are impaired (default: all); the others
    pass clean. Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        listen: Address,
        server: Address,
        *,
        down: Profile | None = None,
        up: Profile | None = None,
        seed: int = 0,
        select: Callable[[Address], bool] | None = None,
    ) -> None:
        self.listen = listen
        self.server = server
        self.down = Impairment(down or Profile(), seed)
        self.up = Impairment(up or Profile(), seed + 1)
        self._select = select or (lambda addr: True)
        self._clients: dict[Address, _Downstream] = {}
        self._front: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: _Scheduler | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.forwarded = {"up": 0, "down": 0}

    @property
    def clients(self) -> list[Address]:
        return list(self._clients)

    def start(self) -> UdpRelay:
        self._thread = threading.Thread(target=self._run, name="udp-relay", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    def set_profiles(self, *, down: Profile | None = None, up: Profile | None = None, seed: int | None = None) -> None:
        """Change the impairment while running (applied from the relay's thread); ``seed``: both directions' draws
        start afresh from it (a test whose loss must not depend on what ran before)."""

        def apply() -> None:
            if down is not None:
                self.down.profile = down
            if up is not None:
                self.up.profile = up
            if seed is not None:
                self.down.reseed(seed)
                self.up.reseed(seed + 1)

        assert self._loop is not None
        self._loop.call_soon_threadsafe(apply)

    def __enter__(self) -> UdpRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._scheduler = _Scheduler(loop)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(self.listen)
            self._front = loop.run_until_complete(
                loop.create_datagram_endpoint(lambda: _Front(self), sock=sock)
            )[0]
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for client in self._clients.values():
                if client.transport is not None:
                    client.transport.close()
            self._front.close()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _from_client(self, addr: Address, data: bytes) -> None:
        downstream = self._clients.get(addr)
        if downstream is None:
            downstream = self._clients[addr] = _Downstream(self, addr)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((self.server[0], 0))
            sock.connect(self.server)
            assert self._loop is not None
            self._loop.create_task(self._loop.create_datagram_endpoint(lambda: downstream, sock=sock))
        if downstream.transport is None:
            downstream.pending.append(data)
            return
        self._forward(self.up, addr, downstream.transport, data, None, "up")

    def _from_server(self, client: Address, data: bytes) -> None:
        self._forward(self.down, client, self._front, data, client, "down")

    def _forward(
        self,
        model: Impairment,
        client: Address,
        transport: asyncio.DatagramTransport | None,
        data: bytes,
        addr: Address | None,
        direction: str,
    ) -> None:
        if transport is None:
            return
        assert self._loop is not None and self._scheduler is not None
        if model.profile.clean or not self._select(client):
            transport.sendto(data, addr)
            self.forwarded[direction] += 1
            return
        for at in model.decide(self._loop.time(), len(data)):
            self._scheduler.send(at, transport, data, addr)
            self.forwarded[direction] += 1
