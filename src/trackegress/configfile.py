"""egress.yaml read once, and typed readers for its fields: every block is parsed by the module that owns it."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from trackegress.errors import INVALID_ARGUMENT, ConfigError

_log = logging.getLogger(__name__)
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SECRET_KEYS = frozenset({"secret", "account_key", "credentials_json", "password", "session_token", "api_secret"})


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string (``"1h30m"``, ``"500ms"``, ``"0"``); ValueError otherwise."""
    text = text.strip()
    if text == "0":
        return 0.0
    if not text or _DURATION.sub("", text):
        raise ValueError(f"expected a duration like '30s' or '1h30m', got {text!r}")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(text))


def read_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Section:
    """The YAML mapping from ``path``, ``EGRESS_CONFIG_FILE`` or ``EGRESS_CONFIG_BODY`` (in that order)."""
    env = os.environ if env is None else env
    if path is None and env.get("EGRESS_CONFIG_FILE"):
        path = Path(env["EGRESS_CONFIG_FILE"])
    try:
        body = path.read_text() if path is not None else env.get("EGRESS_CONFIG_BODY", "")
        raw = yaml.safe_load(body) if body.strip() else {}
    except OSError as exc:
        raise ConfigError(INVALID_ARGUMENT, f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(INVALID_ARGUMENT, f"config is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(INVALID_ARGUMENT, "config must be a YAML mapping (key: value)")
    return Section(raw)


@dataclass(frozen=True)
class Section:
    """One YAML mapping and its dotted ``path`` (``storage.s3``); readers raise ``ConfigError`` naming the key."""

    values: Mapping[str, Any]
    path: str = ""

    def __bool__(self) -> bool:
        return bool(self.values)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def name(self, key: str) -> str:
        """``key`` with this section's path (``storage.s3.bucket``)."""
        return f"{self.path}.{key}" if self.path else key

    def bad(self, key: str, expected: str) -> NoReturn:
        """Raise ``<path>.<key>: expected <expected>, got <value>`` (secrets shown as ``<hidden>``)."""
        value = "<hidden>" if key in _SECRET_KEYS else repr(self.values.get(key))
        raise ConfigError(INVALID_ARGUMENT, f"{self.name(key)}: expected {expected}, got {value}")

    def section(self, key: str) -> Section:
        """The mapping under ``key`` (empty if absent or null)."""
        value = self.values.get(key)
        if value is None:
            return Section({}, self.name(key))
        if not isinstance(value, Mapping):
            raise ConfigError(INVALID_ARGUMENT, f"{self.name(key)}: expected a mapping, got {type(value).__name__}")
        return Section(value, self.name(key))

    def text(self, key: str) -> str:
        value = self.values.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            self.bad(key, "a string")
        return value

    def integer(self, key: str, default: int = 0) -> int:
        """A non-negative integer."""
        value = self.values.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.bad(key, "a non-negative integer")
        return value

    def port(self, key: str, default: int = 0) -> int:
        value = self.integer(key, default)
        if value > 65535:
            self.bad(key, "a port number (0-65535)")
        return value

    def number(self, key: str, default: float = 0.0) -> float:
        value = self.values.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(key, "a number")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self.values.get(key, False)
        if not isinstance(value, bool):
            self.bad(key, "true or false")
        return value

    def duration(self, key: str, *, seconds: bool = False) -> float:
        """A Go duration string (``"30s"``), 0 when absent; with ``seconds`` a plain number of seconds too."""
        value = self.values.get(key)
        if value is None or value == 0:
            return 0.0
        if seconds and isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        if not isinstance(value, str):
            self.bad(key, "a duration like '30s' or '1h30m'")
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(INVALID_ARGUMENT, f"{self.name(key)}: {exc}") from None

    def refuse_unknown(self, known: frozenset[str]) -> None:
        """``ConfigError`` for keys not in ``known``."""
        unknown = sorted(set(self.values) - known)
        if unknown:
            raise ConfigError(INVALID_ARGUMENT, f"{self.path}: unknown key(s) {', '.join(unknown)}")

    def warn_unknown(self, known: frozenset[str], unused: frozenset[str] = frozenset()) -> None:
        """Log keys not in ``known``: at debug level those in ``unused`` (upstream keys we read nothing from)."""
        for key in self.values:
            if key in unused:
                _log.debug("config: %s is not used by trackegress", self.name(key))
            elif key not in known:
                _log.warning("config: unknown key %s ignored", self.name(key))
