"""Cluster settings: egress.yaml's ``redis`` and ``cluster_id`` (worker and serve) and ``cpu_cost`` (worker)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from trackegress.config import ServiceConfig, load_service_config
from trackegress.configfile import Section, read_config
from trackegress.errors import INVALID_ARGUMENT, ConfigError

REDIS_TIMEOUT = 5.0  # seconds: a Redis command or connect on a dead link fails after this
KEEPALIVE = {socket.TCP_KEEPIDLE: 5, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 3}
DEFAULT_TRACK_CPU_COST = 0.5  # upstream's defaults (livekit/egress pkg/config/service.go)
DEFAULT_MAX_CPU_UTILIZATION = 0.8


@dataclass(frozen=True)
class RedisSettings:
    """``redis:`` as in egress.yaml (single node; no sentinel or cluster)."""

    host: str
    port: int
    username: str = ""
    password: str = ""
    db: int = 0
    use_tls: bool = False

    def connect(self) -> Redis:
        """A client for this Redis (connects on first use).

        One immediate retry (a connection Redis closed while it sat in the pool) instead of redis-py's ten with
        backoff: when Redis is down our callers see it at once, log it and retry on their own schedule. Across hosts
        a link can die without a reset: every command and connect gives up after ``REDIS_TIMEOUT`` and TCP
        keepalives find a dead idle connection (the pub/sub one) within ``KEEPALIVE``'s ~11 s.
        """
        return Redis(host=self.host, port=self.port, db=self.db, ssl=self.use_tls,
                     username=self.username or None, password=self.password or None, retry=Retry(NoBackoff(), 1),
                     socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT, socket_keepalive=True,
                     socket_keepalive_options=KEEPALIVE)


@dataclass(frozen=True)
class ClusterSettings:
    """``trackegress serve`` with ``redis:``: dispatch to the workers of ``cluster_id`` on that Redis."""

    redis: RedisSettings
    cluster_id: str = ""


@dataclass(frozen=True)
class CpuAdmission:
    """egress.yaml's ``cpu_cost``: an egress is admitted while its ``track_cpu_cost`` fits in
    ``cpu_count * max_cpu_utilization`` twice over (the worker's claim rule, also applied by ``serve``): next to the
    running egresses reserved at ``track_cpu_cost`` each, and next to the CPU the process measurably uses."""

    track_cpu_cost: float = DEFAULT_TRACK_CPU_COST
    max_cpu_utilization: float = DEFAULT_MAX_CPU_UTILIZATION
    cpu_count: int = 1

    @property
    def budget(self) -> float:
        return self.cpu_count * self.max_cpu_utilization

    def admits(self, running: int, measured: float) -> bool:
        """``measured``: CPUs used (``cpuload.CpuMeter``) plus the reservations of egresses too young to show."""
        return fits(self.budget, running * self.track_cpu_cost, measured, self.track_cpu_cost)


def fits(budget: float, reserved: float, measured: float, cost: float) -> bool:
    """Whether ``cost`` more CPUs fit in ``budget`` next to what is ``reserved`` and next to what is ``measured``.

    With nothing reserved no egress runs: the process's own baseline does not count (upstream admits an idle
    handler on the whole budget too)."""
    used = max(reserved, measured) if reserved > 0 else 0.0
    return used + cost <= budget + 1e-9


def cpu_admission(raw: Section) -> CpuAdmission:
    """``cpu_cost`` of egress.yaml (as ``load_worker_config`` reads it); raises ``ConfigError``."""
    cpu = raw.section("cpu_cost")
    return CpuAdmission(_positive(cpu, "track_cpu_cost", DEFAULT_TRACK_CPU_COST), _utilization(cpu),
                        os.cpu_count() or 1)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``trackegress worker`` needs."""

    service: ServiceConfig
    redis: RedisSettings
    cluster_id: str = ""
    track_cpu_cost: float = DEFAULT_TRACK_CPU_COST
    max_cpu_utilization: float = DEFAULT_MAX_CPU_UTILIZATION
    cpu_count: int = 1

    @property
    def cpu_budget(self) -> float:
        """CPUs this worker may fill with egresses: ``cpu_count * max_cpu_utilization``."""
        return self.cpu_count * self.max_cpu_utilization


def load_worker_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> WorkerConfig:
    """egress.yaml, read once from ``path``, ``EGRESS_CONFIG_FILE`` or ``EGRESS_CONFIG_BODY``; ``ConfigError``."""
    env = os.environ if env is None else env
    raw = read_config(path, env)
    service = load_service_config(env=env, raw=raw)
    cpu = raw.section("cpu_cost")
    return WorkerConfig(
        service=service,
        redis=_redis(raw.section("redis")),
        cluster_id=raw.text("cluster_id"),
        track_cpu_cost=_positive(cpu, "track_cpu_cost", DEFAULT_TRACK_CPU_COST),
        max_cpu_utilization=_utilization(cpu),
        cpu_count=os.cpu_count() or 1,
    )


def cluster_settings(raw: Section) -> ClusterSettings | None:
    """``redis`` and ``cluster_id`` for ``trackegress serve``; None without ``redis:`` (in-process egresses)."""
    redis = raw.section("redis")
    return ClusterSettings(_redis(redis), raw.text("cluster_id")) if redis else None


def _redis(section: Section) -> RedisSettings:
    address = section.text("address")
    if not address:
        raise ConfigError(INVALID_ARGUMENT, "redis.address is required (host:port) for trackegress worker")
    if section.values.get("sentinel_master_name") or section.values.get("cluster_addresses"):
        raise ConfigError(INVALID_ARGUMENT, "redis: sentinel and cluster modes are not supported; use redis.address")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(INVALID_ARGUMENT, f"redis.address: expected host:port, got {address!r}")
    return RedisSettings(
        host=host.strip("[]"), port=int(port), username=str(section.values.get("username") or ""),
        password=str(section.values.get("password") or ""), db=section.integer("db"),
        use_tls=bool(section.values.get("use_tls")),
    )


def _positive(section: Section, key: str, default: float) -> float:
    value = section.number(key)
    return value if value > 0 else default  # upstream: zero or negative means the default


def _utilization(section: Section) -> float:
    value = _positive(section, "max_cpu_utilization", DEFAULT_MAX_CPU_UTILIZATION)
    return value if value <= 1 else DEFAULT_MAX_CPU_UTILIZATION  # upstream's rule for out-of-range values
