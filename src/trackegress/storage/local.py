"""Local filesystem storage: every output stays under one base directory."""

from __future__ import annotations

from pathlib import Path

from trackegress.sinks.naming import resolve_under


class LocalStorage:
    """Places outputs under ``base_dir`` and reports their locations as absolute paths."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir.resolve()

    def path_for(self, relative: str) -> Path:
        """The absolute path for ``relative``, with its parent directories created; ValueError on escape."""
        path = resolve_under(self.base_dir, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def location(self, path: Path) -> str:
        """The location reported for a stored file: its absolute path."""
        return str(path.resolve())
