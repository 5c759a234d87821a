"""Uploads against real storage servers on loopback: MinIO (S3), fake-gcs-server (GCS) and Azurite (Azure Blob).

Every test records a real track (livekit-server + our publisher) with an upload config, then checks the object with
an independent client (boto3, the JSON API, azure-storage-blob).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

import av
import boto3
import pytest
from azure.storage.blob import BlobServiceClient
from google.protobuf.json_format import MessageToJson
from livekit.protocol import egress
from support.egress_helpers import record_published, until
from support.forward_proxy import TINYPROXY, TinyProxy
from support.media import h264_canonical
from support.server import LiveKitServer, RoomFactory
from support.signed_urls import gcs_v4_problem
from support.storage_servers import (
    AZURITE,
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    FAKE_GCS,
    MINIO,
    Azurite,
    FakeGCS,
    MinIO,
    SlowProxy,
    StorageServer,
    TokenServer,
    service_account,
)

from trackegress.config import Config
from trackegress.request import check_track_request
from trackegress.storage.azure import presigned_url
from trackegress.storage.objectstore import PART_SIZE
from trackegress.storage.settings import GCP, S3, Azure, Destination, Retry, StorageSettings
from trackegress.storage.uploader import Uploader

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


# one backend each: object, Content-Type, key, location, manifest


async def test_s3_upload_with_prefix_template_metadata_and_tags(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], minio: MinIO, tmp_path: Path,
) -> None:
    room = await make_room()
    storage = StorageSettings.from_config({"prefix": "pre/fix", "s3": s3_settings(minio, "unused") | FAST_RETRY})
    upload = s3_upload(minio, metadata={"room": room}, tagging="team=rec&kind=audio", content_disposition="attachment")
    file = egress.DirectFileOutput(filepath="{room_name}/{publisher_identity}-{track_id}", s3=upload)
    info, sent, track = await record(livekit_server, room, sample_media["opus"], file, config_for(
        livekit_server, tmp_path, storage))

    assert_status(info, "EGRESS_COMPLETE")
    result = info.file_results[0]
    key = f"pre/fix/{room}/alice-{track}.ogg"
    assert result.filename == f"{room}/alice-{track}.ogg"
    assert result.location == f"{minio.url}/{BUCKET}/{key}"
    assert not info.backup_storage_used
    client = s3_client(minio)
    head = client.head_object(Bucket=BUCKET, Key=key)
    assert (head["ContentType"], head["ContentDisposition"], head["Metadata"]) == ("audio/ogg", "attachment",
                                                                                   {"room": room})
    tags = {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}
    assert tags == {"team": "rec", "kind": "audio"}
    data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert len(data) == result.size
    assert_published(data, ".ogg", sent, tmp_path)
    manifest_key = f"pre/fix/{room}/{info.egress_id}.json"
    assert info.manifest_location == f"{minio.url}/{BUCKET}/{manifest_key}"
    manifest_object = client.get_object(Bucket=BUCKET, Key=manifest_key)
    assert manifest_object["ContentType"] == "application/json"
    manifest = json.loads(manifest_object["Body"].read())
    assert manifest["files"] == [{"filename": result.filename, "location": result.location}]
    assert manifest["track_id"] == track and manifest["egress_id"] == info.egress_id
    assert list(tmp_path.glob("EG_*")) == [], "the local copy is removed once uploaded"
    assert minio.secret not in MessageToJson(info)


async def test_configured_s3_storage_with_presigned_urls(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], minio: MinIO, tmp_path: Path,
) -> None:
    storage = StorageSettings.from_config({"generate_presigned_url": True, "s3": s3_settings(minio)})
    file = egress.DirectFileOutput(filepath="presigned/")  # no upload in the request: the service's storage
    info, sent, track = await record(livekit_server, await make_room(), sample_media["vp8"], file,
                                     config_for(livekit_server, tmp_path, storage))

    assert_status(info, "EGRESS_COMPLETE")
    result = info.file_results[0]
    assert result.filename.startswith(f"presigned/{track}-") and result.filename.endswith(".webm")
    assert result.location.startswith(f"{minio.url}/{BUCKET}/{result.filename}?X-Amz-Algorithm=AWS4-HMAC-SHA256")
    assert "X-Amz-Expires=604800" in result.location
    with urllib.request.urlopen(result.location, timeout=5) as response:
        assert response.headers["Content-Type"] == "video/webm"
        assert_published(response.read(), ".webm", sent, tmp_path)
    with urllib.request.urlopen(info.manifest_location, timeout=5) as response:
        assert json.load(response)["files"][0]["location"] == result.location


async def test_azure_presigned_urls_are_read_only_sas_urls_azurite_accepts(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], azurite: Azurite,
    tmp_path: Path,
) -> None:
    azure = Azure(AZURITE_ACCOUNT, AZURITE_KEY, CONTAINER)
    storage = StorageSettings.from_config({"generate_presigned_url": True, "prefix": "signed", "azure": {
        "account_name": azure.account_name, "account_key": azure.account_key, "container_name": CONTAINER}})
    file = egress.DirectFileOutput(filepath="sas/{track_id} é")  # a space and UTF-8 in the blob name
    info, sent, track = await record(livekit_server, await make_room(), sample_media["opus"], file,
                                     config_for(livekit_server, tmp_path / "rec", storage))
    signed_at = datetime.datetime.now(datetime.UTC)

    assert_status(info, "EGRESS_COMPLETE")
    result = info.file_results[0]
    key = f"signed/sas/{track} é.ogg"
    blob_url = f"{azurite.url}/{AZURITE_ACCOUNT}/{CONTAINER}/signed/sas/{track}%20%C3%A9.ogg"
    url, _, query = result.location.partition("?")
    assert url == blob_url
    sas = dict(parse_qsl(query, strict_parsing=True))
    assert sorted(sas) == ["se", "sig", "sp", "sr", "sv"]  # no spr=https: the emulator speaks plain HTTP
    assert (sas["sr"], sas["sp"], sas["sv"]) == ("b", "r", "2023-11-03")
    expiry = datetime.datetime.strptime(sas["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs(expiry - signed_at - datetime.timedelta(days=7)) < datetime.timedelta(minutes=1)

    stored = azure_client(azurite).get_blob_client(CONTAINER, key).download_blob().readall()
    status, data, mime = http_get(result.location)
    assert (status, mime) == (200, "audio/ogg")
    assert data == stored and len(data) == result.size
    assert_published(data, ".ogg", sent, tmp_path)
    manifest_url = f"{azurite.url}/{AZURITE_ACCOUNT}/{CONTAINER}/signed/sas/{info.egress_id}.json"
    assert info.manifest_location.startswith(f"{manifest_url}?sv=2023-11-03&se=")
    status, manifest, mime = http_get(info.manifest_location)
    assert (status, mime) == (200, "application/json")
    manifest_blob = f"signed/sas/{info.egress_id}.json"
    assert manifest == azure_client(azurite).get_blob_client(CONTAINER, manifest_blob).download_blob().readall()
    assert json.loads(manifest)["files"][0]["location"] == result.location

    # Azurite checks the signature, the permission and the expiry
    assert http_get(blob_url)[0] == 403  # no SAS: the container is private
    assert http_get(f"{manifest_url}?{query}")[0] == 403  # the file's SAS does not cover the manifest
    assert http_get(result.location.replace("sp=r", "sp=rw"))[0] == 403
    assert http_get(presigned_url(azure, key, now=signed_at - datetime.timedelta(days=8)))[0] == 403
    assert AZURITE_KEY not in MessageToJson(info)


async def test_gcs_presigned_urls_are_v4_signed_urls(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], gcs: FakeGCS,
    token_server: TokenServer, tmp_path: Path,
) -> None:
    credentials = service_account(token_server.url, tmp_path)
    storage = StorageSettings.from_config({"generate_presigned_url": True,
                                           "gcp": {"bucket": BUCKET, "credentials_json": credentials}})
    file = egress.DirectFileOutput(filepath="signed/{track_id} é")
    info, sent, track = await record(livekit_server, await make_room(), sample_media["opus"], file,
                                     config_for(livekit_server, tmp_path / "rec", storage))
    now = datetime.datetime.now(datetime.UTC)

    assert_status(info, "EGRESS_COMPLETE")
    result = info.file_results[0]
    key = f"signed/{track} é.ogg"
    email = quote("recorder@trackegress-test.iam.gserviceaccount.com", safe="")
    assert result.location.startswith(
        f"{gcs.url}/{BUCKET}/signed/{track}%20%C3%A9.ogg?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        f"&X-Goog-Credential={email}%2F{now:%Y%m%d}%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Date={now:%Y%m%d}T")
    signing = dict(parse_qsl(urlsplit(result.location).query))
    assert (signing["X-Goog-Expires"], signing["X-Goog-SignedHeaders"]) == ("604800", "host")
    assert len(signing["X-Goog-Signature"]) == 512  # hex of a 2048-bit RSA signature
    # fake-gcs-server ignores all of these, so the signature is checked here with the service account's key
    assert gcs_v4_problem(result.location, credentials, now) == ""
    assert gcs_v4_problem(info.manifest_location, credentials, now) == ""

    status, data, mime = http_get(result.location)
    assert (status, mime) == (200, "audio/ogg")
    assert data == gcs.download(BUCKET, key) and len(data) == result.size
    assert_published(data, ".ogg", sent, tmp_path)
    status, manifest, mime = http_get(info.manifest_location)
    assert (status, mime) == (200, "application/json")
    assert manifest == gcs.download(BUCKET, f"signed/{info.egress_id}.json")
    assert json.loads(manifest)["files"][0]["location"] == result.location

    # the check can fail: the file's signature does not cover the manifest, nor the eighth day
    swapped = info.manifest_location.partition("?")[0] + "?" + urlsplit(result.location).query
    assert gcs_v4_problem(swapped, credentials, now) == "the signature does not match"
    assert gcs_v4_problem(result.location, credentials, now + datetime.timedelta(days=7, minutes=1)).startswith(
        "not valid at")
    assert "PRIVATE KEY" not in MessageToJson(info)


async def test_gcs_upload_with_service_account(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], gcs: FakeGCS,
    token_server: TokenServer, tmp_path: Path,
) -> None:
    credentials = service_account(token_server.url, tmp_path)
    file = egress.DirectFileOutput(filepath="gcs/{track_id}.webm",
                                   gcp=egress.GCPUpload(credentials=credentials, bucket=BUCKET))
    room = await make_room()
    info, sent, track = await record(livekit_server, room, sample_media["vp8"], file,
                                     config_for(livekit_server, tmp_path / "rec"))

    assert_status(info, "EGRESS_COMPLETE")
    key = f"gcs/{track}.webm"
    assert info.file_results[0].location == f"{gcs.url}/{BUCKET}/{key}"
    assert gcs.metadata(BUCKET, key)["contentType"] == "video/webm"
    assert_published(gcs.download(BUCKET, key), ".webm", sent, tmp_path)
    manifest = json.loads(gcs.download(BUCKET, f"gcs/{info.egress_id}.json"))
    assert manifest["files"][0]["location"] == info.file_results[0].location
    assert token_server.grants >= 1, "requests were authorised with a token from the service account"
    assert "PRIVATE KEY" not in MessageToJson(info)


async def test_azure_upload(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], azurite: Azurite,
    tmp_path: Path,
) -> None:
    upload = egress.AzureBlobUpload(account_name=AZURITE_ACCOUNT, account_key=AZURITE_KEY, container_name=CONTAINER)
    file = egress.DirectFileOutput(filepath="azure/{track_id} video", azure=upload)
    info, sent, track = await record(livekit_server, await make_room(), sample_media["h264"], file,
                                     config_for(livekit_server, tmp_path / "rec"))

    assert_status(info, "EGRESS_COMPLETE")
    key = f"azure/{track} video.mp4"
    assert info.file_results[0].location == f"{azurite.url}/{AZURITE_ACCOUNT}/{CONTAINER}/azure/{track}%20video.mp4"
    blob = azure_client(azurite).get_blob_client(CONTAINER, key)
    assert blob.get_blob_properties().content_settings.content_type == "video/mp4"
    assert_published(blob.download_blob().readall(), ".mp4", sent, tmp_path)
    manifest = azure_client(azurite).get_blob_client(CONTAINER, f"azure/{info.egress_id}.json")
    assert json.loads(manifest.download_blob().readall())["egress_id"] == info.egress_id
    assert AZURITE_KEY not in MessageToJson(info)


# outages and bad credentials


async def test_primary_down_retries_then_backup_is_used(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], minio: MinIO, gcs: FakeGCS,
    tmp_path: Path,
) -> None:
    storage = StorageSettings.from_config(
        {"s3": s3_settings(minio) | FAST_RETRY}, backup={"prefix": "backup", "gcp": {"bucket": BUCKET}},
    )
    file = egress.DirectFileOutput(filepath="outage/{track_id}")
    updates: list[egress.EgressInfo] = []
    minio.stop()
    try:
        info, sent, track = await record(livekit_server, await make_room(), sample_media["opus"], file,
                                         config_for(livekit_server, tmp_path, storage), updates.append)
    finally:
        minio.start()

    assert_status(info, "EGRESS_COMPLETE")
    assert info.backup_storage_used
    assert info.ended_at - ending_at(updates) >= 0.3e9, "3 retries, at least 100 ms apart, before the backup"
    key = f"backup/outage/{track}.ogg"
    assert info.file_results[0].location == f"{gcs.url}/{BUCKET}/{key}"
    assert_published(gcs.download(BUCKET, key), ".ogg", sent, tmp_path)
    assert info.manifest_location == f"{gcs.url}/{BUCKET}/backup/outage/{info.egress_id}.json"
    assert "Contents" not in s3_client(minio).list_objects_v2(Bucket=BUCKET, Prefix="outage/")


async def test_upload_retries_until_the_server_is_back(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], minio: MinIO, tmp_path: Path,
) -> None:
    retry = {"max_retries": 20, "min_retry_delay": "500ms", "max_retry_delay": "1s"}
    storage = StorageSettings.from_config({"s3": s3_settings(minio) | retry})
    restarted: list[asyncio.Task[None]] = []
    updates: list[egress.EgressInfo] = []

    def on_update(info: egress.EgressInfo) -> None:
        updates.append(info)
        if info.status == Status.EGRESS_ENDING:  # the upload starts now, against a stopped server
            restarted.append(asyncio.create_task(asyncio.sleep(1.5)))

    minio.stop()
    try:
        job = asyncio.create_task(record(livekit_server, await make_room(), sample_media["opus"],
                                         egress.DirectFileOutput(filepath="late/"), config_for(
                                             livekit_server, tmp_path, storage), on_update))
        await until(lambda: restarted, timeout=30)
        await restarted[0]
    finally:
        await asyncio.to_thread(minio.start)
    info, sent, _ = await job

    assert_status(info, "EGRESS_COMPLETE")
    assert not info.backup_storage_used
    assert info.ended_at - ending_at(updates) >= 1.5e9, "the upload waited for the server"
    data = s3_client(minio).get_object(Bucket=BUCKET, Key=info.file_results[0].filename)["Body"].read()
    assert_published(data, ".ogg", sent, tmp_path)


async def test_everything_down_fails_keeps_the_recording_and_loses_nothing(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], minio: MinIO, gcs: FakeGCS,
    tmp_path: Path,
) -> None:
    canary = s3_client(minio)
    canary.put_object(Bucket=BUCKET, Key="canary/before-outage", Body=b"still here")
    storage = StorageSettings.from_config({"s3": s3_settings(minio) | FAST_RETRY},
                                          backup={"gcp": {"bucket": BUCKET}, **FAST_RETRY})
    minio.stop()
    gcs.stop()
    try:
        info, sent, track = await record(livekit_server, await make_room(), sample_media["opus"],
                                         egress.DirectFileOutput(filepath="lost/{track_id}"),
                                         config_for(livekit_server, tmp_path, storage))
    finally:
        minio.start()
        gcs.start()

    assert_status(info, "EGRESS_FAILED")
    assert info.error.startswith("S3 upload failed: ") and "; backup: GCP upload failed: " in info.error
    assert minio.secret not in info.error and minio.access_key not in info.error
    result = info.file_results[0]
    local = tmp_path / info.egress_id / f"{track}.ogg"
    assert result.location == str(local.resolve()) and result.filename == f"lost/{track}.ogg"
    assert local.stat().st_size == result.size
    assert_published(local.read_bytes(), ".ogg", sent, tmp_path)
    assert info.manifest_location == str((tmp_path / info.egress_id / f"{info.egress_id}.json").resolve())
    assert not info.backup_storage_used, "nothing landed in the backup"

    assert canary.get_object(Bucket=BUCKET, Key="canary/before-outage")["Body"].read() == b"still here"
    uploader = Uploader(Destination(S3(**s3_settings(minio)), retry=Retry(max_retries=1)))
    location = await uploader.upload(local, result.filename)
    await uploader.close()
    assert location == f"{minio.url}/{BUCKET}/lost/{track}.ogg"
    assert canary.get_object(Bucket=BUCKET, Key=result.filename)["Body"].read() == local.read_bytes()


@pytest.mark.parametrize("backend", ["s3", "azure"])
async def test_wrong_credentials_fail_with_a_redacted_error(
    backend: str, livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path],
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    file = egress.DirectFileOutput(filepath="denied/")
    if backend == "s3":
        minio: MinIO = request.getfixturevalue("minio")
        secret = "wrong-secret-for-the-test"
        file.s3.CopyFrom(s3_upload(minio, secret=secret))
        expected = ("S3 upload failed: ", "403", "SignatureDoesNotMatch")
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", azurite.url)
        secret = AZURITE_KEY[:-8] + "AAAAAAA="
        file.azure.CopyFrom(egress.AzureBlobUpload(account_name=AZURITE_ACCOUNT, account_key=secret,
                                                   container_name=CONTAINER))
        expected = ("Azure upload failed: ", "403", "AuthorizationFailure")
    info, _, _ = await record(livekit_server, await make_room(), sample_media["opus"], file,
                              config_for(livekit_server, tmp_path))

    assert_status(info, "EGRESS_FAILED")
    assert info.error_code == 500
    assert info.error.startswith(expected[0]) and all(part in info.error for part in expected[1:]), info.error
    assert secret not in MessageToJson(info)
    assert "Debug source" not in info.error
    result = info.file_results[0]
    assert Path(result.location).stat().st_size == result.size > 0


@pytest.mark.parametrize("backend", ["s3", "gcs", "azure"])
async def test_large_files_go_up_in_parts(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(2 * PART_SIZE + 12345))
    server: StorageServer = request.getfixturevalue({"s3": "minio", "gcs": "gcs", "azure": "azurite"}[backend])
    settings: dict[str, Any] = {
        "s3": {"s3": s3_settings(server)} if isinstance(server, MinIO) else {},
        "gcs": {"gcp": {"bucket": BUCKET}},
        "azure": {"azure": {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY, "container_name": CONTAINER}},
    }[backend]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", server.url)
    destination = StorageSettings.from_config(settings).destination(None)
    assert destination is not None
    uploader = Uploader(destination)
    await uploader.upload(big, "parts/big.mp4")
    await uploader.close()

    if isinstance(server, MinIO):
        head = s3_client(server).head_object(Bucket=BUCKET, Key="parts/big.mp4")
        assert head["ETag"].endswith('-3"') and head["ContentType"] == "video/mp4"  # a 3-part multipart upload
        data = s3_client(server).get_object(Bucket=BUCKET, Key="parts/big.mp4")["Body"].read()
    elif isinstance(server, Azurite):
        blob = azure_client(server).get_blob_client(CONTAINER, "parts/big.mp4")
        assert len(blob.get_block_list("committed")[0]) == 3  # staged as 3 blocks
        data = blob.download_blob().readall()
    else:
        assert isinstance(server, FakeGCS)
        assert server.metadata(BUCKET, "parts/big.mp4")["contentType"] == "video/mp4"
        data = server.download(BUCKET, "parts/big.mp4")
    assert data == big.read_bytes()


async def test_refused_gcs_credentials_fail_with_a_redacted_error(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], gcs: FakeGCS,
    token_server: TokenServer, tmp_path: Path,
) -> None:
    token_server.refuse = True
    credentials = service_account(token_server.url, tmp_path)
    file = egress.DirectFileOutput(filepath="denied/", gcp=egress.GCPUpload(credentials=credentials, bucket=BUCKET))
    info, _, _ = await record(livekit_server, await make_room(), sample_media["opus"], file,
                              config_for(livekit_server, tmp_path / "rec"))

    assert_status(info, "EGRESS_FAILED")
    refused = '{"error": "invalid_grant"}'
    assert info.error == f"GCP upload failed: HTTP 400 Bad Request: {refused} from {token_server.url}"
    assert "PRIVATE KEY" not in MessageToJson(info)
    assert Path(info.file_results[0].location).stat().st_size == info.file_results[0].size > 0


async def upload_while_stopping(minio: MinIO, big: Path, backup: Destination | None) -> tuple[Uploader, str]:
    """Upload ``big`` to MinIO through a slow relay and stop MinIO once a few MB are through; restart it only when
    there is no backup (while the upload still retries). Returns the uploader and the location."""
    proxy = SlowProxy(minio.port, rate=2 * 1024 * 1024)  # per connection; 4 parts go up at once
    await proxy.start()
    settings = S3(**(s3_settings(minio) | {"endpoint": proxy.url}))
    retry = Retry(20, 0.2, 1.0) if backup is None else Retry(3, 0.1, 0.3)
    uploader = Uploader(Destination(settings, retry=retry), backup)
    upload = asyncio.create_task(uploader.upload(big, "cut/long.mp4"))
    try:
        async with asyncio.timeout(20):
            while proxy.uploaded < 4 * 1024 * 1024:
                await asyncio.sleep(0.02)
        assert not upload.done()
        minio.stop()
        if backup is None:
            await asyncio.sleep(1)
            await asyncio.to_thread(minio.start)
        return uploader, await asyncio.wait_for(upload, 60)
    finally:
        await uploader.close()
        await proxy.close()
        if backup is not None:
            minio.start()


async def test_server_stopped_during_a_multipart_upload_and_restarted(minio: MinIO, tmp_path: Path) -> None:
    big = tmp_path / "long.mp4"
    big.write_bytes(os.urandom(3 * PART_SIZE + 1000))
    uploader, location = await upload_while_stopping(minio, big, backup=None)

    assert not uploader.backup_used and location.endswith(f"/{BUCKET}/cut/long.mp4")
    head = s3_client(minio).head_object(Bucket=BUCKET, Key="cut/long.mp4")
    assert head["ETag"].endswith('-4"')
    assert s3_client(minio).get_object(Bucket=BUCKET, Key="cut/long.mp4")["Body"].read() == big.read_bytes()


async def test_server_stopped_during_an_upload_then_backup(
    minio: MinIO, gcs: FakeGCS, tmp_path: Path,
) -> None:
    big = tmp_path / "long.mp4"
    big.write_bytes(os.urandom(3 * PART_SIZE + 1000))
    uploader, location = await upload_while_stopping(minio, big, Destination(GCP(BUCKET), prefix="rescued"))

    assert uploader.backup_used and location == f"{gcs.url}/{BUCKET}/rescued/cut/long.mp4"
    assert gcs.download(BUCKET, "rescued/cut/long.mp4") == big.read_bytes()


# through an HTTP forward proxy (tinyproxy): upstream's proxy_config / ProxyConfig on S3 and GCP


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


@pytest.mark.parametrize("backend", ["s3", "gcs"])
async def test_configured_proxy_carries_every_upload_request(
    backend: str, livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path],
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, open_proxy: TinyProxy, tmp_path: Path,
) -> None:
    server = backend_server(backend, request, monkeypatch)
    settings = {"s3": s3_settings(server)} if isinstance(server, MinIO) else {"gcp": {"bucket": BUCKET}}
    for section in settings.values():
        section["proxy_config"] = {"url": open_proxy.url}
    storage = StorageSettings.from_config(settings)
    info, sent, track = await record(livekit_server, await make_room(), sample_media["opus"],
                                     egress.DirectFileOutput(filepath="proxied/{track_id}"),
                                     config_for(livekit_server, tmp_path, storage))

    assert_status(info, "EGRESS_COMPLETE")
    key, manifest_key = f"proxied/{track}.ogg", f"proxied/{info.egress_id}.json"
    data = stored(server, key)
    assert len(data) == info.file_results[0].size
    assert_published(data, ".ogg", sent, tmp_path)
    assert json.loads(stored(server, manifest_key))["egress_id"] == info.egress_id
    # loopback destinations are not exempt: both clients send every request to the proxy (absolute-form URLs)
    assert open_proxy.requests() == storage_requests(backend, server, [key, manifest_key]), open_proxy.log_text()


@pytest.mark.parametrize("backend", ["s3", "gcs"])
async def test_proxy_basic_auth_right_password_uploads_wrong_one_fails_redacted(
    backend: str, livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path],
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, auth_proxy: TinyProxy, tmp_path: Path,
) -> None:
    server = backend_server(backend, request, monkeypatch)

    def output(folder: str, password: str) -> egress.DirectFileOutput:
        proxy = egress.ProxyConfig(url=auth_proxy.url, username=PROXY_USER, password=password)
        file = egress.DirectFileOutput(filepath=f"{folder}/{{track_id}}")
        if isinstance(server, MinIO):
            file.s3.CopyFrom(s3_upload(server, proxy=proxy))
        else:
            file.gcp.CopyFrom(egress.GCPUpload(bucket=BUCKET, proxy=proxy))
        return file

    config = config_for(livekit_server, tmp_path)
    info, sent, track = await record(livekit_server, await make_room(), sample_media["opus"],
                                     output("auth", PROXY_PASSWORD), config)
    assert_status(info, "EGRESS_COMPLETE")
    key = f"auth/{track}.ogg"
    data = stored(server, key)
    assert len(data) == info.file_results[0].size
    assert_published(data, ".ogg", sent, tmp_path)
    uploads = storage_requests(backend, server, [key, f"auth/{info.egress_id}.json"])
    assert auth_proxy.requests() == uploads

    wrong = "wr@ng:pa/ss%word"  # needs escaping in a proxy URL's user info (obstore takes the proxy as a URL)
    failed, _, failed_track = await record(livekit_server, await make_room(), sample_media["opus"],
                                           output("denied", wrong), config)
    assert_status(failed, "EGRESS_FAILED")
    assert failed.error_code == 500
    error = failed.error
    assert error.endswith(f" (through proxy {auth_proxy.url})") and "\n" not in error, error
    if backend == "s3":
        # tinyproxy answers 401 and closes without reading the body; hyper then only sees the connection reset
        assert error.startswith(f"S3 upload failed: Generic S3 error: Error performing PUT {server.url}/"), error
        assert "Connection reset by peer" in error or "401 Unauthorized" in error, error
    else:
        assert error.startswith("GCP upload failed: HTTP 401 Unauthorized"), error
    for secret in (wrong, quote(wrong, safe=""), PROXY_PASSWORD):
        assert secret not in MessageToJson(failed)
    assert auth_proxy.requests()[len(uploads):] == storage_requests(backend, server, [f"denied/{failed_track}.ogg"])
    local = Path(failed.file_results[0].location)
    assert local.stat().st_size == failed.file_results[0].size > 0, "the recording stays on disk"
