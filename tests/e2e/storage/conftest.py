"""The servers the storage tests upload to (MinIO, fake-gcs-server, Azurite; tinyproxy), one each per module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from support.forward_proxy import TinyProxy
from support.storage_checks import (
    BACKUP_BUCKET,
    BUCKET,
    CONTAINER,
    PROXY_PASSWORD,
    PROXY_USER,
    azure_client,
    forward_proxy,
    running,
    s3_client,
)
from support.storage_servers import AZURITE, FAKE_GCS, MINIO, Azurite, FakeGCS, MinIO, TokenServer


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinIO]:
    with running(MinIO, MINIO, tmp_path_factory.mktemp("minio")) as server:
        client = s3_client(server)
        for bucket in (BUCKET, BACKUP_BUCKET):
            client.create_bucket(Bucket=bucket)
        yield server


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGCS]:
    with running(FakeGCS, FAKE_GCS, tmp_path_factory.mktemp("gcs")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with running(Azurite, AZURITE, tmp_path_factory.mktemp("azurite")) as server:
        azure_client(server).create_container(CONTAINER)
        yield server


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    server = TokenServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def open_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    with forward_proxy(tmp_path_factory.mktemp("proxy")) as proxy:
        yield proxy


@pytest.fixture
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    with forward_proxy(tmp_path_factory.mktemp("auth-proxy"), PROXY_USER, PROXY_PASSWORD) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def emulators(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Point the GCS and Azure backends at the emulators of the test, if it uses them."""
    if "gcs" in request.fixturenames:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", request.getfixturevalue("gcs").url)
    if "azurite" in request.fixturenames:
        monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", request.getfixturevalue("azurite").url)
