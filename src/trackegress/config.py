"""Service settings: one typed object, validated once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from trackegress.configfile import Section, parse_duration, read_config
from trackegress.cpuload import DEFAULT_ADMISSION, CpuAdmission
from trackegress.errors import INVALID_ARGUMENT, ConfigError
from trackegress.request import check_webhook_url
from trackegress.room.transport import MEDIA_PROTOCOLS
from trackegress.sinks.layers import TOP_LAYER_WAIT
from trackegress.sinks.pcm import SAMPLE_RATES
from trackegress.sinks.wsauth import parse_headers
from trackegress.storage.settings import StorageSettings

__all__ = ["Config", "ConfigError", "ServiceConfig", "SessionLimits", "load_service_config", "parse_duration"]
DEFAULT_DATA_DIR = Path("data")  # serve's store, relative to the working directory (git-ignored)

@dataclass(frozen=True)
class Config:
    """What an egress needs from its environment."""

    ws_url: str
    api_key: str
    api_secret: str
    local_dir: Path = Path("recordings")
    track_wait_timeout: float = 30.0
    signal_resume_timeout: float = 30.0  # how long a dropped signal connection is retried before the egress fails
    top_layer_wait: float = TOP_LAYER_WAIT  # seconds of media a simulcast/SVC recording waits for its top layer
    websocket_sample_rate: int = 48_000
    websocket_channels: int = 2
    websocket_headers: tuple[tuple[str, str], ...] = ()  # ``websocket.headers``: sent on every dial, never logged
    media_protocols: tuple[str, ...] = MEDIA_PROTOCOLS  # ICE candidates we gather: UDP host, active TCP (RFC 6544)
    storage: StorageSettings | None = None  # uploads (storage: / backup:); None keeps files in local_dir

    def __post_init__(self) -> None:
        missing = [name for name in ("ws_url", "api_key", "api_secret") if not getattr(self, name)]
        if missing:
            raise ConfigError(INVALID_ARGUMENT, f"missing setting(s): {', '.join(missing)} (or env LIVEKIT_URL, "
                              "LIVEKIT_API_KEY, LIVEKIT_API_SECRET)")
        if self.track_wait_timeout <= 0:
            raise ConfigError(INVALID_ARGUMENT, "track_wait_timeout must be positive")
        if self.signal_resume_timeout <= 0:
            raise ConfigError(INVALID_ARGUMENT, "signal_resume_timeout must be positive")
        if self.top_layer_wait < 0:
            raise ConfigError(INVALID_ARGUMENT, "top_layer_wait must not be negative")
        if self.websocket_sample_rate not in SAMPLE_RATES:
            rates = ", ".join(map(str, SAMPLE_RATES))
            raise ConfigError(INVALID_ARGUMENT, f"websocket.sample_rate must be one of {rates}")
        if self.websocket_channels not in (1, 2):
            raise ConfigError(INVALID_ARGUMENT, "websocket.channels must be 1 or 2")
        if not self.media_protocols or not set(self.media_protocols) <= set(MEDIA_PROTOCOLS):
            raise ConfigError(INVALID_ARGUMENT, "media_protocols must list udp, tcp or both, got "
                              f"{list(self.media_protocols)!r}")

    @property
    def log_secrets(self) -> tuple[str, ...]:
        """What no log line may show: the API secret and the configured WebSocket header values (those of 8
        characters or more: replacing a short value such as ``1`` everywhere would garble every line; header lines
        are not logged at all, ``sinks/wslink.py``)."""
        return (self.api_secret, *(value for _, value in self.websocket_headers if len(value) >= 8))

    @classmethod
    def from_env(cls, **overrides: object) -> Config:
        """Settings from ``LIVEKIT_URL`` (or ``LIVEKIT_WS_URL``), key and secret; ``overrides`` win if not None."""
        values: dict[str, object] = {
            "ws_url": os.environ.get("LIVEKIT_URL") or os.environ.get("LIVEKIT_WS_URL", ""),
            "api_key": os.environ.get("LIVEKIT_API_KEY", ""),
            "api_secret": os.environ.get("LIVEKIT_API_SECRET", ""),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


# The service's settings: upstream egress.yaml, plus a few keys of our own.

IDLE_TIMEOUT = 20.0  # ``idle_timeout`` default, on every port served (API, health, metrics)

# Upstream egress.yaml keys that trackegress reads nothing from (accepted quietly, logged at debug level).
_UPSTREAM_UNUSED = frozenset({
    "debug_handler_port", "template_port", "template_base", "insecure",
    "enable_chrome_sandbox", "disallow_local_storage", "io_create_timeout", "io_update_timeout", "io_workers",
    "max_upload_queue", "s3_assume_role_key", "s3_assume_role_secret", "s3_assume_role_arn",
    "s3_assume_role_external_id", "latency", "latency_overrides", "debug", "enable_sync_engine",
    "enable_one_shot_sender_report_sync", "audio_tempo_controller", "video_encoder_threads", "node_id", "location",
})
_TOP_KEYS = frozenset({
    "api_key", "api_secret", "ws_url", "health_port", "prometheus_port", "logging", "session_limits", "storage",
    "webhook", "api_port", "bind", "data_dir", "local_dir", "track_wait_timeout", "signal_resume_timeout", "backup",
    "top_layer_wait", "idle_timeout", "media_protocols",
    "websocket", "processes", "cpu_cost", "redis", "cluster_id",  # the last two read by cluster/settings.py
})


@dataclass(frozen=True)
class SessionLimits:
    """``session_limits``: 0 means no limit. Durations in seconds, size in bytes."""

    file_output_max_duration: float = 0.0
    file_output_max_size: int = 0
    stream_output_max_duration: float = 0.0


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``trackegress serve`` needs; ``egress`` is what each egress gets."""

    egress: Config
    api_port: int = 7990
    bind: str = "127.0.0.1"
    data_dir: Path = DEFAULT_DATA_DIR
    health_port: int = 0
    prometheus_port: int = 0
    log_level: str = "info"
    log_json: bool = False
    session_limits: SessionLimits = SessionLimits()
    webhook_urls: tuple[str, ...] = ()
    idle_timeout: float = IDLE_TIMEOUT  # seconds a served connection may stay without a complete request
    processes: int = 1  # egress processes on this node (``processes``; absent: one per core, one with track_cpu_cost)
    admission: CpuAdmission = DEFAULT_ADMISSION  # ``cpu_cost``, for one of those processes


def load_service_config(
    path: Path | None = None, env: Mapping[str, str] | None = None, *, raw: Section | None = None, **overrides: Any
) -> ServiceConfig:
    """The service settings from ``raw`` (egress.yaml already read), else read from ``path``, ``EGRESS_CONFIG_FILE``
    or ``EGRESS_CONFIG_BODY`` (in that order).

    Environment ``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET`` / ``LIVEKIT_WS_URL`` (or ``LIVEKIT_URL``) fill
    settings the file leaves empty; ``overrides`` that are not None win over both. Raises ``ConfigError``.
    """
    env = os.environ if env is None else env
    raw = read_config(path, env) if raw is None else raw
    raw.warn_unknown(_TOP_KEYS, _UPSTREAM_UNUSED)
    limits = raw.section("session_limits")
    limits.warn_unknown(frozenset(f.name for f in fields(SessionLimits)))
    logging_ = raw.section("logging")
    logging_.warn_unknown(frozenset({"level", "json"}))
    webhook = raw.section("webhook")
    webhook.warn_unknown(frozenset({"api_key", "urls"}))
    websocket = raw.section("websocket")
    websocket.warn_unknown(frozenset({"sample_rate", "channels", "headers"}))
    egress_values: dict[str, Any] = {
        "ws_url": raw.text("ws_url") or env.get("LIVEKIT_WS_URL") or env.get("LIVEKIT_URL", ""),
        "api_key": raw.text("api_key") or env.get("LIVEKIT_API_KEY", ""),
        "api_secret": raw.text("api_secret") or env.get("LIVEKIT_API_SECRET", ""),
        "websocket_sample_rate": websocket.integer("sample_rate", 48_000),
        "websocket_channels": websocket.integer("channels", 2),
        "websocket_headers": parse_headers(websocket.section("headers").values, websocket.name("headers")),
    }
    if "local_dir" in raw:
        egress_values["local_dir"] = Path(raw.text("local_dir"))
    for key in ("track_wait_timeout", "signal_resume_timeout", "top_layer_wait"):
        if key in raw:
            egress_values[key] = raw.duration(key)
    if "media_protocols" in raw:
        egress_values["media_protocols"] = _media_protocols(raw.values["media_protocols"])
    if raw.values.get("storage") or raw.values.get("backup"):
        egress_values["storage"] = _storage(raw)
    values: dict[str, Any] = {
        "api_port": raw.port("api_port", 7990),
        "bind": raw.text("bind") or "127.0.0.1",
        "data_dir": Path(raw.text("data_dir") or DEFAULT_DATA_DIR),
        "health_port": raw.port("health_port"),
        "prometheus_port": raw.port("prometheus_port"),
        "log_level": _log_level(logging_),
        "log_json": logging_.flag("json"),
        "session_limits": SessionLimits(
            file_output_max_duration=limits.duration("file_output_max_duration"),
            file_output_max_size=limits.integer("file_output_max_size"),
            stream_output_max_duration=limits.duration("stream_output_max_duration"),
        ),
        "webhook_urls": _webhook_urls(webhook, egress_values["api_key"]),
        "idle_timeout": raw.duration("idle_timeout") or IDLE_TIMEOUT,
    }
    cpus = os.cpu_count() or 1
    values["processes"] = raw.integer("processes") or (1 if CpuAdmission.priced(raw) else cpus)
    values["admission"] = CpuAdmission.from_config(raw, cpus, values["processes"])
    for key, value in overrides.items():
        if value is None:
            continue
        if key in values:
            values[key] = value
        else:
            egress_values[key] = value
    return ServiceConfig(egress=Config(**egress_values), **values)


def _log_level(section: Section) -> str:
    level = section.text("level").lower() or "info"
    if level not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError(INVALID_ARGUMENT, f"logging.level: expected debug, info, warn or error, got {level!r}")
    return "warning" if level == "warn" else level


def _media_protocols(value: object) -> tuple[str, ...]:
    """``media_protocols``: a list (or one name) of udp / tcp, in any case."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(INVALID_ARGUMENT, f"media_protocols: expected a list of udp / tcp, got {value!r}")
    return tuple(dict.fromkeys(n.lower() for n in names))


def _storage(raw: Section) -> StorageSettings:
    """The ``storage:`` / ``backup:`` blocks, parsed by the storage module."""
    try:
        return StorageSettings.from_config(raw.section("storage").values, raw.section("backup").values)
    except ConfigError as exc:
        raise ConfigError(exc.code, f"storage: {exc.message}") from None


def _webhook_urls(section: Section, api_key: str) -> tuple[str, ...]:
    key = section.text("api_key")
    if key and key != api_key:
        raise ConfigError(INVALID_ARGUMENT,
                          "webhook.api_key: webhooks are signed with api_key; no other key is configured")
    urls = section.values.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
        raise ConfigError(INVALID_ARGUMENT, f"webhook.urls: expected a list of URLs, got {urls!r}")
    for url in urls:
        try:
            check_webhook_url(url)
        except ValueError as exc:
            raise ConfigError(INVALID_ARGUMENT, f"webhook.urls: {exc}") from None
    return tuple(urls)
