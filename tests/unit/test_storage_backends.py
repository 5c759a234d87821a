"""The storage backend table: a backend added as one row is parsed, opened and claimed like the built-in ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from trackegress.configfile import Section
from trackegress.errors import ConfigError
from trackegress.storage.backends import BACKENDS, Backend
from trackegress.storage.claims import OutputTaken, claim_key
from trackegress.storage.options import BackendSettings, Retry
from trackegress.storage.s3 import S3
from trackegress.storage.settings import StorageSettings
from trackegress.storage.uploader import Uploader


@dataclasses.dataclass(frozen=True)
class Memory(BackendSettings):
    bucket: str


class MemoryStorage:
    name = "Memory"

    def __init__(self, settings: Memory, retry: Retry) -> None:
        self.bucket, self.retry = settings.bucket, retry

    async def upload(self, local: Path, key: str, content_type: str) -> str:
        return f"mem://{self.bucket}/{key} ({content_type})"

    async def presign(self, key: str) -> str:
        return f"mem://{self.bucket}/{key}?signed"

    async def close(self) -> None:
        pass


def _memory(raw: Section) -> Memory:
    raw.refuse_unknown(frozenset({"bucket"}))
    return Memory(raw.text("bucket"))


@pytest.fixture
def memory_row(monkeypatch: pytest.MonkeyPatch) -> None:
    row = Backend(Memory, _memory, lambda file: Memory("unused"), {}, MemoryStorage, lambda m: f"mem:{m.bucket}")
    monkeypatch.setitem(BACKENDS, "memory", row)


async def test_a_new_backend_is_one_row(memory_row: None, tmp_path: Path) -> None:
    settings = StorageSettings.from_config({"memory": {"bucket": "b"}, "prefix": "p", "max_retries": 2})
    assert settings.default == Memory("b") and settings.retry.max_retries == 2
    destination = settings.destination(None)
    assert destination is not None
    uploader = Uploader(destination)
    assert await uploader.upload(tmp_path / "a.ogg", "r/a.ogg") == "mem://b/p/r/a.ogg (audio/ogg)"
    await uploader.close()
    claim_key(tmp_path, Memory("b"), "k", "EG_1")
    claim_key(tmp_path, S3("b"), "k", "EG_2")  # another backend's bucket of the same name: another place
    with pytest.raises(OutputTaken):
        claim_key(tmp_path, Memory("b"), "k", "EG_3")


def test_the_backends_are_named_from_the_table(memory_row: None) -> None:
    with pytest.raises(ConfigError) as error:
        StorageSettings.from_config({"s3": {"bucket": "a"}, "memory": {"bucket": "b"}})
    assert error.value.message == "storage: configure only one of s3, gcp, azure and memory"
    with pytest.raises(ConfigError) as error:
        StorageSettings.from_config({}, {"prefix": "x"})
    assert error.value.message == "backup: needs one of s3, gcp, azure or memory"
    with pytest.raises(ConfigError) as error:
        StorageSettings.from_config({"memory": {"bucket": "b", "region": "x"}})
    assert error.value.message == "storage.memory: unknown key(s) region"
