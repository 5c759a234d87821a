"""Egress's status table, with the room, sinks and storage swapped for in-test doubles (no server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import av
import pytest
from livekit.protocol import egress, models

from trackegress.config import Config
from trackegress.egress import Egress, Parts
from trackegress.media.frames import Codec, EncodedFrame
from trackegress.room.subscriber import RoomEvents, TrackSource
from trackegress.room.transport import Reception
from trackegress.sinks import file as file_sink
from trackegress.sinks.file import FileSink, write_error
from trackegress.storage.base import UploadError
from trackegress.storage.s3 import S3
from trackegress.storage.settings import Destination, StorageSettings
from trackegress.storage.uploader import Uploader

Status = egress.EgressStatus
OPUS_SILENCE = b"\xf8\xff\xfe"  # one 20 ms CELT frame
ROOM = models.Room(sid="RM_1", name="room")
SOURCE = TrackSource(
    ROOM, models.ParticipantInfo(identity="alice"),
    models.TrackInfo(sid="TR_1", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE,
                     mime_type="audio/opus"),
)


class FakeRoom:
    """A joined room whose track is found once ``published`` is set; ``feed`` plays frames to the egress."""

    def __init__(self, events: RoomEvents) -> None:
        self.events = events
        self.published = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.closed = False
        self.room = ROOM
        self.reception = Reception()

    async def find_track(self, timeout: float) -> TrackSource:
        await asyncio.wait_for(self.published.wait(), timeout)
        return SOURCE

    async def subscribe(self, codec: Codec, *, pcm: bool = False) -> None:
        self.subscribed.set()

    async def close(self) -> None:
        self.closed = True

    def feed(self, count: int) -> None:
        for n in range(count):
            self.events.on_frame(EncodedFrame(OPUS_SILENCE, n * 960, True))


class Harness:
    """Runs one file egress with a ``FakeRoom``; ``joined`` gates the join."""

    def __init__(self, tmp_path: Path, storage: StorageSettings | None = None, **parts: object) -> None:
        self.rooms: list[FakeRoom] = []
        self.joined = asyncio.Event()
        self.joined.set()
        self.statuses: list[int] = []
        config = Config("ws://unused", "key", "secret", local_dir=tmp_path, track_wait_timeout=5, storage=storage)
        request = egress.TrackEgressRequest(room_name="room", track_id="TR_1",
                                            file=egress.DirectFileOutput(filepath="out.ogg"))
        self.egress = Egress(request, config, on_update=lambda info: self.statuses.append(info.status),
                             parts=Parts(**{"join_room": self._join, **parts}))
        self.task = asyncio.create_task(self.egress.run())

    async def _join(
        self, url: str, token: str, track: str, events: RoomEvents, resume: float, protocols: Sequence[str]
    ) -> FakeRoom:
        await self.joined.wait()
        self.rooms.append(FakeRoom(events))
        return self.rooms[-1]

    async def room(self) -> FakeRoom:
        while not self.rooms:
            await asyncio.sleep(0)
        return self.rooms[0]

    async def subscribed(self) -> FakeRoom:
        room = await self.room()
        room.published.set()
        await room.subscribed.wait()
        return room

    async def result(self) -> egress.EgressInfo:
        info = await asyncio.wait_for(self.task, 10)
        assert self.rooms == [] or self.rooms[0].closed
        return info


async def test_frames_then_track_end_is_complete(tmp_path: Path) -> None:
    run = Harness(tmp_path)
    room = await run.subscribed()
    room.feed(50)
    room.events.on_ended("Source closed", None)
    info = await run.result()
    assert info.status == Status.EGRESS_COMPLETE
    assert run.statuses == [Status.EGRESS_ACTIVE, Status.EGRESS_ENDING, Status.EGRESS_COMPLETE]
    assert info.file.location == str(tmp_path.resolve() / "out.ogg") and info.file.size > 0
    assert (tmp_path / "out.ogg").read_bytes().startswith(b"OggS")


async def test_no_media_is_aborted(tmp_path: Path) -> None:
    run = Harness(tmp_path)
    room = await run.subscribed()
    room.events.on_ended("Source closed", None)
    info = await run.result()
    assert (info.status, info.error, info.error_code) == (Status.EGRESS_ABORTED, "Start signal not received", 412)
    assert run.statuses == [Status.EGRESS_ABORTED]


async def test_limit_reached(tmp_path: Path) -> None:
    run = Harness(tmp_path)
    room = await run.subscribed()
    room.feed(10)
    run.egress.limit_reached()
    info = await run.result()
    assert (info.status, info.error, info.error_code) == (Status.EGRESS_LIMIT_REACHED, "Session limit reached", 413)
    assert info.file.size > 0


async def test_limit_before_media_is_aborted(tmp_path: Path) -> None:
    run = Harness(tmp_path)
    await run.subscribed()
    run.egress.limit_reached()
    info = await run.result()
    assert (info.status, info.error) == (Status.EGRESS_ABORTED, "Session limit reached before start signal")


class BrokenSink(FileSink):
    def write(self, frame: EncodedFrame) -> None:
        raise OSError(28, "No space left on device")


async def test_write_failure_is_failed(tmp_path: Path) -> None:
    run = Harness(tmp_path, file_sink=BrokenSink)
    room = await run.subscribed()
    room.feed(3)
    info = await run.result()
    assert info.status == Status.EGRESS_FAILED and info.error_code == 500
    assert info.error == "writing output failed: No space left on device"
    assert run.statuses == [Status.EGRESS_ACTIVE, Status.EGRESS_ENDING, Status.EGRESS_FAILED]


class TrailerFailsSink(FileSink):
    async def close(self) -> None:
        await super().close()
        raise OSError(22, "Invalid argument", str(self.path))


async def test_a_failed_trailer_fails_the_egress_without_its_path_and_keeps_the_file(tmp_path: Path) -> None:
    run = Harness(tmp_path, file_sink=TrailerFailsSink)
    room = await run.subscribed()
    room.feed(3)
    run.egress.stop()
    info = await run.result()
    assert (info.status, info.error) == (Status.EGRESS_FAILED, "writing output failed: Invalid argument")
    assert info.file_results[0].size > 0 and str(tmp_path) not in info.error


async def test_an_unexpected_file_error_is_failed_without_the_servers_path(tmp_path: Path) -> None:
    async def join(*_: object) -> FakeRoom:
        raise av.error.PermissionError(13, "Permission denied", "/srv/egress/secret-dir/out.ogg")

    run = Harness(tmp_path, join_room=join)
    info = await asyncio.wait_for(run.task, 10)
    assert (info.status, info.error) == (Status.EGRESS_FAILED, "internal error: Permission denied")


def test_a_write_error_on_a_full_disk_is_named_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert write_error(OSError(22, "Invalid argument", "/x"), tmp_path) == "Invalid argument"
    assert write_error(OSError(28, "No space left on device", "/x"), tmp_path) == "No space left on device"
    monkeypatch.setattr(file_sink, "NEARLY_FULL", 1 << 62)  # any disk is "nearly full" below 4 EiB
    assert write_error(OSError(22, "Invalid argument", "/x"), tmp_path) == "No space left on device"


@pytest.mark.parametrize("stop_at", ["join", "track"])
async def test_stop_during_start_up_is_aborted(tmp_path: Path, stop_at: str) -> None:
    run = Harness(tmp_path)
    if stop_at == "join":
        run.joined.clear()
        await asyncio.sleep(0.01)
        run.egress.stop()
        run.joined.set()
    else:
        await run.room()
        run.egress.stop()
    info = await run.result()
    assert (info.status, info.error) == (Status.EGRESS_ABORTED, "Start signal not received")
    assert not (tmp_path / "out.ogg").exists()


async def test_track_never_published_is_failed_not_found(tmp_path: Path) -> None:
    run = Harness(tmp_path)
    run.egress._config = Config("ws://unused", "key", "secret", local_dir=tmp_path, track_wait_timeout=0.05)
    info = await run.result()
    assert (info.status, info.error, info.error_code) == (Status.EGRESS_FAILED, "track TR_1 not found", 404)


class FakeStore:
    """A storage backend that fails (``ok`` False) or keeps the uploaded bytes."""

    def __init__(self, name: str, ok: bool) -> None:
        self.name, self.ok = name, ok
        self.objects: dict[str, bytes] = {}

    async def upload(self, local: Path, key: str, content_type: str) -> str:
        if not self.ok:
            raise UploadError(f"{self.name} upload failed: bucket is gone")
        self.objects[key] = local.read_bytes()
        return f"mem://{self.name}/{key}"

    async def presign(self, key: str) -> str:
        return f"mem://{self.name}/{key}?signed"

    async def close(self) -> None:
        pass


def _uploaders(stores: dict[str, FakeStore]) -> Callable[[Destination, Destination | None], Uploader]:
    def opener(destination: Destination) -> FakeStore:
        assert isinstance(destination.backend, S3)
        return stores[destination.backend.bucket]

    return lambda destination, backup: Uploader(destination, backup, open_backend=opener)


@pytest.mark.parametrize(("primary_ok", "backup_ok"), [(True, True), (False, True), (False, False)])
async def test_upload_falls_back_to_backup(tmp_path: Path, primary_ok: bool, backup_ok: bool) -> None:
    stores = {"primary": FakeStore("primary", primary_ok), "backup": FakeStore("backup", backup_ok)}
    storage = StorageSettings(default=S3("primary"), backup=Destination(S3("backup")))
    run = Harness(tmp_path, storage=storage, uploader=_uploaders(stores))
    room = await run.subscribed()
    room.feed(20)
    room.events.on_ended("Source closed", None)
    info = await run.result()
    local = tmp_path / info.egress_id / "out.ogg"
    if primary_ok or backup_ok:
        used = "primary" if primary_ok else "backup"
        assert info.status == Status.EGRESS_COMPLETE and info.backup_storage_used == (not primary_ok)
        assert info.file.location == f"mem://{used}/out.ogg"
        assert info.manifest_location == f"mem://{used}/{info.egress_id}.json"
        assert stores[used].objects["out.ogg"].startswith(b"OggS")
        assert not local.exists() and not local.parent.exists()
    else:
        assert info.status == Status.EGRESS_FAILED
        assert info.error == "primary upload failed: bucket is gone; backup: backup upload failed: bucket is gone"
        assert info.file.location == str(local.resolve()) and local.exists()


async def test_packets_still_missing_when_the_track_ends_are_reported_lost(tmp_path: Path) -> None:
    run = Harness(tmp_path)
    room = await run.subscribed()
    room.reception = Reception(packets_received=100, packets_lost=1, packets_missing=2, nacks_sent=4)
    room.feed(3)
    room.events.on_ended("Source closed", None)
    info = await run.result()
    assert "; received: 100 packets, 3 lost, 0 recovered (RTX/RED)" in info.details, info.details


async def test_frames_of_which_none_could_be_written_fail_and_leave_no_file(tmp_path: Path) -> None:
    """Media came but nothing of it could go into the file (here invalid Opus; for video: no keyframe): FAILED,
    not COMPLETE with an empty file."""
    run = Harness(tmp_path)
    room = await run.subscribed()
    for n in range(20):
        room.events.on_frame(EncodedFrame(b"", n * 960, True))
    room.events.on_ended("Source closed", None)
    info = await run.result()
    assert (Status.Name(info.status), info.error, info.error_code) == (
        "EGRESS_FAILED", "nothing recorded: none of the 20 frames of the audio track was valid", 500)
    assert run.statuses == [Status.EGRESS_ACTIVE, Status.EGRESS_ENDING, Status.EGRESS_FAILED]
    assert not info.file_results and not (tmp_path / "out.ogg").exists()
