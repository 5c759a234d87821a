"""Storage outages and bad credentials: retries, the backup, a failure that keeps the recording, redacted errors."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToJson
from livekit.protocol import egress
from support.egress_helpers import until
from support.server import LiveKitServer, RoomFactory
from support.storage_checks import (
    BUCKET,
    CONTAINER,
    FAST_RETRY,
    Status,
    assert_published,
    assert_status,
    config_for,
    ending_at,
    record,
    s3_client,
    s3_settings,
    s3_upload,
)
from support.storage_servers import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    Azurite,
    FakeGCS,
    MinIO,
    SlowProxy,
    TokenServer,
    service_account,
)

from trackegress.storage.gcs import GCP
from trackegress.storage.objectstore import PART_SIZE
from trackegress.storage.options import Retry
from trackegress.storage.s3 import S3
from trackegress.storage.settings import Destination, StorageSettings
from trackegress.storage.uploader import Uploader


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
