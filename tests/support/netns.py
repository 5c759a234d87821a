"""Other hosts on this machine: a network namespace per host, a veth pair to the root namespace, nftables faults.

The root namespace is the SFU host (livekit-server and Redis bound to its veth addresses); each ``Host`` is a
namespace with one veth link to it, addresses from 198.18.0.0/15 (RFC 2544, set aside for network tests): the
root side ``198.18.N.1/24``, the host side ``198.18.N.2/24`` with its default route through the root side. The root
namespace owns every root-side address, so a host reaches any of them (``sfu_ip``: the one the SFU is bound to)
without forwarding.

Faults are nftables rules inside the host's namespace (its link only, both ways): ``cut()`` drops everything but
loopback, ``cut_port(p)`` drops TCP to and from port ``p`` of the SFU host (Redis away, media up), ``block_udp()``
drops every UDP packet, ``drop_random(pct)`` drops that share of packets at random (kernel drops: NACKs and
retransmissions are lost too), ``heal()`` removes them. ``kill_all()`` kills every process of the namespace, as a
host that dies. Needs root, ``ip`` and ``nft`` (Debian's ``iproute2`` and ``nftables``).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Sequence

SUBNETS = [f"198.{18 + i // 256}.{i % 256}" for i in range(1, 512)]  # 198.18.1.0/24 .. 198.19.255.0/24
TABLE = "inet trackegress"


def unavailable() -> str:
    """Why hosts cannot be made here ("" when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (scripts/install-test.sh installs nftables)"
    return ""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def _subnets_in_use() -> set[str]:
    lines = _run("ip", "-o", "-4", "addr", "show").stdout.splitlines()
    return {field.rsplit(".", 1)[0] for line in lines for field in line.split() if field.startswith("198.1")}


class Host:
    """A namespace joined to the root namespace (the SFU host) by a veth pair; use as a context manager."""

    def __init__(self, label: str, sfu_ip: str = "") -> None:
        free = sorted(set(SUBNETS) - _subnets_in_use())
        if not free:
            raise RuntimeError("no free 198.18.0.0/15 subnet")
        self.subnet = random.choice(free)
        tag = f"{os.getpid() % 100000}{random.randrange(100):02d}"
        self.name = f"te-{label}-{tag}"
        self.root_link, self.link = f"te{tag}r", f"te{tag}h"
        self.gateway, self.ip = f"{self.subnet}.1", f"{self.subnet}.2"
        self.sfu_ip = sfu_ip or self.gateway  # where this host reaches the SFU host: any root-side address
        self._up()

    def _up(self) -> None:
        _run("ip", "netns", "add", self.name)
        try:
            _run("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", self.link)
            _run("ip", "link", "set", self.link, "netns", self.name)
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.root_link)
            _run("ip", "link", "set", self.root_link, "up")
            for cmd in (("ip", "link", "set", "lo", "up"), ("ip", "addr", "add", f"{self.ip}/24", "dev", self.link),
                        ("ip", "link", "set", self.link, "up"),
                        ("ip", "route", "add", "default", "via", self.gateway)):
                self.run(*cmd)
            self.nft(f"add table {TABLE}",
                     f"add chain {TABLE} input {{ type filter hook input priority 0; policy accept; }}",
                     f"add chain {TABLE} output {{ type filter hook output priority 0; policy accept; }}")
        except BaseException:
            self.close()
            raise

    def command(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside the namespace (``ip netns exec`` execs it: the PID started is the command's)."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return _run(*self.command(cmd))

    def nft(self, *commands: str) -> None:
        """Apply nftables commands in the namespace, all at once."""
        subprocess.run(self.command(["nft", "-f", "-"]), input="\n".join(commands) + "\n", text=True, check=True,
                       capture_output=True)

    def _drop(self, match: str) -> None:
        self.nft(f'add rule {TABLE} input iifname != "lo" {match} drop',
                 f'add rule {TABLE} output oifname != "lo" {match} drop')

    def cut(self) -> None:
        """Drop every packet on the host's link, both ways."""
        self._drop("")

    def cut_port(self, port: int) -> None:
        """Drop TCP to and from ``port`` on the SFU host (e.g. Redis), both ways."""
        self.nft(f'add rule {TABLE} input ip saddr {self.sfu_ip} tcp sport {port} drop',
                 f'add rule {TABLE} output ip daddr {self.sfu_ip} tcp dport {port} drop')

    def block_udp(self) -> None:
        self._drop("meta l4proto udp")

    def drop_random(self, percent: int) -> None:
        """Drop ``percent`` % of the packets each way, at random."""
        self._drop(f"numgen random mod 100 < {percent}")

    def heal(self) -> None:
        """Remove every fault rule."""
        self.nft(f"flush chain {TABLE} input", f"flush chain {TABLE} output")

    def pids(self) -> list[int]:
        out = _run("ip", "netns", "pids", self.name, check=False).stdout
        return [int(pid) for pid in out.split()]

    def kill_all(self) -> None:
        """SIGKILL every process in the namespace, as a host that loses power."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Kill what still runs there, remove the namespace and the link."""
        self.kill_all()
        _run("ip", "link", "del", self.root_link, check=False)
        _run("ip", "netns", "del", self.name, check=False)

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
