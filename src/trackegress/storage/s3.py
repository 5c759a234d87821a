"""S3 and S3-compatible storage (MinIO, R2, ...), configured like upstream's ``S3Upload``."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from obstore.store import S3Store

from trackegress.storage.base import url_path
from trackegress.storage.objectstore import ObjectStoreStorage, client_options, retry_config
from trackegress.storage.settings import S3, Retry

if TYPE_CHECKING:
    from obstore.store import S3Config

DEFAULT_REGION = "us-east-1"
AWS_ENDPOINT = "s3.amazonaws.com"


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
