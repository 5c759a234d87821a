"""Local filesystem storage: every output stays under one base directory."""

from __future__ import annotations

from pathlib import Path


def resolve_under(base_dir: Path, relative: str) -> Path:
    """``base_dir / relative`` with existing symlinks resolved; ValueError unless it lies inside ``base_dir``."""
    base = base_dir.resolve()
    target = (base / relative).resolve()
    if target == base:
        raise ValueError(f"{relative!r} names the base directory itself, not a file in it")
    if not target.is_relative_to(base):
        raise ValueError(f"{relative!r} escapes the base directory")
    return target


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
