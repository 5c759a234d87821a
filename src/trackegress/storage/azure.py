"""Azure Blob storage, configured like upstream's ``AzureBlobUpload``.

``AZURITE_BLOB_STORAGE_URL`` (e.g. ``http://127.0.0.1:10000``) sends uploads to an Azurite emulator instead; the
location then names the emulator's URL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from obstore.store import AzureStore

from trackegress.storage.base import url_path
from trackegress.storage.objectstore import ObjectStoreStorage, client_options, retry_config
from trackegress.storage.settings import Azure, Retry

EMULATOR_ENV = "AZURITE_BLOB_STORAGE_URL"


def account_url(azure: Azure, env: Mapping[str, str] = os.environ) -> str:
    """``https://<account>.blob.core.windows.net``, or the emulator's ``<url>/<account>``."""
    emulator = env.get(EMULATOR_ENV, "").rstrip("/")
    return f"{emulator}/{azure.account_name}" if emulator else f"https://{azure.account_name}.blob.core.windows.net"


def location(azure: Azure, key: str, env: Mapping[str, str] = os.environ) -> str:
    """Upstream's location: ``https://<account>.blob.core.windows.net/<container>/<key>``."""
    container = azure.container_name.strip("/")
    return f"{account_url(azure, env)}/{container + '/' if container else ''}{url_path(key)}"


def open_azure(azure: Azure, retry: Retry) -> ObjectStoreStorage:
    """An Azure Blob ``Storage`` authenticated with the account key."""
    url = account_url(azure)
    store = AzureStore(
        azure.container_name.strip("/"),
        account_name=azure.account_name,
        account_key=azure.account_key,
        endpoint=url,
        retry_config=retry_config(retry),
        client_options=client_options(url),
    )
    return ObjectStoreStorage("Azure", store, lambda key: location(azure, key), secrets=(azure.account_key,))
