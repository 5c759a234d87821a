"""Object keys, Content-Types and upstream's location formats (cases from livekit/storage's location tests)."""

from pathlib import Path

import pytest

from trackegress.media.codecs import content_type
from trackegress.storage import azure, gcs, s3
from trackegress.storage.azure import Azure
from trackegress.storage.base import object_key
from trackegress.storage.gcs import GCP
from trackegress.storage.s3 import S3


@pytest.mark.parametrize(("prefix", "filename", "key"), [
    ("", "a/b.ogg", "a/b.ogg"),
    ("recordings", "a/b.ogg", "recordings/a/b.ogg"),
    ("recordings/", "/a/b.ogg", "recordings/a/b.ogg"),
    ("/x//y", "b.ogg", "x/y/b.ogg"),
])
def test_prefix_is_joined_like_go_path_join(prefix: str, filename: str, key: str) -> None:
    assert object_key(prefix, filename) == key


@pytest.mark.parametrize(("conf", "key", "want"), [
    (S3("mybucket"), "foo.mp4", "https://mybucket.s3.amazonaws.com/foo.mp4"),
    (S3("mybucket", endpoint="s3.example.com"), "foo.mp4", "https://mybucket.s3.example.com/foo.mp4"),
    (S3("mybucket", endpoint="https://s3.example.com"), "foo.mp4", "https://mybucket.s3.example.com/foo.mp4"),
    (S3("mybucket", endpoint="http://s3.example.com"), "foo.mp4", "https://mybucket.s3.example.com/foo.mp4"),
    (S3("mybucket"), "a/b/c.mp4", "https://mybucket.s3.amazonaws.com/a/b/c.mp4"),
    (S3("mybucket"), "/foo.mp4", "https://mybucket.s3.amazonaws.com/foo.mp4"),
    (S3("mybucket"), "folder/my file.mp4", "https://mybucket.s3.amazonaws.com/folder/my%20file.mp4"),
    (S3("mybucket"), "café/résumé.mp4", "https://mybucket.s3.amazonaws.com/caf%C3%A9/r%C3%A9sum%C3%A9.mp4"),
    (S3("mybucket", force_path_style=True), "foo.mp4", "https://s3.amazonaws.com/mybucket/foo.mp4"),
    (S3("mybucket", endpoint="https://minio.example.com", force_path_style=True), "foo.mp4",
     "https://minio.example.com/mybucket/foo.mp4"),
    (S3("mybucket", endpoint="http://127.0.0.1:9000/", force_path_style=True), "a b.ogg",
     "http://127.0.0.1:9000/mybucket/a%20b.ogg"),
    (S3("mybucket", force_path_style=True), "/foo.mp4", "https://s3.amazonaws.com/mybucket/foo.mp4"),
])
def test_s3_location(conf: S3, key: str, want: str) -> None:
    assert s3.location(conf, key) == want


@pytest.mark.parametrize(("key", "want"), [
    ("foo.mp4", "https://mybucket.storage.googleapis.com/foo.mp4"),
    ("/foo.mp4", "https://mybucket.storage.googleapis.com/foo.mp4"),
    ("folder/my file.mp4", "https://mybucket.storage.googleapis.com/folder/my%20file.mp4"),
    ("café/résumé.mp4", "https://mybucket.storage.googleapis.com/caf%C3%A9/r%C3%A9sum%C3%A9.mp4"),
])
def test_gcp_location(key: str, want: str) -> None:
    assert gcs.location(GCP("mybucket"), key, env={}) == want


def test_gcp_location_names_the_emulator() -> None:
    env = {gcs.EMULATOR_ENV: "127.0.0.1:4443"}
    assert gcs.location(GCP("b"), "x y.ogg", env) == "http://127.0.0.1:4443/b/x%20y.ogg"


@pytest.mark.parametrize(("container", "key", "want"), [
    ("mycontainer", "foo.mp4", "https://acct.blob.core.windows.net/mycontainer/foo.mp4"),
    ("", "recordings/6893038.ogg", "https://acct.blob.core.windows.net/recordings/6893038.ogg"),
    ("/mycontainer", "foo.mp4", "https://acct.blob.core.windows.net/mycontainer/foo.mp4"),
    ("mycontainer/", "/foo.mp4", "https://acct.blob.core.windows.net/mycontainer/foo.mp4"),
    ("mycontainer", "my file.mp4", "https://acct.blob.core.windows.net/mycontainer/my%20file.mp4"),
    ("mycontainer", "café/résumé.mp4", "https://acct.blob.core.windows.net/mycontainer/caf%C3%A9/r%C3%A9sum%C3%A9.mp4"),
])
def test_azure_location(container: str, key: str, want: str) -> None:
    assert azure.location(Azure("acct", "key", container), key, env={}) == want


def test_azure_location_names_the_emulator() -> None:
    env = {azure.EMULATOR_ENV: "http://127.0.0.1:10000/"}
    assert azure.location(Azure("dev", "k", "c"), "a.ogg", env) == "http://127.0.0.1:10000/dev/c/a.ogg"


@pytest.mark.parametrize(("name", "mime"), [
    ("a.ogg", "audio/ogg"), ("a.mp4", "video/mp4"), ("a.webm", "video/webm"), ("EG_x.json", "application/json"),
])
def test_content_type_follows_the_extension(name: str, mime: str) -> None:
    assert content_type(Path(name)) == mime
