"""Uploads through an HTTP forward proxy (tinyproxy): upstream's proxy_config / ProxyConfig on S3 and GCP."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from google.protobuf.json_format import MessageToJson
from livekit.protocol import egress
from support.forward_proxy import TinyProxy
from support.server import LiveKitServer, RoomFactory
from support.storage_checks import (
    BUCKET,
    PROXY_PASSWORD,
    PROXY_USER,
    assert_published,
    assert_status,
    backend_server,
    config_for,
    record,
    s3_settings,
    s3_upload,
    storage_requests,
    stored,
)
from support.storage_servers import MinIO

from trackegress.storage.settings import StorageSettings


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
