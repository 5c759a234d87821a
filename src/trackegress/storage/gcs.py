"""Google Cloud Storage through gcloud-aio-storage (JSON API, resumable uploads), like upstream's ``GCPUpload``: its
settings, their parsers (``storage.gcp`` in egress.yaml, a request's ``GCPUpload``) and its client.

``STORAGE_EMULATOR_HOST`` (Google's convention, e.g. ``http://127.0.0.1:4443``) sends uploads to an emulator such as
fake-gcs-server; requests are still authenticated when credentials are given, and the location names the emulator.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
from gcloud.aio.auth import Token
from gcloud.aio.storage import Blob
from gcloud.aio.storage import Storage as GCSClient
from livekit.protocol import egress

from trackegress.backoff import Backoff
from trackegress.configfile import Section
from trackegress.errors import INVALID_ARGUMENT, ConfigError
from trackegress.storage.base import PRESIGN_EXPIRY, UploadError, proxy_note, redact, url_path
from trackegress.storage.options import (
    PROXY_SECRETS,
    BackendSettings,
    Proxy,
    Retry,
    check_proxy,
    proxy_from_config,
    proxy_from_request,
)

log = logging.getLogger(__name__)
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
_REQUEST_TIMEOUT = 300  # seconds, for one request including a whole resumable upload body
_RETRY_STATUS = frozenset({408, 429})
_SIGNING_HOST = "storage.googleapis.com"
_MARKUP = re.compile(r"<(?:!doctype|\?xml|html)", re.IGNORECASE)  # an HTML error page, e.g. from a proxy
_TAG = re.compile(r"<[^>]*>")
T = TypeVar("T")
SECRETS = {"credentials": "{credentials}", **PROXY_SECRETS}  # request fields that are credentials → placeholder


@dataclass(frozen=True)
class GCP(BackendSettings):
    """``GCPUpload`` / ``storage.gcp``: ``credentials_json`` is a service account (or ADC) JSON document."""

    bucket: str
    credentials_json: str = ""
    proxy: Proxy | None = None


def from_request(file: egress.DirectFileOutput) -> GCP:
    gcp = file.gcp
    proxy = proxy_from_request(gcp.proxy) if gcp.HasField("proxy") else None
    return _check(GCP(bucket=gcp.bucket, credentials_json=gcp.credentials, proxy=proxy))


def from_config(raw: Section) -> GCP:
    raw.refuse_unknown(frozenset({"credentials_json", "bucket", "proxy_config"}))
    return _check(GCP(raw.text("bucket"), raw.text("credentials_json"), proxy_from_config(raw)))


def _check(gcp: GCP) -> GCP:
    if not gcp.bucket:
        raise ConfigError(INVALID_ARGUMENT, "gcp.bucket is required")
    if gcp.credentials_json:
        try:
            document = json.loads(gcp.credentials_json)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ConfigError(INVALID_ARGUMENT, "gcp.credentials must be a JSON object (a service account key)")
    check_proxy("gcp.proxy", gcp.proxy)
    return gcp


def bucket_id(gcp: GCP) -> str:
    """Which bucket a key lives in (no credentials)."""
    return f"gcs:{gcp.bucket}"


def emulator(env: Mapping[str, str] = os.environ) -> str:
    """The emulator's base URL, '' when uploads go to Google."""
    host = env.get(EMULATOR_ENV, "").rstrip("/")
    return host if not host or "://" in host else f"http://{host}"


def location(gcp: GCP, key: str, env: Mapping[str, str] = os.environ) -> str:
    """Upstream's location: ``https://<bucket>.storage.googleapis.com/<key>``."""
    base = emulator(env)
    if base:
        return f"{base}/{gcp.bucket}/{url_path(key)}"
    return f"https://{gcp.bucket}.storage.googleapis.com/{url_path(key)}"


def signed_url(
    gcp: GCP, key: str, client_email: str, sign: Callable[[str], bytes], now: datetime.datetime | None = None,
    env: Mapping[str, str] = os.environ,
) -> str:
    """A V4 signed GET URL valid for ``PRESIGN_EXPIRY``, like Go's ``SignedURL`` with ``SigningSchemeV4``:
    ``https://storage.googleapis.com/<bucket>/<key>?X-Goog-Algorithm=GOOG4-RSA-SHA256&...&X-Goog-Signature=<hex>``
    (the emulator's URL instead when one is set). ``sign`` signs the string-to-sign with the service account's key
    (RSASSA-PKCS1-v1_5, SHA-256); the recipe is Google's "V4 signing process" for signed URLs.
    """
    base = emulator(env) or f"https://{_SIGNING_HOST}"
    when = now or datetime.datetime.now(datetime.UTC)
    timestamp = when.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{when:%Y%m%d}/auto/storage/goog4_request"
    path = f"/{gcp.bucket}/{quote(key.lstrip('/'), safe='/~')}"
    query = {
        "X-Goog-Algorithm": "GOOG4-RSA-SHA256", "X-Goog-Credential": f"{client_email}/{scope}",
        "X-Goog-Date": timestamp, "X-Goog-Expires": str(int(PRESIGN_EXPIRY.total_seconds())),
        "X-Goog-SignedHeaders": "host",
    }
    canonical_query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(query.items()))
    headers = f"host:{urlsplit(base).netloc.lower()}\n"
    canonical_request = "\n".join(["GET", path, canonical_query, headers, "host", "UNSIGNED-PAYLOAD"])
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    signature = sign("\n".join(["GOOG4-RSA-SHA256", timestamp, scope, digest])).hex()
    return f"{base}{path}?{canonical_query}&X-Goog-Signature={signature}"


class GCSStorage:
    """A ``Storage`` over one GCS bucket; credentials from the settings, else Application Default Credentials."""

    name = "GCP"

    def __init__(self, gcp: GCP, retry: Retry) -> None:
        self._gcp = gcp
        self._retry = retry
        self._secrets = _secrets(gcp)
        self._via = proxy_note(gcp.proxy.url if gcp.proxy else "")  # errors name the proxy requests went through
        self._token: Token | None = None
        self._client: GCSClient | None = None
        self._session: aiohttp.ClientSession | None = None

    async def upload(self, local: Path, key: str, content_type: str) -> str:
        async def put() -> object:
            client = self._open()
            with await asyncio.to_thread(local.open, "rb") as stream:
                return await client.upload(
                    self._gcp.bucket, key, stream, content_type=content_type, timeout=_REQUEST_TIMEOUT,
                )

        await self._call("upload", put)
        return location(self._gcp, key)

    async def presign(self, key: str) -> str:
        """Signed locally with the service account's key (gcloud-aio's own signer ignores the emulator); without a
        key (e.g. metadata-server credentials) this fails: signing through the IAM API is not implemented."""
        self._open()
        assert self._token is not None
        account: Mapping[str, Any] = self._token.service_data or {}
        email, private_key = account.get("client_email"), account.get("private_key")
        if not (isinstance(email, str) and isinstance(private_key, str) and email and private_key):
            raise UploadError("GCP presigning failed: generate_presigned_url needs a service account key "
                              "(client_email and private_key in the credentials)")
        try:
            return signed_url(self._gcp, key, email, lambda text: Blob.get_pem_signature(text, private_key))
        except ValueError:
            raise UploadError("GCP presigning failed: the service account's private key is invalid or unsupported"
                              ) from None

    async def close(self) -> None:
        session, self._session, self._client = self._session, None, None
        if session is not None:
            await session.close()

    def _open(self) -> GCSClient:
        if self._client is None:
            proxy = self._gcp.proxy
            session = self._session = aiohttp.ClientSession(proxy=proxy.url_with_auth() if proxy else None)
            credentials = io.StringIO(self._gcp.credentials_json) if self._gcp.credentials_json else None
            base = emulator()
            # gcloud-aio's session parameters are typed for its requests-based twin (gcloud-rest)
            self._token = Token(service_file=credentials, session=session, scopes=_SCOPES)  # type: ignore[arg-type]
            self._client = GCSClient(
                token=self._token,
                session=session,  # type: ignore[arg-type]
                api_root=base or None,
                api_is_dev=(not credentials) if base else None,
            )
        return self._client

    async def _call(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        """``request()``, retried with exponential backoff on connection errors, timeouts and 5xx/408/429."""
        attempt = 0
        while True:
            try:
                return await request()
            except Exception as exc:
                if attempt == self._retry.max_retries or not _retryable(exc):
                    message = redact(_describe(exc), self._secrets)
                    raise UploadError(f"GCP {what} failed: {message}{self._via}") from None
                attempt += 1
                delay = Backoff(self._retry.min_delay, self._retry.max_delay, jitter=True).delay(attempt)
                log.info("GCP %s failed (%s), retry %d in %.2fs", what, type(exc).__name__, attempt, delay)
                await asyncio.sleep(delay)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status >= 500 or exc.status in _RETRY_STATUS
    return isinstance(exc, aiohttp.ClientConnectionError | TimeoutError)


def _describe(exc: Exception) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        message = _TAG.sub(" ", exc.message) if _MARKUP.search(exc.message) else exc.message
        message = " ".join(message.split()).rstrip(":")  # one line
        return f"HTTP {exc.status} {message} from {exc.request_info.real_url.with_query(None)}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _secrets(gcp: GCP) -> tuple[str, ...]:
    """Everything secret in the settings: the credentials document's keys and tokens, the proxy password."""
    found: list[str] = list(gcp.proxy.secrets) if gcp.proxy else []
    if gcp.credentials_json:
        document: Any = json.loads(gcp.credentials_json)
        for name in ("private_key", "private_key_id", "client_secret", "refresh_token"):
            value = document.get(name)
            if isinstance(value, str):
                found += [value, *value.splitlines()]
    return tuple(found)
