"""The storage backends, one row each: a new backend is a module (its settings, parsers and client) plus a row."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from livekit.protocol import egress

from trackegress.configfile import Section
from trackegress.storage import azure, gcs, s3
from trackegress.storage.base import Storage
from trackegress.storage.options import BackendSettings, Retry

T = TypeVar("T", bound=BackendSettings)


@dataclass(frozen=True)
class Backend(Generic[T]):
    """How one backend is read, opened and told apart."""

    settings: type[T]
    config: Callable[[Section], T]  # from its egress.yaml block (storage.<key>, backup.<key>)
    request: Callable[[egress.DirectFileOutput], T]  # from its DirectFileOutput field (<key>)
    secrets: Mapping[str, str]  # the request fields that are credentials (dotted path) → their placeholder
    open: Callable[[T, Retry], Storage]  # its client
    bucket: Callable[[T], str]  # which bucket a key lives in, without credentials (output claims)
    retries: bool = False  # its block may set max_retries / min_retry_delay / max_retry_delay too


# by egress.yaml key, which is also the DirectFileOutput field
BACKENDS: dict[str, Backend[Any]] = {
    "s3": Backend(s3.S3, s3.from_config, s3.from_request, s3.SECRETS, s3.open_s3, s3.bucket_id, retries=True),
    "gcp": Backend(gcs.GCP, gcs.from_config, gcs.from_request, gcs.SECRETS, gcs.GCSStorage, gcs.bucket_id),
    "azure": Backend(azure.Azure, azure.from_config, azure.from_request, azure.SECRETS, azure.open_azure,
                     azure.bucket_id),
}


def backend_of(settings: BackendSettings) -> Backend[Any]:
    """The row of the backend ``settings`` are for."""
    return next(row for row in BACKENDS.values() if type(settings) is row.settings)
