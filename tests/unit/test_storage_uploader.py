"""The upload step: destination first, backup after a failure (for every later file too), errors redacted."""

import dataclasses
import json
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from trackegress.storage.backends import BACKENDS
from trackegress.storage.base import UploadError, proxy_note, redact
from trackegress.storage.gcs import GCP, _describe, _secrets
from trackegress.storage.objectstore import summary
from trackegress.storage.options import Proxy, Retry
from trackegress.storage.s3 import S3
from trackegress.storage.settings import Destination
from trackegress.storage.uploader import Uploader


class FakeStorage:
    def __init__(self, name: str, fail: bool) -> None:
        self.name, self.fail = name, fail
        self.uploads: list[tuple[str, str]] = []
        self.closed = False

    async def upload(self, local: Path, key: str, content_type: str) -> str:
        if self.fail:
            raise UploadError(f"{self.name} upload failed: connection refused")
        self.uploads.append((key, content_type))
        return f"{self.name}://{key}"

    async def presign(self, key: str) -> str:
        return f"{self.name}://{key}?signed"

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def storages(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeStorage]:
    made: dict[str, FakeStorage] = {}

    def fake_open(backend: S3 | GCP, retry: Retry) -> FakeStorage:
        made[backend.bucket] = FakeStorage(backend.bucket, fail=backend.bucket.startswith("down"))
        return made[backend.bucket]

    for key in ("s3", "gcp"):  # the backend table's clients
        monkeypatch.setitem(BACKENDS, key, dataclasses.replace(BACKENDS[key], open=fake_open))
    return made


async def test_uploads_under_the_prefix_with_the_content_type(storages: dict[str, FakeStorage]) -> None:
    uploader = Uploader(Destination(S3("main"), prefix="pre"))
    assert await uploader.upload(Path("/tmp/a.ogg"), "room/a.ogg") == "main://pre/room/a.ogg"
    assert await uploader.upload(Path("/tmp/EG_1.json"), "room/EG_1.json") == "main://pre/room/EG_1.json"
    assert storages["main"].uploads == [("pre/room/a.ogg", "audio/ogg"), ("pre/room/EG_1.json", "application/json")]
    assert not uploader.backup_used
    await uploader.close()
    assert storages["main"].closed


async def test_presigned_location(storages: dict[str, FakeStorage]) -> None:
    uploader = Uploader(Destination(S3("main"), presign=True))
    assert await uploader.upload(Path("a.webm"), "a.webm") == "main://a.webm?signed"


async def test_backup_takes_over_for_good_after_a_failure(storages: dict[str, FakeStorage]) -> None:
    uploader = Uploader(Destination(S3("down-main")), Destination(GCP("backup"), prefix="bk"))
    assert await uploader.upload(Path("a.mp4"), "a.mp4") == "backup://bk/a.mp4"
    assert await uploader.upload(Path("EG_1.json"), "EG_1.json") == "backup://bk/EG_1.json"
    assert uploader.backup_used


async def test_failure_without_backup(storages: dict[str, FakeStorage]) -> None:
    with pytest.raises(UploadError, match=r"^down upload failed: connection refused$"):
        await Uploader(Destination(S3("down"))).upload(Path("a.ogg"), "a.ogg")


async def test_both_failing_reports_both(storages: dict[str, FakeStorage]) -> None:
    uploader = Uploader(Destination(S3("down-1")), Destination(S3("down-2")))
    with pytest.raises(UploadError) as raised:
        await uploader.upload(Path("a.ogg"), "a.ogg")
    assert str(raised.value) == ("down-1 upload failed: connection refused; "
                                 "backup: down-2 upload failed: connection refused")
    assert not uploader.backup_used, "nothing landed in the backup"


def test_redact_hides_secrets_and_bearer_tokens_and_cuts_debug_dumps() -> None:
    text = "PUT failed for AKIA123 with topsecret, Authorization: Bearer ya29.abc-def\n\nDebug source: topsecret"
    assert redact(text, ("AKIA123", "topsecret", "")) == "PUT failed for {...} with {...}, Authorization: Bearer {...}"
    assert len(redact("x" * 5000, ())) == 600


def test_summary_of_an_obstore_http_error() -> None:
    message = (
        "The operation lacked the necessary privileges to complete for path a.ogg: Error performing PUT "
        "http://127.0.0.1:9000/rec/a.ogg in 1.5ms - Server returned non-2xx status code: 403 Forbidden: "
        "<?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The signature does not match."
        "</Message></Error>\n\nDebug source:\nPermissionDenied { ... }"
    )
    assert summary(message) == ("PUT http://127.0.0.1:9000/rec/a.ogg: 403 Forbidden: SignatureDoesNotMatch: "
                                "The signature does not match.")


def test_summary_of_a_connection_error_names_the_os_error() -> None:
    message = ("Generic S3 error: Error performing PUT http://h/b/k - HTTP error: error sending request\n\n"
               'Debug source:\n Os {\n code: 111,\n kind: ConnectionRefused,\n message: "Connection refused",\n }')
    assert summary(message).endswith("error sending request: Connection refused")


def test_gcp_secrets_cover_the_key_its_lines_and_the_proxy_password() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----\n"
    document = json.dumps({"private_key": key, "private_key_id": "kid"})
    gcp = GCP("b", document, Proxy("http://p", "u", "p@ss/word"))
    secrets = _secrets(gcp)
    assert {"p@ss/word", "p%40ss%2Fword", key, "MIIEvQ", "kid"} <= set(secrets)


def test_proxy_url_carries_the_credentials_percent_encoded() -> None:
    assert Proxy("http://proxy:3128").url_with_auth() == "http://proxy:3128"
    assert Proxy("http://proxy:3128", "us@er", "p:w/d%").url_with_auth() == "http://us%40er:p%3Aw%2Fd%25@proxy:3128"


def test_errors_name_the_proxy_without_its_credentials() -> None:
    assert proxy_note("") == ""
    assert proxy_note("http://proxy.internal:3128/") == " (through proxy http://proxy.internal:3128)"
    assert proxy_note("http://u:secret@proxy.internal:3128") == " (through proxy http://proxy.internal:3128)"


def test_an_html_error_page_becomes_one_line() -> None:
    page = ('Unauthorized: <?xml version="1.0" ?>\n<!DOCTYPE html>\n<html>\n<head><title>401 Unauthorized</title>'
            "</head>\n<body>\n<h1>Unauthorized</h1>\n\n<p>Go away.</p>\n</body>\n</html>\n")
    url = URL("http://127.0.0.1:1/upload/storage/v1/b/rec/o?name=a.ogg")
    info = aiohttp.RequestInfo(url, "POST", CIMultiDictProxy(CIMultiDict()), url)
    error = aiohttp.ClientResponseError(info, (), status=401, message=page)
    assert _describe(error) == ("HTTP 401 Unauthorized: 401 Unauthorized Unauthorized Go away. "
                                "from http://127.0.0.1:1/upload/storage/v1/b/rec/o")
    json_error = aiohttp.ClientResponseError(info, (), status=400, message='Bad Request: {\n  "error": "x < y"\n}\n')
    assert _describe(json_error) == 'HTTP 400 Bad Request: { "error": "x < y" } from ' + str(url.with_query(None))
