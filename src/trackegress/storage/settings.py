"""Where finished files go: upstream's ``storage:`` / ``backup:`` settings and a request's upload oneof."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn
from urllib.parse import parse_qsl, quote, urlsplit

from livekit.protocol import egress


class UploadConfigError(ValueError):
    """An upload configuration we refuse; ``code`` is the Twirp error code."""

    def __init__(self, message: str, code: str = "invalid_argument") -> None:
        super().__init__(message)
        self.code = code


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
        """Parse the ``storage:`` and ``backup:`` blocks (upstream key names); UploadConfigError if invalid."""
        settings = _section(storage or {}, "storage")
        if backup:
            backup_settings = _section(backup, "backup")
            if backup_settings.default is None:
                raise UploadConfigError("backup: needs one of s3, gcp or azure")
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
    """The backend a ``DirectFileOutput`` names, None if none; UploadConfigError if incomplete or unsupported."""
    which = file.WhichOneof("output")
    if which is None:
        return None
    if which == "s3":
        s3 = file.s3
        if s3.assume_role_arn:
            raise UploadConfigError("s3 assume_role_arn is not supported yet", "unimplemented")
        proxy = _proxy_from_proto(s3.proxy) if s3.HasField("proxy") else None
        return _check_s3(S3(
            bucket=s3.bucket, access_key=s3.access_key, secret=s3.secret, session_token=s3.session_token,
            region=s3.region, endpoint=s3.endpoint, force_path_style=s3.force_path_style,
            metadata=dict(s3.metadata), tagging=s3.tagging, content_disposition=s3.content_disposition, proxy=proxy,
        ))
    if which == "gcp":
        gcp = file.gcp
        proxy = _proxy_from_proto(gcp.proxy) if gcp.HasField("proxy") else None
        return _check_gcp(GCP(bucket=gcp.bucket, credentials_json=gcp.credentials, proxy=proxy))
    if which == "azure":
        az = file.azure
        return _check_azure(Azure(az.account_name, az.account_key, az.container_name))
    raise UploadConfigError(f"{which} upload is not supported", "unimplemented")


# checks shared by requests and config


def _check_s3(s3: S3) -> S3:
    if not s3.bucket:
        raise UploadConfigError("s3.bucket is required")
    if bool(s3.access_key) != bool(s3.secret):
        raise UploadConfigError("s3.access_key and s3.secret go together")
    if s3.endpoint:
        _check_url("s3.endpoint", s3.endpoint if "://" in s3.endpoint else f"https://{s3.endpoint}")
    if s3.tagging:
        try:
            parse_qsl(s3.tagging, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise UploadConfigError(f"s3.tagging must look like 'k1=v1&k2=v2', got {s3.tagging!r}") from None
    _check_proxy("s3.proxy", s3.proxy)
    return s3


def _check_gcp(gcp: GCP) -> GCP:
    if not gcp.bucket:
        raise UploadConfigError("gcp.bucket is required")
    if gcp.credentials_json:
        try:
            document = json.loads(gcp.credentials_json)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise UploadConfigError("gcp.credentials must be a JSON object (a service account key)")
    _check_proxy("gcp.proxy", gcp.proxy)
    return gcp


def _check_azure(azure: Azure) -> Azure:
    missing = [name for name in ("account_name", "account_key", "container_name") if not getattr(azure, name)]
    if missing:
        raise UploadConfigError(f"azure.{', azure.'.join(missing)} required")
    return azure


def _check_proxy(name: str, proxy: Proxy | None) -> None:
    if proxy is not None:
        _check_url(f"{name}.url", proxy.url)


def _check_url(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UploadConfigError(f"{name} must be an http(s) URL, got {url!r}")


def _proxy_from_proto(proxy: egress.ProxyConfig) -> Proxy:
    return Proxy(proxy.url, proxy.username, proxy.password)


# the service config (YAML mappings, upstream key names)

_RETRY_KEYS = frozenset({"max_retries", "min_retry_delay", "max_retry_delay"})
_S3_KEYS = frozenset({
    "access_key", "secret", "session_token", "region", "endpoint", "bucket", "force_path_style", "proxy_config",
    "metadata", "tagging", "content_disposition", "assume_role_arn", "assume_role_external_id",
}) | _RETRY_KEYS


def _section(raw: Mapping[str, Any], name: str) -> StorageSettings:
    """One ``storage:``-shaped block."""
    _only(raw, frozenset({"prefix", "generate_presigned_url", "s3", "gcp", "azure", "alioss"}) | _RETRY_KEYS, name)
    if raw.get("alioss"):
        raise UploadConfigError(f"{name}.alioss: AliOSS upload is not supported", "unimplemented")
    parsers: dict[str, Callable[[Mapping[str, Any], str], Backend]] = {"s3": _s3, "gcp": _gcp, "azure": _azure}
    backends = [parse(_mapping(raw, key, name), f"{name}.{key}") for key, parse in parsers.items() if raw.get(key)]
    if len(backends) > 1:
        raise UploadConfigError(f"{name}: configure only one of s3, gcp and azure")
    retry = _retry(raw, name)
    if raw.get("s3"):
        retry = _retry(_mapping(raw, "s3", name), f"{name}.s3", retry)
    return StorageSettings(
        prefix=_text(raw, "prefix", name),
        presign=_flag(raw, "generate_presigned_url", name),
        retry=retry,
        default=backends[0] if backends else None,
    )


def _s3(raw: Mapping[str, Any], name: str) -> S3:
    _only(raw, _S3_KEYS, name)
    if raw.get("assume_role_arn"):
        raise UploadConfigError(f"{name}.assume_role_arn is not supported yet", "unimplemented")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, Mapping) or not all(isinstance(v, str) for v in metadata.values()):
        raise UploadConfigError(f"{name}.metadata must map names to strings")
    return _check_s3(S3(
        bucket=_text(raw, "bucket", name), access_key=_text(raw, "access_key", name),
        secret=_text(raw, "secret", name), session_token=_text(raw, "session_token", name),
        region=_text(raw, "region", name), endpoint=_text(raw, "endpoint", name),
        force_path_style=_flag(raw, "force_path_style", name), metadata={str(k): v for k, v in metadata.items()},
        tagging=_text(raw, "tagging", name), content_disposition=_text(raw, "content_disposition", name),
        proxy=_proxy(raw, name),
    ))


def _gcp(raw: Mapping[str, Any], name: str) -> GCP:
    _only(raw, frozenset({"credentials_json", "bucket", "proxy_config"}), name)
    return _check_gcp(GCP(_text(raw, "bucket", name), _text(raw, "credentials_json", name), _proxy(raw, name)))


def _azure(raw: Mapping[str, Any], name: str) -> Azure:
    _only(raw, frozenset({"account_name", "account_key", "container_name"}), name)
    return _check_azure(Azure(
        _text(raw, "account_name", name), _text(raw, "account_key", name), _text(raw, "container_name", name),
    ))


def _proxy(raw: Mapping[str, Any], name: str) -> Proxy | None:
    section = _mapping(raw, "proxy_config", name)
    if not section:
        return None
    prefix = f"{name}.proxy_config"
    _only(section, frozenset({"url", "username", "password"}), prefix)
    return Proxy(_text(section, "url", prefix), _text(section, "username", prefix), _text(section, "password", prefix))


def _retry(raw: Mapping[str, Any], name: str, base: Retry = Retry()) -> Retry:
    retries = raw.get("max_retries")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        raise UploadConfigError(f"{name}.max_retries must be a non-negative integer, got {retries!r}")
    retry = Retry(
        max_retries=base.max_retries if not retries else retries,
        min_delay=_delay(raw, "min_retry_delay", name) or base.min_delay,
        max_delay=_delay(raw, "max_retry_delay", name) or base.max_delay,
    )
    if retry.min_delay > retry.max_delay:
        raise UploadConfigError(f"{name}: min_retry_delay is larger than max_retry_delay")
    return retry


def _delay(raw: Mapping[str, Any], key: str, name: str) -> float:
    """A Go duration string (``"100ms"``) or a number of seconds; 0 when absent (upstream: use the default)."""
    value = raw.get(key)
    if value is None:
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if not isinstance(value, str):
        _bad(name, key, "a duration like '100ms'", value)
    from trackegress.config import parse_duration  # here: config.py may import this module at its top

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UploadConfigError(f"{name}.{key}: {exc}") from None


def _only(raw: Mapping[str, Any], known: frozenset[str], name: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UploadConfigError(f"{name}: unknown key(s) {', '.join(unknown)}")


def _mapping(raw: Mapping[str, Any], key: str, name: str) -> Mapping[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise UploadConfigError(f"{name}.{key} must be a mapping")
    return value


def _text(raw: Mapping[str, Any], key: str, name: str) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        _bad(name, key, "a string", value)
    return str(value)


def _flag(raw: Mapping[str, Any], key: str, name: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        _bad(name, key, "true or false", value)
    return bool(value)


def _bad(name: str, key: str, expected: str, value: object) -> NoReturn:
    shown = "<hidden>" if key in ("secret", "account_key", "credentials_json", "password", "session_token") else value
    raise UploadConfigError(f"{name}.{key} must be {expected}, got {shown!r}")
