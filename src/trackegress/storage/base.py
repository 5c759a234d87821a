"""The storage interface, object keys and error redaction shared by the backends."""

from __future__ import annotations

import datetime
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

PRESIGN_EXPIRY = datetime.timedelta(days=7)  # upstream's, and S3's maximum
_BEARER = re.compile(r"(Bearer\s+)[\w.~+/=-]+", re.IGNORECASE)
_MAX_ERROR = 600


class UploadError(Exception):
    """An upload failed for good (after retries); the message is redacted and fit for ``EgressInfo.error``."""


class Storage(Protocol):
    """A remote place finished files are uploaded to."""

    name: str  # for messages: "S3", "GCP", "Azure"

    async def upload(self, local: Path, key: str, content_type: str) -> str:
        """Upload ``local`` as ``key``; returns the object's location. Raises UploadError."""
        ...

    async def presign(self, key: str) -> str:
        """A GET URL for ``key`` valid for ``PRESIGN_EXPIRY``. Raises UploadError."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def object_key(prefix: str, filename: str) -> str:
    """``prefix`` joined to ``filename`` like Go's ``path.Join``, without a leading ``/``."""
    return posixpath.normpath(f"/{prefix}/{filename}").lstrip("/")


def url_path(key: str) -> str:
    """``key`` escaped for a URL path like Go's ``URL.EscapedPath`` (spaces → ``%20``, UTF-8 → ``%C3%A9``)."""
    return quote(key.lstrip("/"), safe="/$&+,:;=@")


def redact(message: str, secrets: Iterable[str]) -> str:
    """``message`` cut to its first paragraph and a sane length, with ``secrets`` and bearer tokens hidden."""
    text = message.split("\n\n", 1)[0].strip()
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "{...}")
    text = _BEARER.sub(r"\1{...}", text)
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


def proxy_note(proxy_url: str) -> str:
    """`` (through proxy <url>)`` for error messages, without any user info in the URL; '' without a proxy."""
    if not proxy_url:
        return ""
    parts = urlsplit(proxy_url)
    host = parts.netloc.rpartition("@")[2]
    return f" (through proxy {parts.scheme}://{host}{parts.path.rstrip('/')})"
