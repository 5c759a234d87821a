"""``trackegress mux``: one participant's track files (audio + video) joined into one file without transcoding,
aligned by the capture times in their manifests (``media/sync.py``): the later-starting stream starts later.

Opus + VP8 / VP9 / AV1 → WebM (or Matroska: ``.mkv``), Opus + H.264 / H.265 → MP4. Each file's manifest is found
beside it (a ``*.json`` whose ``files`` name it), where the egress wrote it or where both were fetched back to.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath

import av
from av.container import InputContainer

from trackegress.media.sync import ARRIVAL, SyncInfo

log = logging.getLogger(__name__)

# (audio codec, video codec) -> the output suffixes allowed, the first the default
_FORMATS = {
    **{("audio/opus", video): (".webm", ".mkv") for video in ("video/vp8", "video/vp9", "video/av1")},
    **{("audio/opus", video): (".mp4", ".mkv") for video in ("video/h264", "video/h265")},
}
_CONTAINERS = {".webm": "webm", ".mkv": "matroska", ".mp4": "mp4"}


class MuxError(Exception):
    """The inputs cannot be joined (no manifest, no sync fields, codecs that do not fit the output)."""


@dataclass(frozen=True, slots=True)
class TrackFile:
    """One track egress output and what its manifest says of it."""

    path: Path
    codec: str
    sync: SyncInfo

    @property
    def kind(self) -> str:
        return self.codec.split("/")[0]


@dataclass(frozen=True, slots=True)
class MuxResult:
    """The joined file and each input's start in it (seconds; 0 for the earliest)."""

    path: Path
    offsets: dict[Path, float]
    packets: int


def read_track_file(path: Path) -> TrackFile:
    """``path`` with its manifest (a ``*.json`` beside it listing it); ``MuxError`` if there is none."""
    if not path.is_file():
        raise MuxError(f"{path}: no such file")
    for candidate in sorted(path.parent.glob("*.json")):
        try:
            manifest = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or not _lists(manifest, path.name):
            continue
        if not manifest.get("sync") or not manifest.get("codec"):
            raise MuxError(f"{candidate}: no sync fields (written by an older trackegress?)")
        return TrackFile(path, manifest["codec"], SyncInfo.from_json(manifest["sync"]))
    raise MuxError(f"{path}: no manifest beside it lists it")


def _lists(manifest: dict[str, object], name: str) -> bool:
    files = manifest.get("files")
    return isinstance(files, list) and any(
        isinstance(f, dict) and name in (PurePosixPath(str(f.get("filename", ""))).name,
                                         PurePosixPath(str(f.get("location", ""))).name)
        for f in files
    )


def mux(output: Path, inputs: Sequence[Path]) -> MuxResult:
    """Join ``inputs`` (one audio, one video track file) into ``output`` (see the module docstring)."""
    tracks = [read_track_file(path) for path in inputs]
    kinds = sorted(track.kind for track in tracks)
    if kinds != ["audio", "video"]:
        raise MuxError(f"expected one audio and one video track file, got {', '.join(kinds) or 'none'}")
    audio, video = sorted(tracks, key=lambda t: t.kind)
    suffixes = _FORMATS.get((audio.codec, video.codec))
    if suffixes is None:
        raise MuxError(f"cannot join {audio.codec} and {video.codec} without transcoding")
    suffix = output.suffix.lower()
    if suffix not in suffixes:
        raise MuxError(f"{audio.codec} + {video.codec} go into {' or '.join(suffixes)}, not {suffix or 'no suffix'}")
    if ARRIVAL in (audio.sync.source, video.sync.source):
        log.warning("mux: aligning by arrival time (no sender report for %s): expect tens of ms of error",
                    ", ".join(str(t.path) for t in tracks if t.sync.source == ARRIVAL))
    if output.exists():
        raise MuxError(f"{output} exists")
    earliest = min(t.sync.capture_start_ns for t in tracks)
    offsets = {t.path: Fraction(t.sync.capture_start_ns - earliest, 1_000_000_000) for t in tracks}
    try:
        packets = _remux(output, _CONTAINERS[suffix], [(t.path, offsets[t.path]) for t in (video, audio)])
    except (OSError, av.FFmpegError) as exc:
        output.unlink(missing_ok=True)
        raise MuxError(f"{output}: {exc}") from exc
    return MuxResult(output, {path: float(offset) for path, offset in offsets.items()}, packets)


def _remux(output: Path, container_format: str, inputs: list[tuple[Path, Fraction]]) -> int:
    """Copy every packet of ``inputs`` into ``output``, each input shifted by its offset (seconds)."""
    sources = [av.open(str(path)) for path, _ in inputs]
    try:
        with av.open(str(output), "w", format=container_format) as out:
            streams = []
            for source, (_, offset) in zip(sources, inputs, strict=True):
                (stream,) = source.streams
                target = out.add_stream_from_template(stream, opaque=True)  # AV1's decoder, libdav1d, cannot encode
                streams.append((source, stream, target, offset))
            count = 0
            for _, packet, target, shift in heapq.merge(*(_packets(*s) for s in streams), key=lambda item: item[0]):
                if packet.pts is not None:
                    packet.pts += shift
                if packet.dts is not None:
                    packet.dts += shift
                packet.stream = target
                out.mux(packet)
                count += 1
            return count
    finally:
        for source in sources:
            source.close()


def _packets(
    source: InputContainer, stream: av.stream.Stream, target: av.stream.Stream, offset: Fraction
) -> Iterator[tuple[Fraction, av.Packet[av.stream.Stream], av.stream.Stream, int]]:
    """The stream's packets with their output time (for interleaving) and their shift in the stream's time base."""
    time_base = stream.time_base or Fraction(1, 1000)
    shift = round(offset / time_base)
    for packet in source.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue
        yield (packet.pts + shift) * time_base, packet, target, shift
