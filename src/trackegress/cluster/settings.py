"""Cluster settings: egress.yaml's ``redis`` and ``cluster_id`` (worker and serve)."""

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
class WorkerConfig:
    """Everything ``trackegress worker`` needs (its CPU admission is ``service.admission``)."""

    service: ServiceConfig
    redis: RedisSettings
    cluster_id: str = ""


def load_worker_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> WorkerConfig:
    """egress.yaml, read once from ``path``, ``EGRESS_CONFIG_FILE`` or ``EGRESS_CONFIG_BODY``; ``ConfigError``."""
    env = os.environ if env is None else env
    raw = read_config(path, env)
    service = load_service_config(env=env, raw=raw)
    return WorkerConfig(
        service=service,
        redis=_redis(raw.section("redis")),
        cluster_id=raw.text("cluster_id"),
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

