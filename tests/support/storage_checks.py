"""What the storage tests share: the servers' clients, upload settings, recording with an upload, checks."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import av
import boto3
import pytest
from azure.storage.blob import BlobServiceClient
from livekit.protocol import egress

from support.egress_helpers import record_published
from support.forward_proxy import TINYPROXY, TinyProxy
from support.media import h264_canonical
from support.server import LiveKitServer
from support.storage_servers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, FakeGCS, MinIO, StorageServer
from trackegress.config import Config
from trackegress.request import check_track_request
from trackegress.storage.settings import StorageSettings

Status = egress.EgressStatus
BUCKET, BACKUP_BUCKET, CONTAINER = "recordings", "backup", "recordings"
FAST_RETRY = {"max_retries": 3, "min_retry_delay": "100ms", "max_retry_delay": "300ms"}
S = TypeVar("S", bound=StorageServer)


def require(binary: Path) -> None:
    """Skip the test when ``binary`` is not installed (fail in CI)."""
    if not os.access(binary, os.X_OK):
        reason = f"{binary.name} not installed at {binary} (run scripts/install-test.sh)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def running(cls: type[S], binary: Path, folder: Path) -> Iterator[S]:
    """A started server (skipped when not installed, outside CI), closed afterwards."""
    require(binary)
    server = cls(folder)
    server.start()
    try:
        yield server
    finally:
        server.close()


PROXY_USER, PROXY_PASSWORD = "recorder", "Proxy-pw.42"  # tinyproxy's BasicAuth takes [-A-Za-z0-9._] only


@contextmanager
def forward_proxy(folder: Path, username: str = "", password: str = "") -> Iterator[TinyProxy]:
    """tinyproxy on a free loopback port (with basic auth when ``username`` is set), stopped afterwards."""
    require(TINYPROXY)
    proxy = TinyProxy(folder, username, password)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


def s3_client(server: MinIO) -> Any:
    return boto3.client("s3", endpoint_url=server.url, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret, region_name="us-east-1")


def azure_client(server: Azurite) -> BlobServiceClient:
    return BlobServiceClient(f"{server.url}/{AZURITE_ACCOUNT}",
                             credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})


def s3_upload(server: MinIO, bucket: str = BUCKET, **fields: Any) -> egress.S3Upload:
    values: dict[str, Any] = {"access_key": server.access_key, "secret": server.secret, "endpoint": server.url,
                              "bucket": bucket, "force_path_style": True, "region": "us-east-1"}
    return egress.S3Upload(**(values | fields))


def s3_settings(server: MinIO, bucket: str = BUCKET) -> dict[str, Any]:
    return {"access_key": server.access_key, "secret": server.secret, "endpoint": server.url, "bucket": bucket,
            "force_path_style": True}


def config_for(livekit: LiveKitServer, local_dir: Path, storage: StorageSettings | None = None) -> Config:
    return Config(ws_url=livekit.url, api_key=livekit.api_key, api_secret=livekit.api_secret, local_dir=local_dir,
                  storage=storage)


async def record(
    livekit: LiveKitServer, room: str, media: Path, file: egress.DirectFileOutput, config: Config,
    on_update: Callable[[egress.EgressInfo], None] | None = None,
) -> tuple[egress.EgressInfo, list[bytes], str]:
    """Publish ``media``, record it with ``file`` as output until the publisher leaves; (info, sent, track)."""

    def request(track: str) -> egress.TrackEgressRequest:
        checked = egress.TrackEgressRequest(room_name=room, track_id=track, file=file)
        check_track_request(checked, config.local_dir)
        return checked

    return await record_published(livekit, room, media, config, request, on_update=on_update, timeout=60)


def http_get(url: str) -> tuple[int, bytes, str]:
    """A plain GET without credentials: (status, body, Content-Type)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


def packets(data: bytes, suffix: str, folder: Path) -> list[bytes]:
    """The encoded frames in a recording (H.264 back in Annex B, canonical start codes)."""
    path = folder / f"downloaded-{uuid.uuid4().hex[:6]}{suffix}"
    path.write_bytes(data)
    if suffix == ".mp4":
        annexb = path.with_suffix(".h264")
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-c", "copy", "-bsf:v", "h264_mp4toannexb",
                        str(annexb)], check=True)
        with av.open(str(annexb), format="h264") as container:
            return [h264_canonical(bytes(p)) for p in container.demux() if p.size]
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux() if p.size]


def assert_published(data: bytes, suffix: str, sent: list[bytes], folder: Path) -> None:
    """The object holds the published frames, in order (at most the first GOP missing)."""
    recorded = packets(data, suffix, folder)
    skipped = len(sent) - len(recorded)
    assert 0 <= skipped <= 30
    assert recorded == [h264_canonical(f) if suffix == ".mp4" else f for f in sent[skipped:]]


def ending_at(updates: list[egress.EgressInfo]) -> int:
    """When the egress went ENDING (its upload starts right after)."""
    return next(u.updated_at for u in updates if u.status == Status.EGRESS_ENDING)


def assert_status(info: egress.EgressInfo, status: str) -> None:
    assert Status.Name(info.status) == status, info.error


def storage_requests(backend: str, server: StorageServer, keys: list[str]) -> list[str]:
    """The request lines a forward proxy logs for uploading ``keys`` to ``server`` (one request each)."""
    if backend == "s3":
        return [f"PUT {server.url}/{BUCKET}/{key} HTTP/1.1" for key in keys]
    return [f"POST {server.url}/upload/storage/v1/b/{BUCKET}/o?name={key}&uploadType=media HTTP/1.1" for key in keys]


def backend_server(backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> StorageServer:
    """MinIO for "s3", fake-gcs-server for "gcs" (then the GCS backend's emulator)."""
    server: StorageServer = request.getfixturevalue({"s3": "minio", "gcs": "gcs"}[backend])
    if isinstance(server, FakeGCS):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    return server


def stored(server: StorageServer, key: str) -> bytes:
    if isinstance(server, MinIO):
        return bytes(s3_client(server).get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert isinstance(server, FakeGCS)
    return server.download(BUCKET, key)
