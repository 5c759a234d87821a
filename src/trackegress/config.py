"""Service settings: one typed object, validated once at start-up."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from trackegress.sinks.pcm import SAMPLE_RATES

if TYPE_CHECKING:
    from trackegress.storage.settings import StorageSettings

_log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting is missing or invalid."""


@dataclass(frozen=True)
class Config:
    """What an egress needs from its environment."""

    ws_url: str
    api_key: str
    api_secret: str
    local_dir: Path = Path("recordings")
    track_wait_timeout: float = 30.0
    signal_resume_timeout: float = 30.0  # how long a dropped signal connection is retried before the egress fails
    websocket_sample_rate: int = 48_000
    websocket_channels: int = 2
    storage: StorageSettings | None = None  # uploads (storage: / backup:); None keeps files in local_dir

    def __post_init__(self) -> None:
        missing = [name for name in ("ws_url", "api_key", "api_secret") if not getattr(self, name)]
        if missing:
            raise ConfigError(f"missing setting(s): {', '.join(missing)} (or env LIVEKIT_URL, LIVEKIT_API_KEY, "
                              "LIVEKIT_API_SECRET)")
        if self.track_wait_timeout <= 0:
            raise ConfigError("track_wait_timeout must be positive")
        if self.signal_resume_timeout <= 0:
            raise ConfigError("signal_resume_timeout must be positive")
        if self.websocket_sample_rate not in SAMPLE_RATES:
            raise ConfigError(f"websocket.sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}")
        if self.websocket_channels not in (1, 2):
            raise ConfigError("websocket.channels must be 1 or 2")

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
    "websocket", "redis", "cluster_id", "cpu_cost",  # the last three read by cluster/settings.py
})
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


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
    data_dir: Path = Path("data")
    health_port: int = 0
    prometheus_port: int = 0
    log_level: str = "info"
    log_json: bool = False
    session_limits: SessionLimits = SessionLimits()
    webhook_urls: tuple[str, ...] = ()


def load_service_config(
    path: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> ServiceConfig:
    """Read egress.yaml from ``path``, ``EGRESS_CONFIG_FILE`` or ``EGRESS_CONFIG_BODY`` (in that order).

    Environment ``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET`` / ``LIVEKIT_WS_URL`` (or ``LIVEKIT_URL``) fill
    settings the file leaves empty; ``overrides`` that are not None win over both. Raises ``ConfigError``.
    """
    env = os.environ if env is None else env
    raw = _read_yaml(path, env)
    _warn_unknown(raw, _TOP_KEYS, "")
    limits = _mapping(raw, "session_limits")
    _warn_unknown(limits, frozenset(f.name for f in fields(SessionLimits)), "session_limits.")
    logging_ = _mapping(raw, "logging")
    _warn_unknown(logging_, frozenset({"level", "json"}), "logging.")
    webhook = _mapping(raw, "webhook")
    _warn_unknown(webhook, frozenset({"api_key", "urls"}), "webhook.")
    websocket = _mapping(raw, "websocket")
    _warn_unknown(websocket, frozenset({"sample_rate", "channels"}), "websocket.")
    egress_values: dict[str, Any] = {
        "ws_url": _str(raw, "ws_url") or env.get("LIVEKIT_WS_URL") or env.get("LIVEKIT_URL", ""),
        "api_key": _str(raw, "api_key") or env.get("LIVEKIT_API_KEY", ""),
        "api_secret": _str(raw, "api_secret") or env.get("LIVEKIT_API_SECRET", ""),
    }
    if "local_dir" in raw:
        egress_values["local_dir"] = Path(_str(raw, "local_dir"))
    egress_values["websocket_sample_rate"] = _int(websocket, "sample_rate", 48_000, "websocket.")
    egress_values["websocket_channels"] = _int(websocket, "channels", 2, "websocket.")
    if "track_wait_timeout" in raw:
        egress_values["track_wait_timeout"] = _duration(raw, "track_wait_timeout")
    if "signal_resume_timeout" in raw:
        egress_values["signal_resume_timeout"] = _duration(raw, "signal_resume_timeout")
    if raw.get("storage") or raw.get("backup"):
        egress_values["storage"] = _storage(raw)
    values: dict[str, Any] = {
        "api_port": _port(raw, "api_port", 7990),
        "bind": _str(raw, "bind") or "127.0.0.1",
        "data_dir": Path(_str(raw, "data_dir") or "data"),
        "health_port": _port(raw, "health_port", 0),
        "prometheus_port": _port(raw, "prometheus_port", 0),
        "log_level": _log_level(logging_),
        "log_json": _bool(logging_, "json", "logging."),
        "session_limits": SessionLimits(
            file_output_max_duration=_duration(limits, "file_output_max_duration", "session_limits."),
            file_output_max_size=_int(limits, "file_output_max_size", 0, "session_limits."),
            stream_output_max_duration=_duration(limits, "stream_output_max_duration", "session_limits."),
        ),
        "webhook_urls": _webhook_urls(webhook, egress_values["api_key"]),
    }
    for key, value in overrides.items():
        if value is None:
            continue
        if key in values:
            values[key] = value
        else:
            egress_values[key] = value
    return ServiceConfig(egress=Config(**egress_values), **values)


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string (``"1h30m"``, ``"500ms"``, ``"0"``); ValueError otherwise."""
    text = text.strip()
    if text == "0":
        return 0.0
    if not text or _DURATION.sub("", text):
        raise ValueError(f"expected a duration like '30s' or '1h30m', got {text!r}")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(text))


def _read_yaml(path: Path | None, env: Mapping[str, str]) -> dict[str, Any]:
    if path is None and env.get("EGRESS_CONFIG_FILE"):
        path = Path(env["EGRESS_CONFIG_FILE"])
    try:
        body = path.read_text() if path is not None else env.get("EGRESS_CONFIG_BODY", "")
        raw = yaml.safe_load(body) if body.strip() else {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config must be a YAML mapping (key: value)")
    return raw


def _warn_unknown(section: Mapping[str, Any], known: frozenset[str], prefix: str) -> None:
    for key in section:
        if key in known:
            continue
        if not prefix and key in _UPSTREAM_UNUSED:
            _log.debug("config: %s is not used by trackegress", key)
        else:
            _log.warning("config: unknown key %s%s ignored", prefix, key)


def _mapping(section: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = section.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _str(section: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{prefix}{key}: expected a string, got {value!r}")
    return value


def _int(section: Mapping[str, Any], key: str, default: int, prefix: str = "") -> int:
    value = section.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{prefix}{key}: expected a non-negative integer, got {value!r}")
    return value


def _port(section: Mapping[str, Any], key: str, default: int) -> int:
    value = _int(section, key, default)
    if value > 65535:
        raise ConfigError(f"{key}: expected a port number (0-65535), got {value}")
    return value


def _bool(section: Mapping[str, Any], key: str, prefix: str = "") -> bool:
    value = section.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}{key}: expected true or false, got {value!r}")
    return value


def _duration(section: Mapping[str, Any], key: str, prefix: str = "") -> float:
    value = section.get(key, 0)
    if value is None or value == 0:
        return 0.0
    if not isinstance(value, str):
        raise ConfigError(f"{prefix}{key}: expected a duration like '30s' or '1h30m', got {value!r}")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{prefix}{key}: {exc}") from None


def _log_level(section: Mapping[str, Any]) -> str:
    level = _str(section, "level", "logging.").lower() or "info"
    if level not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"logging.level: expected debug, info, warn or error, got {level!r}")
    return "warning" if level == "warn" else level


def _storage(raw: Mapping[str, Any]) -> StorageSettings:
    """The ``storage:`` / ``backup:`` blocks, parsed by the storage module."""
    from trackegress.storage.settings import StorageSettings, UploadConfigError

    try:
        return StorageSettings.from_config(_mapping(raw, "storage") or None, _mapping(raw, "backup") or None)
    except UploadConfigError as exc:
        raise ConfigError(f"storage: {exc}") from None


def _webhook_urls(section: Mapping[str, Any], api_key: str) -> tuple[str, ...]:
    key = _str(section, "api_key", "webhook.")
    if key and key != api_key:
        raise ConfigError("webhook.api_key: webhooks are signed with api_key; no other key is configured")
    urls = section.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
        raise ConfigError(f"webhook.urls: expected a list of URLs, got {urls!r}")
    for url in urls:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"webhook.urls: {url!r} is not an http(s) URL")
    return tuple(urls)
