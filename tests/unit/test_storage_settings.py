"""Storage settings: upstream's storage:/backup: keys, the request's upload oneof, inheritance and validation."""

from pathlib import Path

import pytest
from livekit.protocol import egress

from trackegress.errors import ConfigError, RequestError
from trackegress.request import check_track_request
from trackegress.storage.azure import Azure
from trackegress.storage.gcs import GCP
from trackegress.storage.options import Proxy, Retry
from trackegress.storage.s3 import S3
from trackegress.storage.settings import Destination, StorageSettings


def test_no_storage_keeps_files_local() -> None:
    settings = StorageSettings.from_config(None)
    assert settings == StorageSettings()
    assert settings.destination(egress.DirectFileOutput(filepath="x")) is None


def test_full_s3_block_with_upstream_keys() -> None:
    settings = StorageSettings.from_config({
        "prefix": "rec", "generate_presigned_url": True,
        "s3": {
            "access_key": "AK", "secret": "SK", "session_token": "ST", "region": "eu-west-1",
            "endpoint": "https://s3.example.com", "bucket": "b", "force_path_style": True,
            "proxy_config": {"url": "http://proxy:3128", "username": "u", "password": "p"},
            "max_retries": 3, "min_retry_delay": "250ms", "max_retry_delay": "2s",
            "metadata": {"team": "a"}, "tagging": "k=v", "content_disposition": "attachment",
        },
    })
    assert settings.default == S3(
        bucket="b", access_key="AK", secret="SK", session_token="ST", region="eu-west-1",
        endpoint="https://s3.example.com", force_path_style=True, metadata={"team": "a"}, tagging="k=v",
        content_disposition="attachment", proxy=Proxy("http://proxy:3128", "u", "p"),
    )
    assert settings.retry == Retry(3, 0.25, 2.0)
    assert settings.destination(None) == Destination(settings.default, "rec", True, Retry(3, 0.25, 2.0))


def test_gcp_azure_and_backup_blocks() -> None:
    settings = StorageSettings.from_config(
        {"gcp": {"credentials_json": '{"type": "service_account"}', "bucket": "g"}, "max_retries": 2},
        backup={"prefix": "bk", "azure": {"account_name": "a", "account_key": "k", "container_name": "c"}},
    )
    assert settings.default == GCP("g", '{"type": "service_account"}')
    assert settings.retry == Retry(max_retries=2)
    assert settings.backup == Destination(Azure("a", "k", "c"), prefix="bk")


def test_request_upload_replaces_the_default_but_inherits_prefix_presign_and_retries() -> None:
    settings = StorageSettings.from_config(
        {"prefix": "p", "generate_presigned_url": True, "s3": {"bucket": "default", "max_retries": 9}})
    file = egress.DirectFileOutput(filepath="x", azure=egress.AzureBlobUpload(
        account_name="a", account_key="k", container_name="c"))
    assert settings.destination(file) == Destination(Azure("a", "k", "c"), "p", True, Retry(max_retries=9))


def test_request_s3_upload_fields() -> None:
    upload = egress.S3Upload(access_key="AK", secret="SK", region="r", endpoint="minio:9000", bucket="b",
                             force_path_style=True, metadata={"m": "1"}, tagging="a=1&b=2",
                             proxy=egress.ProxyConfig(url="http://proxy", username="u", password="p"))
    destination = StorageSettings().destination(egress.DirectFileOutput(s3=upload))
    assert destination is not None
    assert destination.backend == S3(bucket="b", access_key="AK", secret="SK", region="r", endpoint="minio:9000",
                                     force_path_style=True, metadata={"m": "1"}, tagging="a=1&b=2",
                                     proxy=Proxy("http://proxy", "u", "p"))
    assert destination.retry == Retry(5, 0.1, 5.0)  # upstream's defaults


@pytest.mark.parametrize(("file", "code", "message"), [
    (egress.DirectFileOutput(s3=egress.S3Upload(access_key="a", secret="s")), "invalid_argument", "s3.bucket"),
    (egress.DirectFileOutput(s3=egress.S3Upload(bucket="b", access_key="a")), "invalid_argument", "go together"),
    (egress.DirectFileOutput(s3=egress.S3Upload(bucket="b", tagging="a=1&&")), "invalid_argument", "tagging"),
    (egress.DirectFileOutput(s3=egress.S3Upload(bucket="b", endpoint="ftp://x")), "invalid_argument", "endpoint"),
    (egress.DirectFileOutput(s3=egress.S3Upload(bucket="b", assume_role_arn="arn:aws:iam::1:role/r")),
     "unimplemented", "assume_role_arn"),
    (egress.DirectFileOutput(gcp=egress.GCPUpload(bucket="b", credentials="not json")), "invalid_argument",
     "JSON object"),
    (egress.DirectFileOutput(gcp=egress.GCPUpload(credentials="{}")), "invalid_argument", "gcp.bucket"),
    (egress.DirectFileOutput(gcp=egress.GCPUpload(bucket="b", proxy=egress.ProxyConfig(url="nope"))),
     "invalid_argument", "proxy"),
    (egress.DirectFileOutput(azure=egress.AzureBlobUpload(account_name="a")), "invalid_argument",
     "azure.account_key, azure.container_name required"),
    (egress.DirectFileOutput(aliOSS=egress.AliOSSUpload(bucket="b")), "unimplemented", "aliOSS"),
])
def test_request_validation(file: egress.DirectFileOutput, code: str, message: str, tmp_path: Path) -> None:
    request = egress.TrackEgressRequest(room_name="r", track_id="TR_1", file=file)
    with pytest.raises(RequestError) as raised:
        check_track_request(request, tmp_path)
    assert raised.value.code == code and message in raised.value.message


def test_valid_uploads_pass_request_validation(tmp_path: Path) -> None:
    for file in (
        egress.DirectFileOutput(s3=egress.S3Upload(bucket="b")),
        egress.DirectFileOutput(gcp=egress.GCPUpload(bucket="b")),
        egress.DirectFileOutput(azure=egress.AzureBlobUpload(account_name="a", account_key="k", container_name="c")),
    ):
        check_track_request(egress.TrackEgressRequest(room_name="r", track_id="TR_1", file=file), tmp_path)


@pytest.mark.parametrize(("storage", "backup", "message"), [
    ({"s3": {"bucket": "b"}, "gcp": {"bucket": "g"}}, None, "only one of"),
    ({"s3": {"bucket": "b", "acces_key": "typo"}}, None, "unknown key(s) acces_key"),
    ({"s3": {"bucket": "b", "max_retry_delay": "soon"}}, None, "max_retry_delay"),
    ({"s3": {"bucket": "b", "min_retry_delay": "2s", "max_retry_delay": "1s"}}, None, "larger than"),
    ({"s3": {"bucket": "b", "max_retries": -1}}, None, "non-negative"),
    ({"s3": {"bucket": "b", "force_path_style": "yes"}}, None, "true or false"),
    ({"s3": {"bucket": "b", "secret": 123, "access_key": "a"}}, None, "<hidden>"),
    ({"alioss": {"bucket": "b"}}, None, "AliOSS"),
    ({}, {"prefix": "x"}, "backup: needs one of"),
])
def test_config_errors(storage: dict[str, object], backup: dict[str, object] | None, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        StorageSettings.from_config(storage, backup)
    assert message in str(raised.value)


def test_durations_accept_go_strings_and_seconds() -> None:
    settings = StorageSettings.from_config({"s3": {"bucket": "b", "min_retry_delay": 0.5, "max_retry_delay": "1m"}})
    assert settings.retry == Retry(5, 0.5, 60.0)
