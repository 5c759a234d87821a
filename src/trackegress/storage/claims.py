"""Output ownership: an egress claims its output (local file, object key) atomically before writing.

A local file is claimed by creating it with ``O_CREAT | O_EXCL``; an object key by creating a claim file named
after the destination and key under ``<local_dir>/.trackegress-claims/``. Both live on disk, so a claim holds
across restarts and across processes (serve, workers) sharing ``local_dir``. Claims are never released: a second
egress resolving to the same output is refused instead of overwriting or sharing a recording.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from trackegress.storage.backends import backend_of
from trackegress.storage.options import BackendSettings

CLAIMS_DIR = ".trackegress-claims"


class OutputTaken(Exception):
    """The output is already claimed (by another egress, or an earlier recording)."""


def claim_file(path: Path, owner: str) -> None:
    """Create ``path`` empty for ``owner``; ``OutputTaken`` if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise OutputTaken("the file already exists (another egress or an earlier recording)") from None
    os.close(fd)


def claim_key(base_dir: Path, backend: BackendSettings, key: str, owner: str) -> None:
    """Claim ``key`` at ``backend`` for ``owner``; ``OutputTaken`` if another egress claimed it."""
    folder = base_dir / CLAIMS_DIR
    folder.mkdir(exist_ok=True)
    name = hashlib.sha256(f"{backend_of(backend).bucket(backend)}\0{key}".encode()).hexdigest()
    try:
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        holder = (folder / name).read_text(errors="replace").strip() or "another egress"
        raise OutputTaken(f"the object key is already claimed by {holder}") from None
    with os.fdopen(fd, "w") as file:
        file.write(owner)

