"""Output claims: the first egress owns a path or key; later ones are refused, also from another process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trackegress.storage.claims import OutputTaken, claim_file, claim_key
from trackegress.storage.gcs import GCP
from trackegress.storage.s3 import S3


def test_a_file_is_claimed_once(tmp_path: Path) -> None:
    out = tmp_path / "room" / "same.ogg"
    out.parent.mkdir()
    claim_file(out, "EG_first")
    assert out.exists() and out.stat().st_size == 0
    with pytest.raises(OutputTaken, match="already exists"):
        claim_file(out, "EG_second")


def test_an_existing_recording_is_never_overwritten(tmp_path: Path) -> None:
    old = tmp_path / "old.ogg"
    old.write_bytes(b"OggS recording")
    with pytest.raises(OutputTaken):
        claim_file(old, "EG_new")
    assert old.read_bytes() == b"OggS recording"


def test_object_keys_are_claimed_per_bucket_across_processes(tmp_path: Path) -> None:
    claim_key(tmp_path, S3(bucket="b"), "r/x.ogg", "EG_first")
    code = ("import sys; from pathlib import Path; from trackegress.storage.claims import claim_key;"
            "from trackegress.storage.s3 import S3;"
            "claim_key(Path(sys.argv[1]), S3(bucket='b'), 'r/x.ogg', 'EG_2')")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert other.returncode != 0 and "already claimed by EG_first" in other.stderr
    claim_key(tmp_path, S3(bucket="other"), "r/x.ogg", "EG_3")  # another bucket: another key
    claim_key(tmp_path, GCP(bucket="b"), "r/x.ogg", "EG_4")
