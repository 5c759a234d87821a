"""Where finished files go: upstream's ``storage:`` / ``backup:`` settings and a request's upload oneof."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from livekit.protocol import egress

from trackegress.configfile import Section
from trackegress.errors import INVALID_ARGUMENT, UNIMPLEMENTED, ConfigError


@dataclass(frozen=True)
class Proxy:
    """An HTTP(S) proxy for uploads."""

    url: str
    username: str = ""
    password: str = ""

    def url_with_auth(self) -> str:
        """``url`` with the basic-auth user and password percent-encoded in its authority, the form both obstore
        (reqwest) and aiohttp take them in; ``url`` as is without a username."""
        if not self.username:
            return self.url
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{quote(self.username, safe='')}:{quote(self.password, safe='')}@{rest}"

    @property
    def secrets(self) -> tuple[str, str]:
        """The password as given and percent-encoded (as it stands in ``url_with_auth``), for redaction."""
        return self.password, quote(self.password, safe="")


@dataclass(frozen=True)
class S3:
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


@dataclass(frozen=True)
class GCP:
    """``GCPUpload`` / ``storage.gcp``: ``credentials_json`` is a service account (or ADC) JSON document."""

    bucket: str
    credentials_json: str = ""
    proxy: Proxy | None = None


@dataclass(frozen=True)
class Azure:
    """``AzureBlobUpload`` / ``storage.azure``."""

    account_name: str
    account_key: str
    container_name: str


Backend = S3 | GCP | Azure


@dataclass(frozen=True)
class Retry:
    """Upload retries: upstream's ``max_retries`` / ``min_retry_delay`` / ``max_retry_delay`` (seconds)."""

    max_retries: int = 5
    min_delay: float = 0.1
    max_delay: float = 5.0


@dataclass(frozen=True)
class Destination:
    """One place to upload to, with upstream's ``prefix`` and ``generate_presigned_url`` options."""

    backend: Backend
    prefix: str = ""
    presign: bool = False
    retry: Retry = Retry()


@dataclass(frozen=True)
class StorageSettings:
    """The service's ``storage:`` block (``default`` None: files stay in the local directory) and ``backup:``."""

    prefix: str = ""
    presign: bool = False
    retry: Retry = Retry()
    default: Backend | None = None
    backup: Destination | None = None

    @classmethod
    def from_config(cls, storage: Mapping[str, Any] | None, backup: Mapping[str, Any] | None = None) -> StorageSettings:
        """Parse egress.yaml's ``storage:`` and ``backup:`` blocks (upstream key names); ConfigError if invalid."""
        settings = _section(Section(storage or {}, "storage"))
        if backup:
            backup_settings = _section(Section(backup, "backup"))
            if backup_settings.default is None:
                raise ConfigError(INVALID_ARGUMENT, "backup: needs one of s3, gcp or azure")
            settings = replace(settings, backup=backup_settings.destination(None))
        return settings

    def destination(self, file: egress.DirectFileOutput | None) -> Destination | None:
        """Where a request's file goes: its own upload (inheriting prefix, presign and retries), else the default."""
        backend = from_request(file) if file is not None else None
        backend = backend or self.default
        if backend is None:
            return None
        return Destination(backend, self.prefix, self.presign, self.retry)


def from_request(file: egress.DirectFileOutput) -> Backend | None:
    """The backend a ``DirectFileOutput`` names, None if none; ConfigError if incomplete or unsupported."""
    which = file.WhichOneof("output")
    if which is None:
        return None
    parsers = PARSERS.get(which)
    if parsers is None:
        raise ConfigError(UNIMPLEMENTED, f"{which} upload is not supported")
    return parsers.request(file)


def _s3_request(file: egress.DirectFileOutput) -> S3:
    s3 = file.s3
    if s3.assume_role_arn:
        raise ConfigError(UNIMPLEMENTED, "s3 assume_role_arn is not supported yet")
    proxy = _proxy_from_proto(s3.proxy) if s3.HasField("proxy") else None
    return _check_s3(S3(
        bucket=s3.bucket, access_key=s3.access_key, secret=s3.secret, session_token=s3.session_token,
        region=s3.region, endpoint=s3.endpoint, force_path_style=s3.force_path_style,
        metadata=dict(s3.metadata), tagging=s3.tagging, content_disposition=s3.content_disposition, proxy=proxy,
    ))


def _gcp_request(file: egress.DirectFileOutput) -> GCP:
    gcp = file.gcp
    proxy = _proxy_from_proto(gcp.proxy) if gcp.HasField("proxy") else None
    return _check_gcp(GCP(bucket=gcp.bucket, credentials_json=gcp.credentials, proxy=proxy))


def _azure_request(file: egress.DirectFileOutput) -> Azure:
    az = file.azure
    return _check_azure(Azure(az.account_name, az.account_key, az.container_name))


# checks shared by requests and config


def _check_s3(s3: S3) -> S3:
    if not s3.bucket:
        raise ConfigError(INVALID_ARGUMENT, "s3.bucket is required")
    if bool(s3.access_key) != bool(s3.secret):
        raise ConfigError(INVALID_ARGUMENT, "s3.access_key and s3.secret go together")
    if s3.endpoint:
        _check_url("s3.endpoint", s3.endpoint if "://" in s3.endpoint else f"https://{s3.endpoint}")
    if s3.tagging:
        try:
            parse_qsl(s3.tagging, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            message = f"s3.tagging must look like 'k1=v1&k2=v2', got {s3.tagging!r}"
            raise ConfigError(INVALID_ARGUMENT, message) from None
    _check_proxy("s3.proxy", s3.proxy)
    return s3


def _check_gcp(gcp: GCP) -> GCP:
    if not gcp.bucket:
        raise ConfigError(INVALID_ARGUMENT, "gcp.bucket is required")
    if gcp.credentials_json:
        try:
            document = json.loads(gcp.credentials_json)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ConfigError(INVALID_ARGUMENT, "gcp.credentials must be a JSON object (a service account key)")
    _check_proxy("gcp.proxy", gcp.proxy)
    return gcp


def _check_azure(azure: Azure) -> Azure:
    missing = [name for name in ("account_name", "account_key", "container_name") if not getattr(azure, name)]
    if missing:
        raise ConfigError(INVALID_ARGUMENT, f"azure.{', azure.'.join(missing)} required")
    return azure


def _check_proxy(name: str, proxy: Proxy | None) -> None:
    if proxy is not None:
        _check_url(f"{name}.url", proxy.url)


def _check_url(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(INVALID_ARGUMENT, f"{name} must be an http(s) URL, got {url!r}")


def _proxy_from_proto(proxy: egress.ProxyConfig) -> Proxy:
    return Proxy(proxy.url, proxy.username, proxy.password)


# the service config (YAML mappings, upstream key names)

_RETRY_KEYS = frozenset({"max_retries", "min_retry_delay", "max_retry_delay"})
_S3_KEYS = frozenset({
    "access_key", "secret", "session_token", "region", "endpoint", "bucket", "force_path_style", "proxy_config",
    "metadata", "tagging", "content_disposition", "assume_role_arn", "assume_role_external_id",
}) | _RETRY_KEYS


def _section(raw: Section) -> StorageSettings:
    """One ``storage:``-shaped block."""
    raw.refuse_unknown(frozenset({"prefix", "generate_presigned_url", "s3", "gcp", "azure", "alioss"}) | _RETRY_KEYS)
    if raw.values.get("alioss"):
        raise ConfigError(UNIMPLEMENTED, f"{raw.name('alioss')}: AliOSS upload is not supported")
    backends = [parsers.config(raw.section(key)) for key, parsers in PARSERS.items() if raw.values.get(key)]
    if len(backends) > 1:
        raise ConfigError(INVALID_ARGUMENT, f"{raw.path}: configure only one of s3, gcp and azure")
    retry = _retry(raw)
    if raw.values.get("s3"):
        retry = _retry(raw.section("s3"), retry)
    return StorageSettings(
        prefix=raw.text("prefix"),
        presign=raw.flag("generate_presigned_url"),
        retry=retry,
        default=backends[0] if backends else None,
    )


def _s3(raw: Section) -> S3:
    raw.refuse_unknown(_S3_KEYS)
    if raw.values.get("assume_role_arn"):
        raise ConfigError(UNIMPLEMENTED, f"{raw.name('assume_role_arn')} is not supported yet")
    metadata = raw.values.get("metadata") or {}
    if not isinstance(metadata, Mapping) or not all(isinstance(v, str) for v in metadata.values()):
        raw.bad("metadata", "a mapping of names to strings")
    return _check_s3(S3(
        bucket=raw.text("bucket"), access_key=raw.text("access_key"), secret=raw.text("secret"),
        session_token=raw.text("session_token"), region=raw.text("region"), endpoint=raw.text("endpoint"),
        force_path_style=raw.flag("force_path_style"), metadata={str(k): v for k, v in metadata.items()},
        tagging=raw.text("tagging"), content_disposition=raw.text("content_disposition"), proxy=_proxy(raw),
    ))


def _gcp(raw: Section) -> GCP:
    raw.refuse_unknown(frozenset({"credentials_json", "bucket", "proxy_config"}))
    return _check_gcp(GCP(raw.text("bucket"), raw.text("credentials_json"), _proxy(raw)))


def _azure(raw: Section) -> Azure:
    raw.refuse_unknown(frozenset({"account_name", "account_key", "container_name"}))
    return _check_azure(Azure(raw.text("account_name"), raw.text("account_key"), raw.text("container_name")))


def _proxy(raw: Section) -> Proxy | None:
    section = raw.section("proxy_config")
    if not section:
        return None
    section.refuse_unknown(frozenset({"url", "username", "password"}))
    return Proxy(section.text("url"), section.text("username"), section.text("password"))


def _retry(raw: Section, base: Retry = Retry()) -> Retry:
    retries = raw.integer("max_retries")
    retry = Retry(
        max_retries=retries or base.max_retries,
        min_delay=raw.duration("min_retry_delay", seconds=True) or base.min_delay,
        max_delay=raw.duration("max_retry_delay", seconds=True) or base.max_delay,
    )
    if retry.min_delay > retry.max_delay:
        raise ConfigError(INVALID_ARGUMENT, f"{raw.path}: min_retry_delay is larger than max_retry_delay")
    return retry


@dataclass(frozen=True)
class Parsers:
    """How one backend is read: from its ``storage:`` block and from its ``DirectFileOutput`` field."""

    config: Callable[[Section], Backend]
    request: Callable[[egress.DirectFileOutput], Backend]
    secrets: Mapping[str, str]  # the request fields that are credentials (dotted path) → their placeholder


_PROXY_SECRETS = {"proxy.password": "{proxy_password}", "proxy.url": ""}  # "": the URL's userinfo password only

# The backends, by config key and request field (their clients: ``uploader.OPENERS``).
PARSERS: dict[str, Parsers] = {
    "s3": Parsers(_s3, _s3_request, {
        "access_key": "{access_key}", "secret": "{secret}", "session_token": "{session_token}",
        "assume_role_external_id": "{external_id}", **_PROXY_SECRETS,
    }),
    "gcp": Parsers(_gcp, _gcp_request, {"credentials": "{credentials}", **_PROXY_SECRETS}),
    "azure": Parsers(_azure, _azure_request, {"account_key": "{account_key}"}),
}
# What ``redact.redact_request`` hides, per ``DirectFileOutput`` field: every backend's, and AliOSS's (refused, but
# a request naming it is still reported).
SECRET_FIELDS: dict[str, Mapping[str, str]] = {
    **{key: parsers.secrets for key, parsers in PARSERS.items()},
    "aliOSS": {"access_key": "{access_key}", "secret": "{secret}"},
}
