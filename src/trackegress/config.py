"""Service settings: one typed object, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
    websocket_sample_rate: int = 48_000
    websocket_channels: int = 2

    def __post_init__(self) -> None:
        missing = [name for name in ("ws_url", "api_key", "api_secret") if not getattr(self, name)]
        if missing:
            raise ConfigError(f"missing setting(s): {', '.join(missing)} (or env LIVEKIT_URL, LIVEKIT_API_KEY, "
                              "LIVEKIT_API_SECRET)")
        if self.track_wait_timeout <= 0:
            raise ConfigError("track_wait_timeout must be positive")

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
