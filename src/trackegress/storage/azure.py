"""Azure Blob storage, configured like upstream's ``AzureBlobUpload``: its settings, their parsers (``storage.azure``
in egress.yaml, a request's ``AzureBlobUpload``) and its client.

``AZURITE_BLOB_STORAGE_URL`` (e.g. ``http://127.0.0.1:10000``) sends uploads to an Azurite emulator instead; the
location then names the emulator's URL.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from livekit.protocol import egress
from obstore.store import AzureStore

from trackegress.configfile import Section
from trackegress.errors import INVALID_ARGUMENT, ConfigError
from trackegress.storage.base import PRESIGN_EXPIRY, UploadError, url_path
from trackegress.storage.objectstore import ObjectStoreStorage, client_options, retry_config
from trackegress.storage.options import BackendSettings, Retry

EMULATOR_ENV = "AZURITE_BLOB_STORAGE_URL"
SAS_VERSION = "2023-11-03"
SECRETS = {"account_key": "{account_key}"}  # request fields that are credentials → placeholder
_FIELDS = ("account_name", "account_key", "container_name")


@dataclass(frozen=True)
class Azure(BackendSettings):
    """``AzureBlobUpload`` / ``storage.azure``."""

    account_name: str
    account_key: str
    container_name: str


def from_request(file: egress.DirectFileOutput) -> Azure:
    az = file.azure
    return _check(Azure(az.account_name, az.account_key, az.container_name))


def from_config(raw: Section) -> Azure:
    raw.refuse_unknown(frozenset(_FIELDS))
    return _check(Azure(raw.text("account_name"), raw.text("account_key"), raw.text("container_name")))


def _check(azure: Azure) -> Azure:
    missing = [name for name in _FIELDS if not getattr(azure, name)]
    if missing:
        raise ConfigError(INVALID_ARGUMENT, f"azure.{', azure.'.join(missing)} required")
    return azure


def bucket_id(azure: Azure) -> str:
    """Which container a key lives in (no credentials)."""
    return f"azure:{azure.account_name}:{azure.container_name}"


def account_url(azure: Azure, env: Mapping[str, str] = os.environ) -> str:
    """``https://<account>.blob.core.windows.net``, or the emulator's ``<url>/<account>``."""
    emulator = env.get(EMULATOR_ENV, "").rstrip("/")
    return f"{emulator}/{azure.account_name}" if emulator else f"https://{azure.account_name}.blob.core.windows.net"


def location(azure: Azure, key: str, env: Mapping[str, str] = os.environ) -> str:
    """Upstream's location: ``https://<account>.blob.core.windows.net/<container>/<key>``."""
    container = azure.container_name.strip("/")
    return f"{account_url(azure, env)}/{container + '/' if container else ''}{url_path(key)}"


def presigned_url(
    azure: Azure, key: str, now: datetime.datetime | None = None, env: Mapping[str, str] = os.environ,
) -> str:
    """``location`` with a read-only service SAS for the blob (``sp=r``, ``sr=b``), signed with the account key and
    valid for ``PRESIGN_EXPIRY``; HTTPS only (``spr=https``) unless the account URL is plain HTTP (an emulator).

    obstore's own signer signs the percent-encoded blob path, which Azure rejects for names with spaces or non-ASCII
    characters, hence this one (Microsoft's "Create a service SAS" string-to-sign, version 2020-12-06 and later).
    """
    expiry = ((now or datetime.datetime.now(datetime.UTC)) + PRESIGN_EXPIRY).strftime("%Y-%m-%dT%H:%M:%SZ")
    protocol = "https" if account_url(azure, env).startswith("https://") else ""
    container = azure.container_name.strip("/")
    resource = f"/blob/{azure.account_name}/{container + '/' if container else ''}{key.lstrip('/')}"
    # permissions, start, expiry, resource, identifier, IP, protocol, version, resource type, snapshot time,
    # encryption scope, then the five response-header overrides (rscc, rscd, rsce, rscl, rsct)
    string_to_sign = "\n".join(["r", "", expiry, resource, "", "", protocol, SAS_VERSION, "b", "", "", "", "", "", "",
                                ""])
    try:
        secret = base64.b64decode(azure.account_key, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError("Azure presigning failed: the account key is not valid base64") from None
    signature = base64.b64encode(hmac.new(secret, string_to_sign.encode(), hashlib.sha256).digest()).decode()
    query = {"sv": SAS_VERSION, "se": expiry, "sr": "b", "sp": "r"} | ({"spr": protocol} if protocol else {})
    return f"{location(azure, key, env)}?{urlencode(query | {'sig': signature})}"


class AzureStorage(ObjectStoreStorage):
    """Uploads through obstore, presigned URLs from ``presigned_url``."""

    def __init__(self, azure: Azure, retry: Retry) -> None:
        url = account_url(azure)
        store = AzureStore(
            azure.container_name.strip("/"),
            account_name=azure.account_name,
            account_key=azure.account_key,
            endpoint=url,
            retry_config=retry_config(retry),
            client_options=client_options(url),
        )
        super().__init__("Azure", store, lambda key: location(azure, key), secrets=(azure.account_key,))
        self._azure = azure

    async def presign(self, key: str) -> str:
        return presigned_url(self._azure, key)


def open_azure(azure: Azure, retry: Retry) -> AzureStorage:
    """An Azure Blob ``Storage`` authenticated with the account key."""
    return AzureStorage(azure, retry)
