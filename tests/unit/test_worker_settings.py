"""``trackegress worker``'s egress.yaml keys: redis, cluster_id, cpu_cost (upstream's defaults and rules)."""

from __future__ import annotations

import os

import pytest

from trackegress.cluster.settings import load_worker_config
from trackegress.config import ConfigError
from trackegress.cpuload import DEFAULT_COSTS

BASE = "api_key: k\napi_secret: s\nws_url: ws://127.0.0.1:7880\n"


def load(body: str) -> object:
    return load_worker_config(env={"EGRESS_CONFIG_BODY": BASE + body})


def test_redis_cluster_id_and_cpu_cost() -> None:
    config = load_worker_config(env={"EGRESS_CONFIG_BODY": BASE + (
        "redis: {address: '10.0.0.5:6380', password: pw, db: 2, use_tls: true}\n"
        "cluster_id: eu\ncpu_cost: {track_cpu_cost: 1.5, max_cpu_utilization: 0.5}\n"
    )})
    assert (config.redis.host, config.redis.port, config.redis.password, config.redis.db) == ("10.0.0.5", 6380, "pw", 2)
    assert config.redis.use_tls and config.cluster_id == "eu"
    admission = config.service.admission
    assert (admission.audio_file, admission.video_file, admission.websocket) == (1.5, 1.5, 1.5)
    assert admission.budget == pytest.approx((os.cpu_count() or 1) * 0.5)  # upstream's: one process, every CPU


def test_upstream_defaults_for_missing_zero_or_out_of_range_costs() -> None:
    config = load_worker_config(env={"EGRESS_CONFIG_BODY": BASE + (
        "redis: {address: 'localhost:6379'}\ncpu_cost: {track_cpu_cost: 0, max_cpu_utilization: 1.5}\n"
    )})
    admission = config.service.admission  # no price set: ours, per kind, on one core per process
    assert (admission.audio_file, admission.budget, config.cluster_id) == (DEFAULT_COSTS["audio_file"], 0.8, "")


@pytest.mark.parametrize("body", [
    "", "redis: {address: nohost}\n", "redis: {address: 'h:1', cluster_addresses: [a]}\n",
    "redis: {address: 'h:1'}\ncpu_cost: {track_cpu_cost: lots}\n", "redis: {address: 'h:1'}\ncluster_id: 3\n",
])
def test_invalid_worker_settings(body: str) -> None:
    with pytest.raises(ConfigError):
        load(body)
