"""CPU and memory of a process while a test runs: sampled from /proc (works across network namespaces)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Usage:
    """Samples of one process: ``peak_cpu`` (share of a core over each interval), RSS at start, peak and end."""

    pid: int
    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)

    @property
    def peak_cpu(self) -> float:
        return max(self.cpu, default=0.0)

    @property
    def mean_cpu(self) -> float:
        return sum(self.cpu) / len(self.cpu) if self.cpu else 0.0

    @property
    def rss_growth(self) -> float:
        return max(self.rss, default=0.0) - (self.rss[0] if self.rss else 0.0)


async def sample(usage: Usage, seconds: float, interval: float = 1.0) -> Usage:
    """Sample ``usage.pid`` every ``interval`` seconds for ``seconds``; returns ``usage``."""
    usage.rss.append(rss_mb(usage.pid))
    cpu, wall = cpu_seconds(usage.pid), time.monotonic()
    end = wall + seconds
    while wall < end:
        await asyncio.sleep(interval)
        now_cpu, now = cpu_seconds(usage.pid), time.monotonic()
        usage.cpu.append((now_cpu - cpu) / (now - wall))
        usage.rss.append(rss_mb(usage.pid))
        cpu, wall = now_cpu, now
    return usage
