"""File track egress against the real livekit-server: the published frames come out byte-for-byte."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import pytest
from google.protobuf.json_format import Parse
from livekit import api
from livekit.protocol import egress
from support.egress_helpers import file_request, record_published, until
from support.media import h264_canonical, make_h264
from support.publisher import Publisher
from support.server import LiveKitServer, RoomFactory, free_port

from trackegress.config import Config
from trackegress.egress import Egress

EXTENSIONS = {"opus": "ogg", "vp8": "webm", "h264": "mp4"}
Status = egress.EgressStatus


def config_for(server: LiveKitServer, local_dir: Path, **overrides: object) -> Config:
    values: dict[str, object] = {
        "ws_url": server.url, "api_key": server.api_key, "api_secret": server.api_secret, "local_dir": local_dir,
    }
    return Config(**(values | overrides))  # type: ignore[arg-type]


def packets(path: Path) -> list[bytes]:
    """The encoded frames in a recording; MP4 back in Annex B with 4-byte start codes, as published."""
    if path.suffix != ".mp4":
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux() if p.size]
    annexb = path.with_suffix(".h264")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-c", "copy", "-bsf:v", "h264_mp4toannexb",
                    str(annexb)], check=True)
    with av.open(str(annexb), format="h264") as container:
        return [h264_canonical(bytes(p)) for p in container.demux() if p.size]


def decode_errors(path: Path) -> str:
    result = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                            text=True)
    return result.stderr.strip()


def probe_duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return float(out)


async def record_while_publishing(
    server: LiveKitServer, room: str, path: Path, local_dir: Path, filepath: str = ""
) -> tuple[egress.EgressInfo, list[bytes], str]:
    """Publish ``path`` (held until the recorder has joined), record it, leave; returns (info, sent, track)."""
    config = config_for(server, local_dir)
    return await record_published(server, room, path, config, lambda track: file_request(room, track, filepath))


@pytest.mark.parametrize("codec", ["opus", "vp8", "h264"])
async def test_published_frames_are_recorded_byte_for_byte(
    codec: str, livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path
) -> None:
    info, sent, track = await record_while_publishing(livekit_server, await make_room(), sample_media[codec], tmp_path)

    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    end_reason, sync_details = info.details.split("; sync: ")
    assert end_reason == "End reason: Source closed"
    result = info.file_results[0]
    assert result.filename.startswith(f"{track}-") and result.filename.endswith(f".{EXTENSIONS[codec]}")
    out = tmp_path / result.filename
    assert result.location == str(out.resolve())
    assert result.size == out.stat().st_size > 0
    recorded = packets(out)
    skipped = len(sent) - len(recorded)
    assert 0 <= skipped <= 30, "at most the first GOP may be missing"
    assert recorded == [h264_canonical(f) if codec == "h264" else f for f in sent[skipped:]]
    assert decode_errors(out) == ""
    expected_seconds = (len(recorded) * (0.02 if codec == "opus" else 1 / 30))
    assert probe_duration(out) == pytest.approx(expected_seconds, abs=0.1)
    assert result.duration / 1e9 == pytest.approx(expected_seconds, abs=0.1)
    assert result.ended_at - result.started_at == result.duration
    manifest = json.loads((tmp_path / f"{info.egress_id}.json").read_text())
    assert manifest["track_id"] == track and manifest["publisher_identity"] == "alice"
    assert manifest["files"] == [{"filename": result.filename, "location": result.location}]
    assert info.manifest_location == str((tmp_path / f"{info.egress_id}.json").resolve())
    sync = manifest["sync"]  # aiortc sends sender reports: the first sample placed on its (this machine's) clock
    assert (sync["source"], sync["clock_rate"]) == ("sender_report", 48_000 if codec == "opus" else 90_000)
    assert sync_details == (f"capture_start_ns={sync['capture_start_ns']} source=sender_report "
                            f"clock_rate={sync['clock_rate']} first_rtp_timestamp={sync['first_rtp_timestamp']}")
    print("capture start - file started_at (ms):", (sync["capture_start_ns"] - result.started_at) / 1e6)
    assert abs(sync["capture_start_ns"] - result.started_at) < 200_000_000, "captured just before it arrived"


async def test_a_publisher_without_sender_reports_gets_its_arrival_time_flagged(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path
) -> None:
    """No RTCP from the publisher, so no sender report reaches the recorder: the manifest and ``details`` place
    the file's first sample at its arrival here, flagged ``source=arrival`` (what ``trackegress mux`` warns of)."""
    room, config = await make_room(), config_for(livekit_server, tmp_path)
    info, _, _ = await record_published(livekit_server, room, sample_media["opus"], config,
                                        lambda track: file_request(room, track, ""), sender_reports=False)

    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    sync = json.loads((tmp_path / f"{info.egress_id}.json").read_text())["sync"]
    assert (sync["source"], sync["clock_rate"], sync["sender_report"]) == ("arrival", 48_000, None), sync
    assert info.details.endswith(f"; sync: capture_start_ns={sync['capture_start_ns']} source=arrival "
                                 f"clock_rate=48000 first_rtp_timestamp={sync['first_rtp_timestamp']}"), info.details
    started_at = info.file_results[0].started_at
    assert 0 <= started_at - sync["capture_start_ns"] < 100_000_000, "the first frame's arrival, just before started_at"


@pytest.mark.parametrize("codec", ["opus", "vp8"])
async def test_media_over_ice_tcp_only_is_recorded_byte_for_byte(
    codec: str, livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path
) -> None:
    """With ``media_protocols: [tcp]`` the core has no UDP socket: everything comes over the TCP connection it
    dials to livekit-server's passive candidate (``rtc.tcp_port``), as where a firewall lets no UDP through."""
    room = await make_room()
    config = config_for(livekit_server, tmp_path, media_protocols=("tcp",))
    info, sent, _ = await record_published(
        livekit_server, room, sample_media[codec], config, lambda track: file_request(room, track)
    )
    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    recorded = packets(tmp_path / info.file_results[0].filename)
    skipped = len(sent) - len(recorded)
    assert 0 <= skipped <= 30 and recorded == sent[skipped:]


async def test_filename_template(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path
) -> None:
    room = await make_room()
    template = "{room_name}/{publisher_identity}-{track_type}-{track_source}-{track_id}.mp4"
    info, _, track = await record_while_publishing(livekit_server, room, sample_media["opus"], tmp_path, template)
    assert info.file_results[0].filename == f"{room}/alice-audio-microphone-{track}.ogg"
    assert (tmp_path / room / f"alice-audio-microphone-{track}.ogg").stat().st_size > 0


async def test_unknown_track_fails_not_found(
    livekit_server: LiveKitServer, make_room: RoomFactory, tmp_path: Path
) -> None:
    room = await make_room()
    job = Egress(file_request(room, "TR_doesnotexist"), config_for(livekit_server, tmp_path, track_wait_timeout=1.0))
    info = await asyncio.wait_for(job.run(), 15)
    assert egress.EgressStatus.Name(info.status) == "EGRESS_FAILED"
    assert (info.error, info.error_code) == ("track TR_doesnotexist not found", 404)
    assert list(tmp_path.iterdir()) == []


def cli(server: LiveKitServer, *args: str) -> list[str]:
    return [sys.executable, "-m", "trackegress.cli", "record", "--url", server.url, "--api-key", server.api_key,
            "--api-secret", server.api_secret, *args]


async def test_cli_refuses_a_path_that_escapes_the_base_dir(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    base = tmp_path / "recordings"
    result = subprocess.run(
        cli(livekit_server, "--room", "r", "--track", "TR_x", "--output", "../outside.ogg", "--local-dir", str(base)),
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "invalid_argument" in result.stderr and "outside.ogg" in result.stderr
    assert not base.exists() and not (tmp_path / "outside.ogg").exists()


async def test_cli_records_until_the_publisher_leaves(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    vp8 = sample_media["vp8"]
    async with Publisher(livekit_server.url, creds, room, "bob", vp8, start_delay=None, prime=True) as pub:
        proc = await asyncio.create_subprocess_exec(
            *cli(livekit_server, "--room", room, "--track", pub.track_sid, "--output", "bob.webm",
                 "--local-dir", str(tmp_path)),
            stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(4)  # interpreter start, join, subscription
        pub.begin()
        await asyncio.wait_for(pub.done, 15)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    info = Parse(stdout.decode(), egress.EgressInfo())
    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE"
    assert info.file_results[0].filename == "bob.webm"
    assert decode_errors(tmp_path / "bob.webm") == ""


async def test_ctrl_c_stops_the_recording_and_it_completes(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, "dan", sample_media["opus"], loop=True, prime=True) as pub:
        proc = await asyncio.create_subprocess_exec(
            *cli(livekit_server, "--room", room, "--track", pub.track_sid, "--output", "dan.ogg",
                 "--local-dir", str(tmp_path)),
            stdout=asyncio.subprocess.PIPE,
        )
        out = tmp_path / "dan.ogg"
        await until(lambda: out.exists() and out.stat().st_size > 20_000, timeout=30)
        proc.send_signal(signal.SIGINT)
        stdout, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    info = Parse(stdout.decode(), egress.EgressInfo())
    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    assert info.details.startswith("End reason: Stopped by SIGINT"), info.details
    assert info.file_results[0].duration > 1_000_000_000
    assert decode_errors(out) == ""


async def test_kill_9_leaves_a_playable_mp4(
    livekit_server: LiveKitServer, make_room: RoomFactory, tmp_path: Path
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    source = make_h264(tmp_path / "long.h264", seconds=4)
    async with Publisher(livekit_server.url, creds, room, "carol", source, loop=True, prime=True) as pub:
        proc = subprocess.Popen(
            cli(livekit_server, "--room", room, "--track", pub.track_sid, "--output", "crash.mp4",
                "--local-dir", str(tmp_path / "rec")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        out = tmp_path / "rec" / "crash.mp4"
        await until(lambda: out.exists() and out.stat().st_size > 100_000, timeout=30)
        await asyncio.sleep(2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    frames = subprocess.run(
        ["ffprobe", "-v", "error", "-count_packets", "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0",
         str(out)], capture_output=True, text=True, check=True,
    )
    assert frames.stderr == ""
    assert int(frames.stdout) >= 60  # at least two seconds of 30 fps video survived
    assert decode_errors(out) == ""


async def test_stop_before_any_media_is_aborted(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, "dave", sample_media["opus"], start_delay=None) as pub:
        job = Egress(file_request(room, pub.track_sid), config_for(livekit_server, tmp_path))
        run = asyncio.create_task(job.run())
        await until(lambda: job.info.room_id)
        await asyncio.sleep(1)
        job.stop()
        info = await asyncio.wait_for(run, 10)
    assert egress.EgressStatus.Name(info.status) == "EGRESS_ABORTED"
    assert (info.error, info.error_code) == ("Start signal not received", 412)
    assert list(tmp_path.iterdir()) == []


async def test_room_deleted_mid_recording_completes(
    livekit_server: LiveKitServer, make_room: RoomFactory, room_api: api.LiveKitAPI, sample_media: dict[str, Path],
    tmp_path: Path,
) -> None:
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, "erin", sample_media["opus"], loop=True) as pub:
        job = Egress(file_request(room, pub.track_sid, "erin.ogg"), config_for(livekit_server, tmp_path))
        run = asyncio.create_task(job.run())
        await until(lambda: job.frames > 50)
        await room_api.room.delete_room(api.DeleteRoomRequest(room=room))
        info = await asyncio.wait_for(run, 10)
    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    assert info.file_results[0].filename == "erin.ogg"
    assert decode_errors(tmp_path / "erin.ogg") == ""


async def test_unreachable_livekit_server_fails(make_room: RoomFactory, tmp_path: Path) -> None:
    config = Config(ws_url=f"ws://127.0.0.1:{free_port()}", api_key="devkey", api_secret="secret", local_dir=tmp_path)
    info = await asyncio.wait_for(Egress(file_request("r", "TR_x"), config).run(), 20)
    assert egress.EgressStatus.Name(info.status) == "EGRESS_FAILED"
    assert info.error.startswith("connection to room failed") and info.error_code == 503


async def test_many_egresses_started_at_once_all_become_active(
    livekit_server: LiveKitServer, make_room: RoomFactory, sample_media: dict[str, Path], tmp_path: Path
) -> None:
    """Offers landing during the DTLS handshake used to leave aiortc receivers unstarted (5 of 50 stuck)."""
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, "frank", sample_media["opus"], loop=True) as pub:
        config = config_for(livekit_server, tmp_path)
        jobs = [Egress(file_request(room, pub.track_sid, f"{i}"), config) for i in range(50)]
        runs = [asyncio.create_task(job.run()) for job in jobs]
        try:
            await until(lambda: all(job.info.status == Status.EGRESS_ACTIVE for job in jobs), timeout=30)
        finally:
            for job in jobs:
                job.stop()
            infos = await asyncio.wait_for(asyncio.gather(*runs), 30)
    assert {egress.EgressStatus.Name(info.status) for info in infos} == {"EGRESS_COMPLETE"}
