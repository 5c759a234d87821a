"""S3 and S3-compatible storage (MinIO, R2, ...), configured like upstream's ``S3Upload``: its settings, their
parsers (``storage.s3`` in egress.yaml, a request's ``S3Upload``) and its client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from livekit.protocol import egress
from obstore.store import S3Store

from trackegress.configfile import Section
from trackegress.errors import INVALID_ARGUMENT, UNIMPLEMENTED, ConfigError
from trackegress.storage.base import url_path
from trackegress.storage.objectstore import ObjectStoreStorage, client_options, retry_config
from trackegress.storage.options import (
    PROXY_SECRETS,
    RETRY_KEYS,
    BackendSettings,
    Proxy,
    Retry,
    check_proxy,
    check_url,
    proxy_from_config,
    proxy_from_request,
)

if TYPE_CHECKING:
    from obstore.store import S3Config

DEFAULT_REGION = "us-east-1"
AWS_ENDPOINT = "s3.amazonaws.com"
# the request fields that are credentials (dotted path) → their placeholder
SECRETS = {
    "access_key": "{access_key}", "secret": "{secret}", "session_token": "{session_token}",
    "assume_role_external_id": "{external_id}", **PROXY_SECRETS,
}
_KEYS = frozenset({
    "access_key", "secret", "session_token", "region", "endpoint", "bucket", "force_path_style", "proxy_config",
    "metadata", "tagging", "content_disposition", "assume_role_arn", "assume_role_external_id",
}) | RETRY_KEYS


@dataclass(frozen=True)
class S3(BackendSettings):
    """``S3Upload`` / ``storage.s3``."""

    bucket: str
    access_key: str = ""
    secret: str = ""
    session_token: str = ""
    region: str = ""
    endpoint: str = ""
    force_path_style: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)
    tagging: str = ""
    content_disposition: str = ""
    proxy: Proxy | None = None


def from_request(file: egress.DirectFileOutput) -> S3:
    s3 = file.s3
    if s3.assume_role_arn:
        raise ConfigError(UNIMPLEMENTED, "s3 assume_role_arn is not supported yet")
    proxy = proxy_from_request(s3.proxy) if s3.HasField("proxy") else None
    return _check(S3(
        bucket=s3.bucket, access_key=s3.access_key, secret=s3.secret, session_token=s3.session_token,
        region=s3.region, endpoint=s3.endpoint, force_path_style=s3.force_path_style,
        metadata=dict(s3.metadata), tagging=s3.tagging, content_disposition=s3.content_disposition, proxy=proxy,
    ))


def from_config(raw: Section) -> S3:
    raw.refuse_unknown(_KEYS)
    if raw.values.get("assume_role_arn"):
        raise ConfigError(UNIMPLEMENTED, f"{raw.name('assume_role_arn')} is not supported yet")
    metadata = raw.values.get("metadata") or {}
    if not isinstance(metadata, Mapping) or not all(isinstance(v, str) for v in metadata.values()):
        raw.bad("metadata", "a mapping of names to strings")
    return _check(S3(
        bucket=raw.text("bucket"), access_key=raw.text("access_key"), secret=raw.text("secret"),
        session_token=raw.text("session_token"), region=raw.text("region"), endpoint=raw.text("endpoint"),
        force_path_style=raw.flag("force_path_style"), metadata={str(k): v for k, v in metadata.items()},
        tagging=raw.text("tagging"), content_disposition=raw.text("content_disposition"),
        proxy=proxy_from_config(raw),
    ))


def _check(s3: S3) -> S3:
    if not s3.bucket:
        raise ConfigError(INVALID_ARGUMENT, "s3.bucket is required")
    if bool(s3.access_key) != bool(s3.secret):
        raise ConfigError(INVALID_ARGUMENT, "s3.access_key and s3.secret go together")
    if s3.endpoint:
        check_url("s3.endpoint", s3.endpoint if "://" in s3.endpoint else f"https://{s3.endpoint}")
    if s3.tagging:
        try:
            parse_qsl(s3.tagging, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            message = f"s3.tagging must look like 'k1=v1&k2=v2', got {s3.tagging!r}"
            raise ConfigError(INVALID_ARGUMENT, message) from None
    check_proxy("s3.proxy", s3.proxy)
    return s3


def bucket_id(s3: S3) -> str:
    """Which bucket a key lives in (no credentials)."""
    return f"s3:{s3.endpoint}:{s3.bucket}"


def location(s3: S3, key: str) -> str:
    """Upstream's location: ``https://<bucket>.<endpoint>/<key>``, or ``<endpoint>/<bucket>/<key>`` path-style."""
    endpoint = s3.endpoint.rstrip("/") or AWS_ENDPOINT
    if s3.force_path_style:
        if not endpoint.startswith("http"):
            endpoint = "https://" + endpoint
        return f"{endpoint}/{s3.bucket}/{url_path(key)}"
    host = endpoint.split("://", 1)[-1]
    return f"https://{s3.bucket}.{host}/{url_path(key)}"


def open_s3(s3: S3, retry: Retry) -> ObjectStoreStorage:
    """An S3 ``Storage``; credentials come from the settings, else from the usual AWS environment."""
    store = S3Store(
        s3.bucket,
        config=_config(s3),
        retry_config=retry_config(retry),
        client_options=client_options(_endpoint(s3), s3.proxy.url_with_auth() if s3.proxy else ""),
    )
    return ObjectStoreStorage(
        "S3", store, lambda key: location(s3, key),
        secrets=(s3.access_key, s3.secret, s3.session_token, *(s3.proxy.secrets if s3.proxy else ())),
        attributes={**s3.metadata, "Content-Disposition": s3.content_disposition or "inline"},
        tags=dict(parse_qsl(s3.tagging, keep_blank_values=True)),
        proxy_url=s3.proxy.url if s3.proxy else "",
    )


def _endpoint(s3: S3) -> str:
    """The endpoint URL requests go to ('' for AWS); virtual-hosted style puts the bucket in the host."""
    if not s3.endpoint:
        return ""
    url = s3.endpoint if "://" in s3.endpoint else f"https://{s3.endpoint}"
    if s3.force_path_style:
        return url.rstrip("/")
    parts = urlsplit(url)
    return f"{parts.scheme}://{s3.bucket}.{parts.netloc}{parts.path.rstrip('/')}"


def _config(s3: S3) -> S3Config:
    """Region, addressing style, endpoint and the credentials that are set (others: the AWS environment)."""
    config: S3Config = {"region": s3.region or DEFAULT_REGION, "virtual_hosted_style_request": not s3.force_path_style}
    if s3.endpoint:
        config["endpoint"] = _endpoint(s3)
    if s3.access_key:
        config["access_key_id"], config["secret_access_key"] = s3.access_key, s3.secret
    if s3.session_token:
        config["session_token"] = s3.session_token
    return config
