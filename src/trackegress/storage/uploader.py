"""Uploads an egress's finished files: the destination first, then the backup; never deletes on failure."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from trackegress.media.codecs import content_type
from trackegress.storage.backends import backend_of
from trackegress.storage.base import Storage, UploadError, object_key
from trackegress.storage.settings import Destination

log = logging.getLogger(__name__)


def open_storage(destination: Destination) -> Storage:
    """The backend client for ``destination``."""
    storage: Storage = backend_of(destination.backend).open(destination.backend, destination.retry)
    return storage


class Uploader:
    """Puts files under ``prefix/filename``; once the destination failed, every later file goes to the backup."""

    def __init__(self, destination: Destination, backup: Destination | None = None,
                 open_backend: Callable[[Destination], Storage] = open_storage) -> None:
        self.backup_used = False  # a file landed in the backup
        self._open = open_backend
        self._destination = destination
        self._backup = backup
        self._storages: dict[int, Storage] = {}
        self._failure = ""  # the destination's error, once it failed

    async def upload(self, local: Path, filename: str) -> str:
        """Upload ``local`` as ``filename``; returns its location (or presigned URL). Raises UploadError."""
        if not self._failure:
            try:
                return await self._put(self._destination, local, filename)
            except UploadError as exc:
                if self._backup is None:
                    raise
                log.warning("%s; using the backup storage", exc)
                self._failure = str(exc)
        assert self._backup is not None
        try:
            location = await self._put(self._backup, local, filename)
        except UploadError as exc:
            raise UploadError(f"{self._failure}; backup: {exc}") from None
        self.backup_used = True
        return location

    async def close(self) -> None:
        """Release the backends' connections."""
        for storage in self._storages.values():
            await storage.close()
        self._storages.clear()

    async def _put(self, destination: Destination, local: Path, filename: str) -> str:
        storage = self._storages.get(id(destination))
        if storage is None:
            try:
                storage = self._storages[id(destination)] = self._open(destination)
            except Exception as exc:  # its message may quote the settings: name the kind of error only
                kind = type(destination.backend).__name__
                raise UploadError(f"{kind} upload failed: invalid settings ({type(exc).__name__})") from None
        key = object_key(destination.prefix, filename)
        location = await storage.upload(local, key, content_type(local))
        return await storage.presign(key) if destination.presign else location
