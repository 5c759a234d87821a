"""FileOutput on its own: the file's name and claim, its results and manifest, uploads, loss details, and what a
restarted process makes of a killed egress's files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import pytest
from livekit.protocol import egress, models

from trackegress.config import Config
from trackegress.errors import EgressFailure
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.outputs.file import FileOutput, finalised_before_kill, refresh_killed_files
from trackegress.room.subscriber import TrackSource
from trackegress.storage.base import UploadError
from trackegress.storage.s3 import S3
from trackegress.storage.settings import StorageSettings
from trackegress.storage.uploader import Uploader

OPUS_SILENCE = b"\xf8\xff\xfe"  # one 20 ms CELT frame
ROOM = ("lobby", "RM_1")
SOURCE = TrackSource(
    models.Room(sid="RM_1", name="lobby"), models.ParticipantInfo(identity="alice"),
    models.TrackInfo(sid="TR_1", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE,
                     mime_type="audio/opus"),
)


def _open(tmp_path: Path, filepath: str, egress_id: str = "EG_1") -> FileOutput:
    config = Config("ws://unused", "key", "secret", local_dir=tmp_path)
    request = egress.DirectFileOutput(filepath=filepath)
    return FileOutput.open(request, config, egress_id, SOURCE, Codec.OPUS, room=ROOM, request_keyframe=lambda: None)


def _feed(output: FileOutput, timestamps: range | list[int]) -> None:
    for timestamp in timestamps:
        output.sink.write(EncodedFrame(OPUS_SILENCE, timestamp, True))


def test_the_file_is_named_from_the_template_and_claimed(tmp_path: Path) -> None:
    output = _open(tmp_path, "{room_name}/{publisher_identity}-{track_id}")
    assert output.filename == "lobby/alice-TR_1.ogg"
    assert output.sink.path == (tmp_path / "lobby/alice-TR_1.ogg").resolve() and output.sink.path.exists()
    with pytest.raises(EgressFailure) as taken:
        _open(tmp_path, "{room_name}/{publisher_identity}-{track_id}", egress_id="EG_2")
    assert taken.value.code == "already_exists"
    assert taken.value.message.startswith("output 'lobby/alice-TR_1.ogg' is taken: the file already exists")


def test_a_filled_in_template_over_the_limits_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EgressFailure) as refused:
        _open(tmp_path, "{publisher_identity}" + "x" * 252)
    assert refused.value.code == "invalid_argument" and "a path component is 261 bytes long" in refused.value.message
    assert list(tmp_path.iterdir()) == []


async def test_results_and_manifest_of_a_local_file(tmp_path: Path) -> None:
    output = _open(tmp_path, "out")
    _feed(output, range(0, 50 * 960, 960))
    await output.sink.close()
    info = egress.EgressInfo(egress_id="EG_1", room_name="lobby", room_id="RM_1", started_at=1,
                             track=egress.TrackEgressRequest(room_name="lobby"))
    assert await output.write_results(info, 1_000) is None
    path = (tmp_path / "out.ogg").resolve()
    assert info.file_results[0] == info.file
    assert (info.file.filename, info.file.location, info.file.size) == ("out.ogg", str(path), path.stat().st_size)
    assert info.file.started_at == 1_000 and info.file.duration == info.file.ended_at - 1_000 > 900_000_000
    manifest = json.loads((tmp_path / "EG_1.json").read_bytes())
    assert info.manifest_location == str((tmp_path / "EG_1.json").resolve())
    assert (manifest["publisher_identity"], manifest["track_kind"], manifest["track_source"]) == (
        "alice", "audio", "microphone")
    assert manifest["files"] == [{"filename": "out.ogg", "location": str(path)}]


async def test_disable_manifest_writes_none(tmp_path: Path) -> None:
    config = Config("ws://unused", "key", "secret", local_dir=tmp_path)
    request = egress.DirectFileOutput(filepath="out", disable_manifest=True)
    output = FileOutput.open(request, config, "EG_1", SOURCE, Codec.OPUS, room=ROOM, request_keyframe=lambda: None)
    _feed(output, range(0, 5 * 960, 960))
    await output.sink.close()
    info = egress.EgressInfo()
    await output.write_results(info, 1)
    assert info.manifest_location == "" and sorted(p.name for p in tmp_path.iterdir()) == ["out.ogg"]


class MemoryStore:
    """A storage backend keeping what is uploaded, or failing every upload."""

    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.objects: dict[str, bytes] = {}

    async def upload(self, local: Path, key: str, content_type: str) -> str:
        if not self.ok:
            raise UploadError("upload failed: bucket is gone")
        self.objects[key] = local.read_bytes()
        return f"mem://bucket/{key}"

    async def presign(self, key: str) -> str:
        return f"mem://bucket/{key}?signed"

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("ok", [True, False])
async def test_an_uploaded_file_leaves_nothing_behind_and_a_failed_one_stays(tmp_path: Path, ok: bool) -> None:
    store = MemoryStore(ok)
    config = Config("ws://unused", "key", "secret", local_dir=tmp_path, storage=StorageSettings(default=S3("b")))
    output = FileOutput.open(
        egress.DirectFileOutput(filepath="rec/out"), config, "EG_1", SOURCE, Codec.OPUS, room=ROOM,
        request_keyframe=lambda: None,
        uploader=lambda to, backup: Uploader(to, backup, open_backend=lambda destination: store),
    )
    local = tmp_path / "EG_1" / "out.ogg"
    assert output.sink.path == local.resolve()
    _feed(output, range(0, 20 * 960, 960))
    await output.sink.close()
    info = egress.EgressInfo(egress_id="EG_1", track=egress.TrackEgressRequest())  # a StartTrackEgress
    error = await output.write_results(info, 1)
    if ok:
        assert error is None and not local.parent.exists()
        assert (info.file.location, info.manifest_location) == ("mem://bucket/rec/out.ogg", "mem://bucket/rec/EG_1.json")
        assert store.objects["rec/out.ogg"].startswith(b"OggS")
    else:
        assert error == "upload failed: bucket is gone" and local.exists()
        assert (info.file.location, info.manifest_location) == (str(local.resolve()), str(local.with_name("EG_1.json")))


async def test_an_unused_file_is_released_and_a_written_one_kept(tmp_path: Path) -> None:
    unused = _open(tmp_path, "unused")
    await unused.release_unused()
    assert not (tmp_path / "unused.ogg").exists()
    used = _open(tmp_path, "used")
    _feed(used, range(0, 20 * 960, 960))
    await used.sink.close()
    await used.release_unused()
    assert (tmp_path / "used.ogg").stat().st_size > 0


async def test_partial_file_and_audio_gaps(tmp_path: Path) -> None:
    output = _open(tmp_path, "out")
    _feed(output, [*range(0, 20 * 960, 960), *range(30 * 960, 50 * 960, 960)])  # 10 frames missing
    await output.sink.close()
    partial = output.partial_file(7)
    assert (partial.filename, partial.size, partial.started_at) == ("out.ogg", output.bytes_out, 7)
    assert output.loss_details() == "" and output.failure() is None
    details = output.closed_details()
    assert details.startswith("; audio: 10 of ")
    assert " frames missing on the timeline (loss, DTX or mute); sync: capture_start_ns=" in details


def test_a_write_error_names_the_cause_not_the_path(tmp_path: Path) -> None:
    output = _open(tmp_path, "out")
    assert output.write_error(OSError(5, "Input/output error", str(output.sink.path))) == "Input/output error"
    assert output.write_error(av.error.PermissionError(13, "Permission denied", "/srv/x")) == "Permission denied"


async def test_a_killed_egress_keeps_its_files_as_they_are_on_disk(tmp_path: Path) -> None:
    kept = tmp_path / "kept.ogg"
    kept.write_bytes(b"x" * 100)
    os.utime(kept, ns=(5_000, 5_000))
    info = egress.EgressInfo(egress_id="EG_1", track=egress.TrackEgressRequest())  # a StartTrackEgress
    info.file_results.add(filename="gone.ogg", location=str(tmp_path / "gone.ogg"), size=9)
    info.file_results.add(filename="kept.ogg", location=str(kept), size=1, started_at=1_000)
    assert not await finalised_before_kill(info)
    await refresh_killed_files(info)
    assert [(f.filename, f.size, f.ended_at, f.duration) for f in info.file_results] == [
        ("kept.ogg", 100, 5_000, 4_000)]
    assert info.file == info.file_results[0]
    (tmp_path / "EG_1.json").write_text("{}")
    assert await finalised_before_kill(info)
    kept.unlink()
    await refresh_killed_files(info)
    assert list(info.file_results) == [] and not info.HasField("file")
