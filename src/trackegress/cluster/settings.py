"""Cluster settings: egress.yaml's ``redis`` and ``cluster_id`` (worker and serve) and ``cpu_cost`` (worker)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from trackegress.config import ConfigError, ServiceConfig, load_service_config

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
        backoff: when Redis is down our callers see it at once, log it and retry on their own schedule.
        """
        return Redis(host=self.host, port=self.port, db=self.db, ssl=self.use_tls,
                     username=self.username or None, password=self.password or None, retry=Retry(NoBackoff(), 1))


@dataclass(frozen=True)
class ClusterSettings:
    """``trackegress serve`` with ``redis:``: dispatch to the workers of ``cluster_id`` on that Redis."""

    redis: RedisSettings
    cluster_id: str = ""


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
    """Read egress.yaml from ``path``, ``EGRESS_CONFIG_FILE`` or ``EGRESS_CONFIG_BODY``; raises ``ConfigError``."""
    env = os.environ if env is None else env
    service = load_service_config(path, env)
    raw = _read(path, env)
    cpu = _mapping(raw, "cpu_cost")
    return WorkerConfig(
        service=service,
        redis=_redis(_mapping(raw, "redis")),
        cluster_id=_cluster_id(raw),
        track_cpu_cost=_positive(cpu, "track_cpu_cost", DEFAULT_TRACK_CPU_COST),
        max_cpu_utilization=_utilization(cpu),
        cpu_count=os.cpu_count() or 1,
    )


def load_cluster_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> ClusterSettings | None:
    """``redis`` and ``cluster_id`` for ``trackegress serve``; None without ``redis:`` (in-process egresses).

    Call after ``load_service_config`` has accepted the same input. Raises ``ConfigError``.
    """
    raw = _read(path, os.environ if env is None else env)
    redis = _mapping(raw, "redis")
    return ClusterSettings(_redis(redis), _cluster_id(raw)) if redis else None


def _cluster_id(raw: Mapping[str, Any]) -> str:
    cluster_id = raw.get("cluster_id") or ""
    if not isinstance(cluster_id, str):
        raise ConfigError(f"cluster_id: expected a string, got {cluster_id!r}")
    return cluster_id


def _read(path: Path | None, env: Mapping[str, str]) -> dict[str, Any]:
    """The YAML mapping (``load_service_config`` has already reported unreadable or invalid input)."""
    path = path or (Path(env["EGRESS_CONFIG_FILE"]) if env.get("EGRESS_CONFIG_FILE") else None)
    body = path.read_text() if path is not None else env.get("EGRESS_CONFIG_BODY", "")
    raw = yaml.safe_load(body) if body.strip() else {}
    return raw if isinstance(raw, dict) else {}


def _mapping(section: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = section.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _redis(section: Mapping[str, Any]) -> RedisSettings:
    address = section.get("address")
    if not isinstance(address, str) or not address:
        raise ConfigError("redis.address is required (host:port) for trackegress worker")
    if section.get("sentinel_master_name") or section.get("cluster_addresses"):
        raise ConfigError("redis: sentinel and cluster modes are not supported; use redis.address")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"redis.address: expected host:port, got {address!r}")
    db = section.get("db") or 0
    if not isinstance(db, int) or isinstance(db, bool) or db < 0:
        raise ConfigError(f"redis.db: expected a non-negative integer, got {db!r}")
    return RedisSettings(
        host=host.strip("[]"), port=int(port), username=str(section.get("username") or ""),
        password=str(section.get("password") or ""), db=db, use_tls=bool(section.get("use_tls")),
    )


def _positive(section: Mapping[str, Any], key: str, default: float) -> float:
    value = section.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"cpu_cost.{key}: expected a number, got {value!r}")
    return float(value) if value > 0 else default  # upstream: zero or negative means the default


def _utilization(section: Mapping[str, Any]) -> float:
    value = _positive(section, "max_cpu_utilization", DEFAULT_MAX_CPU_UTILIZATION)
    return value if value <= 1 else DEFAULT_MAX_CPU_UTILIZATION  # upstream's rule for out-of-range values
