"""LiveKit's Go SDK (server-sdk-go v2.19.0, tests/go) publishes files as ``lk room join --publish`` does and drives
the egress API from Go (StartTrackEgress, ListEgress, StopEgress): against ``trackegress serve`` and against
livekit-server with ``trackegress worker``. The recordings hold the published frames byte for byte."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import yaml
from livekit.protocol import egress
from support.egress_service import EgressService
from support.media import (
    h264_nal_units,
    make_av1_ivf,
    make_g711_wav,
    make_h264,
    make_h265,
    make_opus_ogg,
    make_vp8_ivf,
    make_vp9_ivf,
)
from support.process import LogFile, stop_process, wait_ready
from support.redis_server import RedisServer
from support.server import REPO, LiveKitServer, RoomFactory
from support.wsreceiver import Receiver

from trackegress.config import Config
from trackegress.egress import Egress

LKCLIENT = REPO / ".bin" / "lkclient"
AV1_TEMPORAL_DELIMITER = b"\x12\x00"
SECONDS = 4.0


@pytest.fixture(scope="module")
def go_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not os.access(LKCLIENT, os.X_OK):
        reason = f"{LKCLIENT} not built (scripts/install-clients.sh)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("go-media")
    return {
        "opus": make_opus_ogg(folder / "tone.ogg", seconds=SECONDS),
        "vp8": make_vp8_ivf(folder / "testsrc.ivf", seconds=SECONDS),
        "h264": make_h264(folder / "testsrc.h264", seconds=SECONDS),
        "h265": make_h265(folder / "testsrc.h265", seconds=SECONDS),
        "vp9": make_vp9_ivf(folder / "testsrc-vp9.ivf", seconds=SECONDS),
        "av1": make_av1_ivf(folder / "testsrc-av1.ivf", seconds=SECONDS),
        "pcmu": make_g711_wav(folder / "tone-pcmu.wav", "pcm_mulaw", seconds=SECONDS),
        "pcma": make_g711_wav(folder / "tone-pcma.wav", "pcm_alaw", seconds=SECONDS),
    }


def lkclient(command: str, url: str, server: LiveKitServer, *args: str) -> dict[str, Any]:
    """One egress call through the Go SDK's EgressClient; its protojson answer."""
    result = subprocess.run([str(LKCLIENT), command, "-url", url, "-api-key", server.api_key, "-api-secret",
                             server.api_secret, *args], capture_output=True, text=True, timeout=40)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


class GoPublisher:
    """``lkclient publish``: the files as tracks, each unpublished once written; ``tracks`` maps file name → sid."""

    def __init__(self, server: LiveKitServer, room: str, files: list[Path]) -> None:
        self.server, self.room, self.files = server, room, files
        self.tracks: dict[str, str] = {}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            str(LKCLIENT), "publish", "-url", self.server.url, "-api-key", self.server.api_key, "-api-secret",
            self.server.api_secret, "-room", self.room, "-identity", "gopher", "-fps", "30",
            *map(str, self.files), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        while len(self.tracks) < len(self.files):
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
            assert line, "lkclient publish exited early"
            event = json.loads(line)
            if event["event"] == "published":
                self.tracks[Path(event["file"]).name] = event["track_sid"]

    async def wait(self) -> int:
        """Until every file was written and unpublished (the program then leaves)."""
        assert self.proc is not None and self.proc.stdout is not None
        await asyncio.wait_for(self.proc.stdout.read(), 60)
        return await self.proc.wait()


async def wait_complete(url: str, server: LiveKitServer, egress_id: str, timeout: float = 30) -> dict[str, Any]:
    """ListEgress (from Go) until the egress has ended; its final info."""
    async with asyncio.timeout(timeout):
        while True:
            items = (await asyncio.to_thread(lkclient, "egress-list", url, server, "-id", egress_id)).get("items", [])
            if items and items[0].get("status") in ("EGRESS_COMPLETE", "EGRESS_FAILED", "EGRESS_ABORTED"):
                return dict(items[0])
            await asyncio.sleep(0.3)


def published(path: Path) -> list[bytes]:
    """What the SDK's readers send: Ogg packets, IVF frames (AV1 without its temporal delimiters, which RTP leaves
    out), H.264 / H.265 NAL units (SEI dropped, as the SDK does), or WAV's G.711 bytes."""
    if path.suffix in (".h264", ".h265"):
        return [n for n in h264_nal_units(path.read_bytes()) if not is_sei(path.suffix, n)]
    with av.open(str(path)) as container:
        packets = [bytes(p) for p in container.demux() if p.size]
    if path.suffix == ".wav":
        return [b"".join(packets)]
    return [p.removeprefix(AV1_TEMPORAL_DELIMITER) for p in packets]


def is_sei(suffix: str, nal: bytes) -> bool:
    return nal[0] & 0x1F == 6 if suffix == ".h264" else (nal[0] >> 1) & 0x3F in (39, 40)


def recorded(path: Path, kind: str | None = None) -> list[bytes]:
    """The recording's frames (of its ``kind`` stream, if given) in the same units (MP4 video samples split into
    NAL units)."""
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if kind in (None, s.type)]
        packets = [bytes(p) for p in container.demux(streams) if p.size]
    if path.suffix == ".wav":
        return [b"".join(packets)]
    if path.suffix != ".mp4" or kind == "audio":
        return packets
    units = []
    for sample in packets:
        pos = 0
        while pos < len(sample):
            size = int.from_bytes(sample[pos:pos + 4], "big")
            units.append(sample[pos + 4:pos + 4 + size])
            pos += 4 + size
    return units


def assert_same_frames(source: Path, output: Path, kind: str | None = None) -> None:
    """The recording is the published stream from its first recorded frame on, byte for byte, to the end (G.711,
    measured: the SDK's first frame need not be the file's first 160 samples, and its last ~0.2 s may not arrive
    before the SDK unpublishes)."""
    sent, got = published(source), recorded(output, kind)
    if source.suffix == ".wav":  # G.711 samples as sent, from the second frame on, without a gap or an addition
        assert len(got[0]) >= 0.8 * len(sent[0]) and got[0][160:] in sent[0], (len(got[0]), len(sent[0]))
        return
    assert len(got) >= len(sent) // 2, (len(got), len(sent))
    assert got == sent[len(sent) - len(got):]


async def record_from_go(url: str, server: LiveKitServer, room: str, media: dict[str, Path],
                         stop_one: bool = False) -> dict[str, dict[str, Any]]:
    """Publish the files with the Go SDK, StartTrackEgress each from Go, wait until ListEgress says they ended."""
    publisher = GoPublisher(server, room, list(media.values()))
    await publisher.start()
    # started together (each call a Go process): one after another, the last started ~1 s into the files under
    # the parallel run's load (a G.711 recording kept 3 of 4 s once)
    answers = await asyncio.gather(*(asyncio.to_thread(lkclient, "egress-start", url, server, "-room", room,
                                                       "-track", sid) for sid in publisher.tracks.values()))
    started = dict(zip(publisher.tracks, answers, strict=True))
    for info in started.values():
        assert info.get("status", "EGRESS_STARTING") == "EGRESS_STARTING"  # protojson omits the zero value
        assert info["egressId"].startswith("EG_")
    if stop_one:
        ogg = next(sid for name, sid in publisher.tracks.items() if name.endswith(".ogg"))
        stopped = lkclient("egress-start", url, server, "-room", room, "-track", ogg,
                           "-filepath", "stopped.ogg")
        await asyncio.sleep(1.5)
        lkclient("egress-stop", url, server, "-id", stopped["egressId"])
        started["stopped"] = stopped
    assert await publisher.wait() == 0
    return {key: await wait_complete(url, server, info["egressId"]) for key, info in started.items()}


async def test_go_sdk_publish_and_egress_api_against_serve(
    livekit_server: LiveKitServer, make_room: RoomFactory, go_media: dict[str, Path], tmp_path: Path
) -> None:
    service = EgressService(livekit_server, tmp_path, cpu_cost={"track_cpu_cost": 0.1})  # 4 egresses at once
    media = {codec: go_media[codec] for codec in ("opus", "vp8", "h264")}
    try:
        infos = await record_from_go(service.url, livekit_server, await make_room(), media, stop_one=True)
    finally:
        service.stop()
    for codec, extension in (("opus", ".ogg"), ("vp8", ".webm"), ("h264", ".mp4")):
        info = infos[media[codec].name]
        assert info["status"] == "EGRESS_COMPLETE", info
        output = Path(info["fileResults"][0]["location"])
        assert output.suffix == extension
        assert_same_frames(media[codec], output)
    stopped = infos["stopped"]
    assert stopped["status"] == "EGRESS_COMPLETE"
    assert stopped["details"].split("; sync: ")[0] == "End reason: StopEgress API"


async def test_go_sdk_publishes_h265_vp9_av1_pcmu_pcma(
    livekit_server: LiveKitServer, make_room: RoomFactory, go_media: dict[str, Path], tmp_path: Path
) -> None:
    # The SDK's file readers for the codecs beyond the first three: each recording is what was published.
    service = EgressService(livekit_server, tmp_path, cpu_cost={"track_cpu_cost": 0.1})
    media = {codec: go_media[codec] for codec in ("h265", "vp9", "av1", "pcmu", "pcma")}
    try:
        infos = await record_from_go(service.url, livekit_server, await make_room(), media)
    finally:
        service.stop()
    for codec, extension in (("h265", ".mp4"), ("vp9", ".webm"), ("av1", ".webm"), ("pcmu", ".wav"),
                             ("pcma", ".wav")):
        info = infos[media[codec].name]
        assert info["status"] == "EGRESS_COMPLETE", (codec, info)
        output = Path(info["fileResults"][0]["location"])
        assert output.suffix == extension
        assert decode_errors(output) == "", codec
        assert_same_frames(media[codec], output)


@pytest.mark.parametrize(("codec", "hz"), [("pcmu", 440), ("pcma", 660)])
async def test_go_sdk_g711_to_websocket_pcm(
    codec: str, hz: int, livekit_server: LiveKitServer, make_room: RoomFactory, tmp_path: Path
) -> None:
    # A G.711 track streamed as the PCM upstream sends: s16le 48 kHz stereo, the tone at its frequency.
    tone = make_g711_wav(tmp_path / f"tone-{codec}.wav", f"pcm_{'mulaw' if codec == 'pcmu' else 'alaw'}",
                         seconds=SECONDS, hz=hz)
    room = await make_room()
    publisher = GoPublisher(livekit_server, room, [tone])
    receiver = Receiver()
    await receiver.start()
    try:
        await publisher.start()
        config = Config(ws_url=livekit_server.url, api_key=livekit_server.api_key,
                        api_secret=livekit_server.api_secret, local_dir=tmp_path)
        request = egress.TrackEgressRequest(room_name=room, track_id=publisher.tracks[tone.name],
                                            websocket_url=receiver.url())
        run = asyncio.create_task(Egress(request, config).run())
        assert await publisher.wait() == 0
        info = await asyncio.wait_for(run, 30)
    finally:
        await receiver.stop()
    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    pcm = np.frombuffer(b"".join(m for _, m in receiver.conns[0].messages if isinstance(m, bytes)), "<i2")
    left, right = pcm[0::2], pcm[1::2]
    assert left.tolist() == right.tolist()
    assert len(left) / 48_000 == pytest.approx(SECONDS, rel=0.15)  # what the SFU forwarded after the subscription
    audible = left[np.abs(left) > 0].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(audible))
    assert np.argmax(spectrum) * 48_000 / len(audible) == pytest.approx(hz, abs=5)


def decode_errors(path: Path) -> str:
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                          text=True).stderr.strip()


class WorkerProcess:
    """``trackegress worker`` for livekit-server's psrpc egress requests over Redis."""

    def __init__(self, workdir: Path, server: LiveKitServer, redis: RedisServer) -> None:
        config = workdir / "egress.yaml"
        config.write_text(yaml.safe_dump({
            "api_key": server.api_key, "api_secret": server.api_secret, "ws_url": server.url,
            "redis": {"address": redis.address}, "local_dir": str(workdir / "recordings"),
            "data_dir": str(workdir / "data"), "track_wait_timeout": "5s",
        }))
        self._log = LogFile("trackegress-worker-")
        self.proc = subprocess.Popen([sys.executable, "-m", "trackegress.cli", "worker", "--config", str(config),
                                      "--shutdown-grace", "1"], stdout=subprocess.DEVNULL, stderr=self._log.file)
        wait_ready(self.proc, lambda: "serving (cluster_id" in self._log.text(), 20, "trackegress worker",
                   lambda: self._log.tail(40))

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self._log.close()


@pytest.fixture
def livekit_with_worker(tmp_path: Path, go_media: dict[str, Path]) -> Iterator[LiveKitServer]:
    with RedisServer() as redis, LiveKitServer(redis_address=redis.address) as server:
        worker = WorkerProcess(tmp_path, server, redis)
        try:
            yield server
        finally:
            worker.stop()


async def test_go_sdk_egress_api_through_livekit_server_and_worker(
    livekit_with_worker: LiveKitServer, go_media: dict[str, Path]
) -> None:
    server = livekit_with_worker
    room = "go-worker"
    infos = await record_from_go(server.http_url, server, room, {"vp8": go_media["vp8"]})
    info = infos[go_media["vp8"].name]
    assert info["status"] == "EGRESS_COMPLETE", info
    assert_same_frames(go_media["vp8"], Path(info["fileResults"][0]["location"]))


async def test_go_sdk_start_egress_of_a_participants_audio_and_video_writes_one_mp4(
    livekit_server: LiveKitServer, make_room: RoomFactory, go_media: dict[str, Path], tmp_path: Path
) -> None:
    """The Go SDK publishes an Opus and an H.264 file as one participant (``lk room join --publish a b``) and
    calls ``StartEgress`` (PASSTHROUGH, the video track and an audio route) on serve: one MP4 with both tracks'
    frames as published."""
    service = EgressService(livekit_server, tmp_path)
    room = await make_room()
    publisher = GoPublisher(livekit_server, room, [go_media["opus"], go_media["h264"]])
    try:
        await publisher.start()
        video, audio = (publisher.tracks[go_media[codec].name] for codec in ("h264", "opus"))
        started = lkclient("egress-start-av", service.url, livekit_server, "-room", room, "-track", video,
                           "-audio", audio, "-filepath", "{room_name}/{publisher_identity}")
        assert started["egressId"].startswith("EG_") and started["egress"]["media"]["videoTrackId"] == video
        assert await publisher.wait() == 0
        info = await wait_complete(service.url, livekit_server, started["egressId"])
    finally:
        service.stop()
    assert info["status"] == "EGRESS_COMPLETE", info
    (result,) = info["fileResults"]
    output = Path(result["location"])
    assert result["filename"] == f"{room}/gopher.mp4" and "joined live, aligned by" in info["details"]
    print(info["details"])
    assert_same_frames(go_media["h264"], output, "video")
    assert_same_frames(go_media["opus"], output, "audio")
