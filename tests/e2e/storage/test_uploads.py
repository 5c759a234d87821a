"""Uploads against real storage servers on loopback: MinIO (S3), fake-gcs-server (GCS) and Azurite (Azure Blob).

Every test records a real track (livekit-server + our publisher) with an upload config, then checks the object with
an independent client (boto3, the JSON API, azure-storage-blob).
"""

from __future__ import annotations

import datetime
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from google.protobuf.json_format import MessageToJson
from livekit.protocol import egress
from support.server import LiveKitServer, RoomFactory
from support.signed_urls import gcs_v4_problem
from support.storage_checks import (
    BUCKET,
    CONTAINER,
    FAST_RETRY,
    assert_published,
    assert_status,
    azure_client,
    config_for,
    http_get,
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
    StorageServer,
    TokenServer,
    service_account,
)

from trackegress.storage.azure import Azure, presigned_url
from trackegress.storage.objectstore import PART_SIZE
from trackegress.storage.settings import StorageSettings
from trackegress.storage.uploader import Uploader

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
