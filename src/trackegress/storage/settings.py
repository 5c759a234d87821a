"""Where finished files go: upstream's ``storage:`` / ``backup:`` settings and a request's upload oneof (each
backend's own part: its row in ``backends.BACKENDS``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from livekit.protocol import egress

from trackegress.configfile import Section
from trackegress.errors import INVALID_ARGUMENT, UNIMPLEMENTED, ConfigError
from trackegress.storage.backends import BACKENDS
from trackegress.storage.options import RETRY_KEYS, BackendSettings, Retry


@dataclass(frozen=True)
class Destination:
    """One place to upload to, with upstream's ``prefix`` and ``generate_presigned_url`` options."""

    backend: BackendSettings
    prefix: str = ""
    presign: bool = False
    retry: Retry = Retry()


@dataclass(frozen=True)
class StorageSettings:
    """The service's ``storage:`` block (``default`` None: files stay in the local directory) and ``backup:``."""

    prefix: str = ""
    presign: bool = False
    retry: Retry = Retry()
    default: BackendSettings | None = None
    backup: Destination | None = None

    @classmethod
    def from_config(cls, storage: Mapping[str, Any] | None, backup: Mapping[str, Any] | None = None) -> StorageSettings:
        """Parse egress.yaml's ``storage:`` and ``backup:`` blocks (upstream key names); ConfigError if invalid."""
        settings = _section(Section(storage or {}, "storage"))
        if backup:
            backup_settings = _section(Section(backup, "backup"))
            if backup_settings.default is None:
                raise ConfigError(INVALID_ARGUMENT, f"backup: needs one of {_listed('or')}")
            settings = replace(settings, backup=backup_settings.destination(None))
        return settings

    def destination(self, file: egress.DirectFileOutput | None) -> Destination | None:
        """Where a request's file goes: its own upload (inheriting prefix, presign and retries), else the default."""
        backend = from_request(file) if file is not None else None
        backend = backend or self.default
        if backend is None:
            return None
        return Destination(backend, self.prefix, self.presign, self.retry)


def from_request(file: egress.DirectFileOutput) -> BackendSettings | None:
    """The backend a ``DirectFileOutput`` names, None if none; ConfigError if incomplete or unsupported."""
    which = file.WhichOneof("output")
    if which is None:
        return None
    backend = BACKENDS.get(which)
    if backend is None:
        raise ConfigError(UNIMPLEMENTED, f"{which} upload is not supported")
    settings: BackendSettings = backend.request(file)
    return settings


# the service config (YAML mappings, upstream key names)


def _section(raw: Section) -> StorageSettings:
    """One ``storage:``-shaped block."""
    raw.refuse_unknown(frozenset({"prefix", "generate_presigned_url", *BACKENDS, "alioss"}) | RETRY_KEYS)
    if raw.values.get("alioss"):
        raise ConfigError(UNIMPLEMENTED, f"{raw.name('alioss')}: AliOSS upload is not supported")
    backends = [backend.config(raw.section(key)) for key, backend in BACKENDS.items() if raw.values.get(key)]
    if len(backends) > 1:
        raise ConfigError(INVALID_ARGUMENT, f"{raw.path}: configure only one of {_listed('and')}")
    retry = _retry(raw)
    for key, backend in BACKENDS.items():
        if backend.retries and raw.values.get(key):
            retry = _retry(raw.section(key), retry)
    return StorageSettings(
        prefix=raw.text("prefix"),
        presign=raw.flag("generate_presigned_url"),
        retry=retry,
        default=backends[0] if backends else None,
    )


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


def _listed(conjunction: str) -> str:
    """The backends' keys for messages: ``s3, gcp and azure``."""
    *first, last = BACKENDS
    return f"{', '.join(first)} {conjunction} {last}"


# What ``redact.redact_request`` hides, per ``DirectFileOutput`` field: every backend's, and AliOSS's (refused, but
# a request naming it is still reported).
SECRET_FIELDS: dict[str, Mapping[str, str]] = {
    **{key: backend.secrets for key, backend in BACKENDS.items()},
    "aliOSS": {"access_key": "{access_key}", "secret": "{secret}"},
}
