"""Presigned URLs in the form the real services take (the e2e tests cover the emulators): a GCS V4 signed URL on
storage.googleapis.com checked against Google's documented V4 rules, an Azure service SAS limited to HTTPS."""

import base64
import datetime
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.signed_urls import gcs_v4_problem

from trackegress.storage import azure, gcs
from trackegress.storage.azure import Azure
from trackegress.storage.base import UploadError
from trackegress.storage.gcs import GCP, GCSStorage
from trackegress.storage.options import Retry

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
EMAIL = "recorder@project.iam.gserviceaccount.com"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="module")
def credentials() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return json.dumps({"type": "service_account", "project_id": "project", "private_key_id": "1", "private_key": pem,
                       "client_email": EMAIL, "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"})


@pytest.fixture
def no_emulators(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (gcs.EMULATOR_ENV, azure.EMULATOR_ENV, "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no gcloud application default credentials either


async def test_gcs_presigned_url_is_a_v4_signed_url_for_storage_googleapis_com(
    credentials: str, no_emulators: None,
) -> None:
    storage = GCSStorage(GCP("my-bucket", credentials), Retry())
    try:
        url = await storage.presign("rooms/my file é+1.ogg")
    finally:
        await storage.close()
    now = datetime.datetime.now(datetime.UTC)

    assert url.startswith("https://storage.googleapis.com/my-bucket/rooms/my%20file%20%C3%A9%2B1.ogg?"
                          "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=recorder%40project.iam.gserviceaccount"
                          f".com%2F{now:%Y%m%d}%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Date={now:%Y%m%d}T")
    query = dict(parse_qsl(urlsplit(url).query))
    assert list(query) == ["X-Goog-Algorithm", "X-Goog-Credential", "X-Goog-Date", "X-Goog-Expires",
                           "X-Goog-SignedHeaders", "X-Goog-Signature"]
    assert (query["X-Goog-Expires"], query["X-Goog-SignedHeaders"]) == ("604800", "host")
    assert gcs_v4_problem(url, credentials, now) == ""
    assert gcs_v4_problem(url.replace("my%20file", "my%20other"), credentials, now) == "the signature does not match"
    assert gcs_v4_problem(url.replace("storage.googleapis.com", "my-bucket.storage.googleapis.com"), credentials,
                          now) == "the signature does not match"  # the host is signed


def test_gcs_signed_url_with_a_fixed_clock() -> None:
    url = gcs.signed_url(GCP("b"), "a.ogg", EMAIL, lambda text: b"\x01\x02", now=NOW, env={})
    assert url == ("https://storage.googleapis.com/b/a.ogg?X-Goog-Algorithm=GOOG4-RSA-SHA256"
                   "&X-Goog-Credential=recorder%40project.iam.gserviceaccount.com%2F20260102%2Fauto%2Fstorage"
                   "%2Fgoog4_request&X-Goog-Date=20260102T030405Z&X-Goog-Expires=604800&X-Goog-SignedHeaders=host"
                   "&X-Goog-Signature=0102")


def test_gcs_signed_url_names_the_emulator() -> None:
    env = {gcs.EMULATOR_ENV: "127.0.0.1:4443"}
    url = gcs.signed_url(GCP("b"), "a.ogg", EMAIL, lambda text: b"\xff", now=NOW, env=env)
    assert url.startswith("http://127.0.0.1:4443/b/a.ogg?X-Goog-Algorithm=GOOG4-RSA-SHA256&")


async def test_gcs_presigning_without_a_service_account_key_fails_clearly(no_emulators: None) -> None:
    storage = GCSStorage(GCP("my-bucket"), Retry())
    try:
        with pytest.raises(UploadError, match=r"^GCP presigning failed: generate_presigned_url needs a service "
                                              r"account key \(client_email and private_key in the credentials\)$"):
            await storage.presign("a.ogg")
    finally:
        await storage.close()


def test_azure_presigned_url_is_a_read_only_https_service_sas() -> None:
    url = azure.presigned_url(Azure("acct", KEY, "recordings"), "rooms/my file é.ogg", now=NOW, env={})
    base, _, query = url.partition("?")
    assert base == "https://acct.blob.core.windows.net/recordings/rooms/my%20file%20%C3%A9.ogg"
    sas = dict(parse_qsl(query, strict_parsing=True))
    signature = sas.pop("sig")
    assert sas == {"sv": "2023-11-03", "se": "2026-01-09T03:04:05Z", "sr": "b", "sp": "r", "spr": "https"}
    assert len(base64.b64decode(signature, validate=True)) == 32  # HMAC-SHA256
    other = azure.presigned_url(Azure("acct", KEY, "recordings"), "rooms/my file.ogg", now=NOW, env={})
    assert dict(parse_qsl(urlsplit(other).query))["sig"] != signature  # the blob name is signed


def test_azure_presigned_url_on_the_emulator_allows_http() -> None:
    url = azure.presigned_url(Azure("dev", KEY, "c"), "a.ogg", now=NOW, env={azure.EMULATOR_ENV: "http://127.0.0.1:1"})
    assert url.startswith("http://127.0.0.1:1/dev/c/a.ogg?sv=2023-11-03&se=2026-01-09T03%3A04%3A05Z&sr=b&sp=r&sig=")


def test_azure_presigning_with_a_broken_account_key_fails_clearly() -> None:
    with pytest.raises(UploadError, match=r"^Azure presigning failed: the account key is not valid base64$"):
        azure.presigned_url(Azure("acct", "not base64!", "c"), "a.ogg", env={})
