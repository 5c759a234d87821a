"""S3 and Azure uploads through obstore (Rust ``object_store``): async, multipart, retries with backoff."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import BaseError
from obstore.store import AzureStore, S3Store

from trackegress.storage.base import PRESIGN_EXPIRY, UploadError, proxy_note, redact
from trackegress.storage.options import Retry

if TYPE_CHECKING:
    from obstore import Attributes
    from obstore.store import ClientConfig, RetryConfig

PART_SIZE = 8 * 1024 * 1024  # files above this go up in parts (S3 multipart, Azure blocks)
_PART_CONCURRENCY = 4
_REQUEST_TIMEOUT = datetime.timedelta(minutes=5)  # one request, including one part's body
_REQUEST = re.compile(r"Error performing (\w+ \S+)")
_STATUS = re.compile(r"status code: (\d{3}[^:]*)")
_XML_FIELD = re.compile(r"<(Code|Message)>([^<\n]*)")
_OS_ERROR = re.compile(r'kind: \w+,\s+message: "([^"]+)"')


def retry_config(retry: Retry) -> RetryConfig:
    """obstore's retry settings for upstream's ``max_retries`` / ``min_retry_delay`` / ``max_retry_delay``."""
    return {
        "max_retries": retry.max_retries,
        "backoff": {
            "init_backoff": datetime.timedelta(seconds=retry.min_delay),
            "max_backoff": datetime.timedelta(seconds=retry.max_delay),
            "base": 2,
        },
    }


def client_options(endpoint: str, proxy_url: str = "") -> ClientConfig:
    """HTTP options: plain HTTP only when the endpoint asks for it, an optional proxy."""
    options: ClientConfig = {"allow_http": endpoint.startswith("http://"), "timeout": _REQUEST_TIMEOUT}
    if proxy_url:
        options["proxy_url"] = proxy_url
    return options


class ObjectStoreStorage:
    """A ``Storage`` over one obstore bucket or container."""

    def __init__(
        self,
        name: str,
        store: S3Store | AzureStore,
        location: Callable[[str], str],
        *,
        secrets: tuple[str, ...],
        attributes: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        proxy_url: str = "",
    ) -> None:
        self.name = name
        self._store = store
        self._location = location
        self._secrets = secrets
        self._attributes = dict(attributes or {})
        self._tags = dict(tags or {}) or None
        self._via = proxy_note(proxy_url)  # errors name the proxy requests went through

    async def upload(self, local: Path, key: str, content_type: str) -> str:
        attributes: Attributes = {**self._attributes, "Content-Type": content_type}
        try:
            await obstore.put_async(
                self._store, key, local, attributes=attributes, tags=self._tags,
                chunk_size=PART_SIZE, max_concurrency=_PART_CONCURRENCY,
            )
        except (BaseError, OSError) as exc:
            message = redact(summary(str(exc)), self._secrets)
            raise UploadError(f"{self.name} upload failed: {message}{self._via}") from None
        return self._location(key)

    async def presign(self, key: str) -> str:
        try:
            return obstore.sign(self._store, "GET", key, PRESIGN_EXPIRY)
        except BaseError as exc:
            raise UploadError(f"{self.name} presigning failed: {redact(summary(str(exc)), self._secrets)}") from None

    async def close(self) -> None:
        """Nothing to release: obstore pools connections per store."""


def summary(message: str) -> str:
    """An obstore error in one line: ``PUT <url>: 403 Forbidden: SignatureDoesNotMatch: <message>`` for HTTP errors
    with an XML body (S3, Azure); else the first paragraph and the OS error, e.g. ``Connection refused``."""
    head = message.split("\n\n", 1)[0]
    status = _STATUS.search(head)
    if status is None:
        cause = _OS_ERROR.search(message)
        return f"{head}: {cause.group(1)}" if cause else head
    request = _REQUEST.search(head)
    fields: dict[str, str] = {}
    for name, value in _XML_FIELD.findall(head):
        fields.setdefault(name, value)
    parts = [request.group(1) if request else "", status.group(1).strip(), fields.get("Code", ""),
             fields.get("Message", "")]
    return ": ".join(part for part in parts if part)
