"""The live A/V file: a participant's video and audio tracks muxed into one file as they are recorded, never
transcoded, aligned by their capture times (``media/sync.py``), as ``trackegress mux`` aligns the track files.

Each track's ``FileSink`` hands its lane every packet its own muxer wrote (``Muxer``'s tee: the same packets, gaps
filled the same way). The file opens once both lanes have a first packet and both tracks' sender reports placed
them on the publisher's clock (LiveKit forwards the first ~3 s after the first frame); until then the lanes hold
their packets (the track files have them meanwhile). A lane that holds ``SYNC_WAIT`` seconds of media without
them: both are aligned by arrival instead, and the file says so (``aligned_by``). A lane alone for that long (the
other track has sent nothing yet) keeps only its last ``SYNC_WAIT`` seconds, from a keyframe.

Once open, packets are written as they come (FFmpeg interleaves the two, holding one at most ``INTERLEAVE``):
WebM in clusters of at most a second, MP4 in fragments (``media/codecs.py``), so a killed process leaves a file
that plays both tracks up to about a second before the kill. A write error stops the file (``error``), never the
tracks' recordings.
"""

from __future__ import annotations

import fractions
import heapq
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
from av.container import OutputContainer
from av.stream import Stream

from trackegress.media.codecs import Size, output_format
from trackegress.media.frames import Codec
from trackegress.media.sync import ARRIVAL, SENDER_REPORT, SyncInfo
from trackegress.sinks.muxer import encoded_packet, opus_stream, video_stream

log = logging.getLogger(__name__)

SYNC_WAIT = 6.0  # seconds of media a lane holds waiting for the sender reports (LiveKit's first came after ~2.8 s)
INTERLEAVE = "1000000"  # µs FFmpeg's interleaving may hold one stream's packets for the other's
# WebM: a cluster (what a killed process can lose) lasts at most a second; MP4: the track file's fragments
_OPTIONS = {"webm": {"cluster_time_limit": "1000"}}
KINDS = ("video", "audio")


class TrackTiming(Protocol):
    """What a lane needs of its track's recording (``FileSink``)."""

    codec: Codec

    @property
    def sync(self) -> SyncInfo | None:
        """The capture time of the track's first packet (by sender report once one came)."""
        ...

    @property
    def arrival_sync(self) -> SyncInfo | None:
        """The arrival time of the track's first packet."""
        ...

    @property
    def header_size(self) -> Size | None:
        """The picture size the track's file declares (video)."""
        ...


@dataclass(frozen=True, slots=True)
class _Packet:
    data: bytes
    timestamp: int  # the track's extended RTP timestamp
    keyframe: bool
    duration: int


class Lane:
    """One track's side of the live file (its ``Muxer``'s tee)."""

    def __init__(self, owner: LiveMux) -> None:
        self._owner = owner
        self.track: TrackTiming | None = None  # set by the track's FileSink
        self.held: list[_Packet] = []
        self.origin: int | None = None  # the timestamp of the track's first packet (its file's time 0)
        self.shift = 0  # ticks from the live file's time 0 to ``origin``
        self.stream: Stream | None = None

    def packet(self, data: bytes, timestamp: int, keyframe: bool, duration: int) -> None:
        """The track's muxer wrote this packet (``timestamp``: the extended RTP timestamp)."""
        if self.origin is None:
            self.origin = timestamp
        self._owner.take(self, _Packet(data, timestamp, keyframe, duration))

    @property
    def clock_rate(self) -> int:
        assert self.track is not None
        return self.track.codec.clock_rate

    def held_seconds(self) -> float:
        if not self.held:
            return 0.0
        last = self.held[-1]
        return (last.timestamp + last.duration - self.held[0].timestamp) / self.clock_rate

    def hold(self, packet: _Packet) -> None:
        """Hold ``packet`` until the file opens; a held run starts on a keyframe (audio: every packet)."""
        if self.held or packet.keyframe:
            self.held.append(packet)

    def trim(self) -> None:
        """Keep the last ``SYNC_WAIT`` seconds held, starting on a keyframe."""
        while self.held_seconds() > SYNC_WAIT:
            del self.held[:next((k for k in range(1, len(self.held)) if self.held[k].keyframe), len(self.held))]

    def place(self, ticks: int) -> None:
        """Put the first packet held at ``ticks`` into the file."""
        assert self.origin is not None
        self.shift = ticks + self.origin - self.held[0].timestamp

    def start_ns(self, sync: SyncInfo) -> int:
        """The capture time (by ``sync``) of the first packet held."""
        assert self.origin is not None
        return sync.capture_start_ns + (self.held[0].timestamp - self.origin) * 1_000_000_000 // self.clock_rate


class LiveMux:
    """The live A/V file (see the module docstring): lanes fill it, ``start`` names it, ``close`` finishes it."""

    def __init__(self) -> None:
        self.lanes = {kind: Lane(self) for kind in KINDS}
        self._target: tuple[Path, str] | None = None  # path, FFmpeg format
        self._container: OutputContainer | None = None
        self.offsets: dict[str, float] = {}  # each lane's first packet in the file (s), once open
        self.skipped: dict[str, float] = {}  # seconds at a track's start the file lacks (held too long alone)
        self.aligned_by: str | None = None  # SENDER_REPORT or ARRIVAL, once open
        self.error: str | None = None
        self.packets = 0  # written into the file
        self.duration = 0.0  # seconds from the file's start to the end of its last packet
        self._closed = False

    def start(self, path: Path, video: Codec) -> None:
        """Write the file at ``path`` (claimed; its container follows the video codec) as soon as it can open."""
        self._target = (path, output_format(video).container)
        self._open_when_ready()

    def take(self, lane: Lane, packet: _Packet) -> None:
        if self.error is not None or self._closed:
            return
        if self._container is None:
            lane.hold(packet)
            self._trim_alone()
            self._open_when_ready()
        else:
            self._write([(lane, packet)])

    def close(self) -> None:
        """Open with what the lanes hold if it never could (by arrival without sender reports), write it, finish
        the file; ``error`` says why there is none. Once: later packets and calls are ignored."""
        if self._closed:
            return
        self._closed = True
        if self._container is None and self.error is None:
            if not all(lane.held for lane in self.lanes.values()):
                empty = [kind for kind, lane in self.lanes.items() if not lane.held]
                self.error = f"nothing recorded of the {' and '.join(empty)} track to join"
            elif self._target is not None and (source := self._sync_source(force=True)) is not None:
                self._open(source)
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except (OSError, av.FFmpegError) as exc:
                self._fail(exc)

    def summary(self) -> str:
        """``aligned by sender_report: video at +0.030 s, audio at +0.000 s (912 packets)``; a track's start the
        file lacks is told (``(its first 4.000 s not held)``)."""
        starts = ", ".join(f"{kind} at +{self.offsets[kind]:.3f} s" + (
            f" (its first {self.skipped[kind]:.3f} s not held)" if self.skipped[kind] else "") for kind in KINDS)
        return f"aligned by {self.aligned_by}: {starts} ({self.packets} packets)"

    # opening

    def _trim_alone(self) -> None:
        """A lane holding packets while the other has none keeps its last ``SYNC_WAIT`` seconds."""
        video, audio = self.lanes["video"], self.lanes["audio"]
        for lane, other in ((video, audio), (audio, video)):
            if not other.held:
                lane.trim()

    def _open_when_ready(self) -> None:
        if self._target is None:
            return
        source = self._sync_source(force=False)
        if source is not None:
            self._open(source)

    def _sync_source(self, *, force: bool) -> str | None:
        """How the lanes are aligned, once they can be: by sender reports if both tracks have them, by arrival if
        one lane has waited ``SYNC_WAIT`` (or ``force``); None while both must wait."""
        lanes = list(self.lanes.values())
        if not all(lane.held for lane in lanes):
            return None
        syncs = [lane.track.sync if lane.track is not None else None for lane in lanes]
        if all(sync is not None and sync.source == SENDER_REPORT for sync in syncs):
            return SENDER_REPORT
        if force or any(lane.held_seconds() >= SYNC_WAIT for lane in lanes):
            return ARRIVAL
        return None

    def _open(self, source: str) -> None:
        assert self._target is not None
        path, container_format = self._target
        starts: dict[str, int] = {}
        for kind, lane in self.lanes.items():
            assert lane.track is not None and lane.origin is not None
            sync = lane.track.sync if source == SENDER_REPORT else lane.track.arrival_sync
            assert sync is not None
            starts[kind] = lane.start_ns(sync)
            self.skipped[kind] = (lane.held[0].timestamp - lane.origin) / lane.clock_rate
        earliest = min(starts.values())
        video = self.lanes["video"].track
        assert video is not None
        options = {"flush_packets": "1", "max_interleave_delta": INTERLEAVE, **_OPTIONS.get(container_format, {}),
                   **output_format(video.codec).mux_options}
        try:
            self._container = av.open(str(path), "w", format=container_format, options=options)
            for kind, lane in self.lanes.items():
                lane.stream = _stream(self._container, lane)
                lane.place((starts[kind] - earliest) * lane.clock_rate // 1_000_000_000)
                self.offsets[kind] = (starts[kind] - earliest) / 1e9
        except (OSError, av.FFmpegError) as exc:
            self._fail(exc)
            return
        self.aligned_by = source
        log.info("A/V file %s open, aligned by %s: video at +%.3f s, audio at +%.3f s", path.name, source,
                 self.offsets["video"], self.offsets["audio"])
        held = list(heapq.merge(*(_timed(lane) for lane in self.lanes.values()), key=lambda item: item[0]))
        for lane in self.lanes.values():
            lane.held = []
        self._write([(lane, packet) for _, lane, packet in held])

    # writing

    def _write(self, packets: list[tuple[Lane, _Packet]]) -> None:
        assert self._container is not None
        try:
            for lane, item in packets:
                assert lane.origin is not None and lane.stream is not None
                pts = item.timestamp - lane.origin + lane.shift
                time_base = fractions.Fraction(1, lane.clock_rate)
                self._container.mux(encoded_packet(lane.stream, item.data, pts, time_base, item.keyframe,
                                                   item.duration))
                self.packets += 1
                self.duration = max(self.duration, (pts + item.duration) / lane.clock_rate)
        except (OSError, av.FFmpegError, ValueError) as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self.error = f"writing the A/V file failed: {exc}"
        log.warning("%s", self.error)
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except (OSError, av.FFmpegError):
                pass


def _timed(lane: Lane) -> Iterator[tuple[float, Lane, _Packet]]:
    """A lane's held packets with their time in the file (s), for interleaving."""
    assert lane.origin is not None
    for packet in lane.held:
        yield (packet.timestamp - lane.origin + lane.shift) / lane.clock_rate, lane, packet


def _stream(container: OutputContainer, lane: Lane) -> Stream:
    """The lane's stream: video as the track file declares it, Opus with the track file's header (pre-skip 0)."""
    assert lane.track is not None
    codec = lane.track.codec
    if codec is not Codec.OPUS:
        size = lane.track.header_size
        assert size is not None
        return video_stream(container, codec, size)
    with _opus_template() as template:
        return container.add_stream_from_template(template.streams.audio[0])


def _opus_template() -> av.container.InputContainer:
    """An Ogg Opus stream in memory whose header is the track file's: the template of the file's audio stream (an
    encoder's stream would carry libopus's pre-skip, which WebM writes as a codec delay)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as ogg:
        stream, _ = opus_stream(ogg)
        ogg.mux(encoded_packet(stream, b"\xfc", 0, fractions.Fraction(1, 48_000), True, 960))
    buffer.seek(0)
    return av.open(buffer, "r")
