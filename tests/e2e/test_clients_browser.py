"""Headless Chromium publishes camera + mic with livekit-client (simulcast, RED, DTX, dynacast): the recordings
hold what a Chromium viewer in the same room receives. Serial (xdist_group "cpu"): each test runs a browser."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy
import pytest
from livekit.protocol import egress
from support.browser import BrowserClients, BrowserPublisher, BrowserViewer, join_token
from support.egress_helpers import av_request, file_request, media_seconds, until
from support.server import LiveKitServer, RoomFactory
from support.wsreceiver import Receiver

from trackegress.avegress import AvEgress
from trackegress.config import Config
from trackegress.egress import Egress
from trackegress.media.opus import opus_packet_samples
from trackegress.request import passthrough_track_request
from trackegress.sinks.pcm import ClockStats

# timing: run after the parallel run, on their own (rates compared with the viewer; a browser is CPU-heavy)
pytestmark = [pytest.mark.xdist_group("cpu"), pytest.mark.timing]
CAMERA = (1280, 720)  # the fake camera with the SDK's default capture (h720): the top simulcast layer
CAMERA_FPS = 20  # its frame rate
WINDOW = 6.0  # seconds of media recorded per test (the machine is shared: short windows, relative tolerances)
TOP_WAIT = 12.0  # seconds of media the video recording may wait for the top layer (egress.yaml top_layer_wait)


def pictures(path: Path, decoder: str | None = None) -> list[bytes]:
    """A digest of every decoded picture, by FFmpeg's own decoder or by ``decoder`` (e.g. ``libvpx-vp9``)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if decoder is None:
            frames = list(container.decode(stream))
        else:
            context = av.CodecContext.create(decoder, "r")
            frames = [f for p in container.demux(stream) if p.size for f in context.decode(p)]
            frames += context.decode(None)
        return [hashlib.sha256(f.to_ndarray().tobytes()).digest() for f in frames]


def frames_of(path: Path) -> list[tuple[int, int, float]]:
    """(width, height, pts seconds) of every decoded video frame."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=width,height,pts_time",
         "-of", "json", str(path)], capture_output=True, text=True, check=True,
    ).stdout
    return [(f["width"], f["height"], float(f["pts_time"])) for f in json.loads(out)["frames"]]


def decode_errors(path: Path, decoder: str | None = None) -> str:
    """What ``ffmpeg -v error -i f -f null -`` reports, with the null output on the file's own time base: by
    default it rounds times to 1/r_frame_rate, and a camera's frames closer than that (capture jitter) then
    collide in the *output* muxer ("non monotonically increasing dts"), though the file's DTS increase."""
    chosen = ["-c:v", decoder] if decoder else []
    result = subprocess.run(["ffmpeg", "-v", "error", *chosen, "-i", str(path), "-enc_time_base", "-1", "-f", "null",
                             "-"], capture_output=True, text=True)
    return result.stderr.strip()


def audio_seconds(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return float(out)


@dataclass
class Session:
    """One recorded window: the egresses' final infos and what the viewer received meanwhile."""

    video: egress.EgressInfo
    audio: egress.EgressInfo
    stream: egress.EgressInfo | None
    viewer: dict[str, Any]  # inbound at the window's end minus at its start (audio samples, loss)
    viewer_seconds: float
    viewer_decoded: list[tuple[float, int]]  # (page ms, video frames the viewer decoded so far), to the window's end
    viewer_audio: float  # seconds of audio the viewer received from the audio recording's first media to the end
    top: tuple[int, int]  # the top layer's size, which the publisher was sending when the recordings started
    pcm: bytes
    pcm_rate: float  # seconds of PCM per second of wall time, away from the stream's start and end
    pcm_span: float  # seconds of wall time pcm_rate was measured over
    pcm_clock: ClockStats | None  # what the WebSocket sink's PCM timeline did (silence filled in, resyncs)
    layer_switches: int  # picture size changes the video egress counted
    viewer_page: BrowserViewer
    top_gaps: list[str]  # the publisher not encoding the top layer at full size while the recording waited for it


class TopLayerSamples:
    """Samples, 4 times a second, whether the publisher encodes the camera's full size: libwebrtc suspends or
    scales its top encoding down when its bandwidth estimate or the CPU falls short (``qualityLimitationReason``),
    and a recording cannot start on a top layer that is not being sent."""

    def __init__(self, publisher: BrowserPublisher) -> None:
        self.publisher = publisher
        self.gaps: list[tuple[float, str]] = []  # (monotonic time, the encodings then)
        self.cutoff = float("inf")  # when the test itself turned the top layer off: not the publisher's doing
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        last: dict[str, int] = {}
        while True:
            encodings = [o for o in await self.publisher.outbound() if o["kind"] == "video"]
            counts = {o["rid"]: o["framesEncoded"] for o in encodings}
            full = [o for o in encodings if (o["frameWidth"], o["frameHeight"]) == CAMERA]
            if last and not any(o["framesEncoded"] > last.get(o["rid"], 0) for o in full):
                self.gaps.append((time.monotonic(), ", ".join(
                    f"{o['rid'] or '-'} {o['frameWidth']}x{o['frameHeight']} ({o['qualityLimitationReason']})"
                    for o in encodings)))
            last = counts
            await asyncio.sleep(0.25)

    def stop(self) -> list[tuple[float, str]]:
        self._task.cancel()
        return [(at, gap) for at, gap in self.gaps if at < self.cutoff]


class DecodedSamples:
    """Samples, 5 times a second, how many video frames the viewer has decoded (page clock, ms): its frame rate
    over any span, such as the one the video file covers (the publisher's rate varies when its CPU falls short)."""

    def __init__(self, viewer: BrowserViewer) -> None:
        self.viewer = viewer
        self.counts: list[tuple[float, int]] = []
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.add(await self.viewer.inbound())
            await asyncio.sleep(0.2)

    def add(self, inbound: dict[str, Any]) -> None:
        if "video" in inbound:
            self.counts.append((inbound["now"], inbound["video"]["framesDecoded"]))

    def stop(self, last: dict[str, Any]) -> list[tuple[float, int]]:
        self._task.cancel()
        self.add(last)
        return self.counts


def decoded_fps(counts: list[tuple[float, int]], seconds: float) -> float:
    """The viewer's frames per second over the last ``seconds`` of ``counts`` (linear between samples), or over
    all of them if they begin later (by less than a second: the file's first frame may precede the first sample)."""
    end, total = counts[-1]
    start = max(end - seconds * 1000, counts[0][0])
    assert end - start >= (seconds - 1) * 1000, f"the viewer sampled only {(end - start) / 1000:.1f} s"
    at_start = float(numpy.interp(start, [t for t, _ in counts], [n for _, n in counts]))
    return (total - at_start) / ((end - start) / 1000)


async def record_browser(
    server: LiveKitServer, room: str, clients: BrowserClients, receiver: Receiver | None = None,
    window: float = WINDOW, during: Any = None, **options: object,
) -> Session:
    """A viewer joins, Chromium publishes camera + mic with ``options``; once the top layer is encoding, record
    both tracks (and the mic to ``receiver``) for ``window`` seconds, then unpublish."""
    viewer = BrowserViewer(await clients.new_page())
    await viewer.join(server.url, join_token(server.api_key, server.api_secret, room, "viewer"))
    publisher = BrowserPublisher(await clients.new_page())
    await publisher.publish(server.url, join_token(server.api_key, server.api_secret, room, "alice"), **options)
    top = await top_layer(publisher)
    # A longer wait for the top layer than the 5 s default: on this shared 2-core machine the SFU has taken over 5 s
    # to forward a 720p keyframe (twice in five CI runs); what is checked is that the file starts on it.
    config = Config(ws_url=server.url, api_key=server.api_key, api_secret=server.api_secret,
                    local_dir=clients.files, top_layer_wait=TOP_WAIT)
    jobs = [Egress(file_request(room, publisher.video), config), Egress(file_request(room, publisher.audio), config)]
    if receiver is not None:
        ws = egress.TrackEgressRequest(room_name=room, track_id=publisher.audio, websocket_url=receiver.url())
        jobs.append(Egress(ws, config))
    samples, decoded = TopLayerSamples(publisher), DecodedSamples(viewer)
    runs = [asyncio.create_task(job.run()) for job in jobs]
    await until(lambda: all(job.frames for job in jobs), timeout=20)
    media_at = time.monotonic()
    before = await viewer.inbound()
    if during is not None:
        await during(publisher, jobs[0], samples)
    else:
        await asyncio.sleep(window)
    after = await viewer.inbound()
    top_gaps = [gap for at, gap in samples.stop() if at <= media_at + TOP_WAIT + 1]
    viewer_decoded = decoded.stop(after)
    viewer_seconds = (after["now"] - before["now"]) / 1000  # the page's clock: both stats reads, exactly
    await publisher.unpublish()
    infos = await asyncio.wait_for(asyncio.gather(*runs), 30)
    # What the viewer received from the audio recording's first media on, to the track's end.
    start = infos[1].file_results[0].started_at / 1e9
    log = await viewer.audio_log()
    first = next(n for t, n in log if t >= start)
    viewer_audio = (log[-1][1] - first) / 48_000 + (next(t for t, _ in log if t >= start) - start)
    delta = {
        "samples": after["audio"]["totalSamplesReceived"] - before["audio"]["totalSamplesReceived"],
        "packetsLost": after["video"]["packetsLost"] + after["audio"]["packetsLost"],
        "sizes": {tuple(size) for size in after["frames"]},
    }
    pcm, pcm_rate, pcm_span = b"", 0.0, 0.0
    if receiver is not None and receiver.conns:
        binary = [(t, m) for t, m in receiver.conns[0].messages if isinstance(m, bytes)]
        pcm = b"".join(m for _, m in binary)
        steady = [(t, m) for t, m in binary if binary[0][0] + 2 <= t <= binary[-1][0] - 1]
        # The slope of audio seconds received over arrival time (least squares): a stall of this process (which
        # also runs the egress) followed by a catch-up burst leaves it near 1, where it skews a ratio of endpoints.
        received = numpy.cumsum([len(m) for _, m in steady]) / 4 / 48_000
        pcm_rate = float(numpy.polyfit([t for t, _ in steady], received, 1)[0])
        pcm_span = steady[-1][0] - steady[0][0]
    stream_stats = jobs[2].stream_stats if receiver is not None else None
    return Session(infos[0], infos[1], infos[2] if receiver else None, delta, viewer_seconds, viewer_decoded,
                   viewer_audio, top, pcm, pcm_rate, pcm_span, stream_stats.clock if stream_stats else None,
                   jobs[0].layer_switches, viewer, top_gaps)


async def top_layer(publisher: BrowserPublisher, timeout: float = 30.0) -> tuple[int, int]:
    """Once the publisher's top encoding sends the camera's full size (libwebrtc may start it scaled down while
    its bandwidth estimate ramps up), that size."""
    encodings: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                encodings = [o for o in await publisher.outbound() if o["kind"] == "video"]
                sizes = {(o["frameWidth"], o["frameHeight"]) for o in encodings if o["framesEncoded"]}
                if CAMERA in sizes:
                    return CAMERA
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"the publisher never sent {CAMERA}: {encodings}") from None


def check_recordings(session: Session, files: Path, video_ext: str) -> list[tuple[int, int, float]]:
    """What every codec's test asserts: complete, decodes cleanly, top layer first, counts match the viewer."""
    for info in (session.video, session.audio):
        assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    video = files / session.video.file_results[0].filename
    audio = files / session.audio.file_results[0].filename
    assert video.suffix == video_ext and audio.suffix == ".ogg"
    assert decode_errors(video) == "" and decode_errors(audio) == ""
    frames = frames_of(video)
    if frames[0][:2] != session.top:  # only where the publisher did not keep sending its top layer at full size
        assert session.top_gaps, f"first frame {frames[0][:2]}, though the publisher sent {session.top} throughout"
    # Rates over the same span: frames per second of media over the file, decoded by the viewer over the span that
    # ended with the file (the publisher stopped right after the last sample). At least the viewer's rate (the SFU
    # may forward the viewer fewer temporal layers, or its decoder skip frames under load: 17.5 fps against the
    # file's 20.1 once in CI), at most the camera's (a frame written twice would show here).
    seconds = frames[-1][2] - frames[0][2]
    recorded_fps = (len(frames) - 1) / seconds
    viewer_fps = decoded_fps(session.viewer_decoded, seconds)
    assert 0.95 * viewer_fps <= recorded_fps <= 1.05 * CAMERA_FPS, (recorded_fps, viewer_fps)
    # Audio: all the viewer received is in the file, on the real-time line. (Not "as much as": after a stall of its
    # own, the viewer's jitter buffer drops samples to catch up, where the file keeps the timeline: 6.58 s vs 6.17.)
    seconds = audio_seconds(audio)
    span = (session.audio.ended_at - session.audio.file_results[0].started_at) / 1e9  # first media to the end
    assert 0.95 * session.viewer_audio <= seconds <= span, (seconds, session.viewer_audio, span)
    assert session.viewer["packetsLost"] == 0
    return frames


async def test_sdk_defaults_vp8_simulcast_red_dtx(
    livekit_server: LiveKitServer, make_room: RoomFactory, browser: BrowserClients
) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        session = await record_browser(livekit_server, await make_room(), browser, receiver)
    finally:
        await receiver.stop()
    check_recordings(session, browser.files, ".webm")
    # RED: what was recorded is the primary Opus encoding, one 20 ms packet each. DTX: the fake mic's silences
    # came as DTX (a packet every 400 ms); the gaps were kept on the timeline (the duration check above).
    with av.open(str(browser.files / session.audio.file_results[0].filename)) as container:
        packets = [bytes(p) for p in container.demux() if p.size]
    assert {opus_packet_samples(p) for p in packets} == {960}
    assert sum(len(p) <= 3 for p in packets) > 0, "no DTX gap in the recording"
    assert session.stream is not None
    assert egress.EgressStatus.Name(session.stream.status) == "EGRESS_COMPLETE", session.stream.error
    # The PCM stream is real time (seconds of audio per second, as the viewer's) and holds all the Ogg file does.
    # Give or take the silence the sink made up for audio later than its jitter buffer allowed, which it then sent
    # after that silence (a resync); the viewer's NetEQ squeezes such a delay out instead (seen: 350 ms, rate 1.044).
    viewer_rate = session.viewer["samples"] / 48_000 / session.viewer_seconds
    clock = session.pcm_clock
    assert clock is not None
    made_up = clock.stall_samples / 48_000 / session.pcm_span if clock.resyncs else 0.0
    assert abs(session.pcm_rate - viewer_rate) <= 0.05 * viewer_rate + made_up, (session.pcm_rate, viewer_rate, clock)
    ogg = audio_seconds(browser.files / session.audio.file_results[0].filename)
    assert len(session.pcm) / 4 / 48_000 >= 0.95 * ogg


@pytest.mark.parametrize("backup", [True, False], ids=["backup", "no-backup"])
async def test_h264_simulcast(
    backup: bool, livekit_server: LiveKitServer, make_room: RoomFactory, browser: BrowserClients
) -> None:
    # Three OpenH264 encoders on this shared machine: keep the resolution, let the frame rate give (as Chromium may
    # otherwise scale the top layer down for CPU and never send 720p within the test).
    session = await record_browser(livekit_server, await make_room(), browser, videoCodec="h264", backupCodec=backup,
                                   degradationPreference="maintain-resolution")
    check_recordings(session, browser.files, ".mp4")


@pytest.mark.parametrize("backup", [True, False], ids=["backup", "no-backup"])
@pytest.mark.parametrize("codec", ["vp9", "av1"])
async def test_svc_vp9_av1(
    codec: str, backup: bool, livekit_server: LiveKitServer, make_room: RoomFactory, browser: BrowserClients
) -> None:
    # libvpx / libaom SVC (L3T3_KEY): one RTP stream with three spatial layers; the SFU forwards a keyframe picture
    # with all three (the upper ones predicted from the lower) and then the top layer alone. A VP9 keyframe picture
    # is a superframe whose lower layers the recording marks hidden: FFmpeg's own decoder then shows what libvpx
    # (browsers) shows, picture for picture.
    session = await record_browser(livekit_server, await make_room(), browser, videoCodec=codec, backupCodec=backup,
                                   degradationPreference="maintain-resolution")
    frames = check_recordings(session, browser.files, ".webm")
    if codec == "vp9":
        video = browser.files / session.video.file_results[0].filename
        assert decode_errors(video, "libvpx-vp9") == ""
        assert pictures(video, "libvpx-vp9") == pictures(video) and len(frames) == len(pictures(video))


async def drop_top_layer_for_a_while(publisher: BrowserPublisher, video: Egress, samples: TopLayerSamples) -> None:
    """Once the video file has started, the publisher stops its top simulcast encoding for 2.5 s (as under a
    bandwidth cap), then resumes it."""
    await until(lambda: video.partial_file is not None and video.partial_file.size > 0, timeout=15)
    await asyncio.sleep(1.5)
    samples.cutoff = time.monotonic()
    await publisher.set_layer_active("f", False)
    await asyncio.sleep(2.5)
    await publisher.set_layer_active("f", True)
    await asyncio.sleep(3)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_layer_switch_mid_recording_plays_in_ffmpeg_and_chromium(
    codec: str, livekit_server: LiveKitServer, make_room: RoomFactory, browser: BrowserClients
) -> None:
    # dynacast off: the SDK would otherwise manage the encodings itself.
    session = await record_browser(livekit_server, await make_room(), browser, during=drop_top_layer_for_a_while,
                                   videoCodec=codec, dynacast=False, degradationPreference="maintain-resolution")
    assert egress.EgressStatus.Name(session.video.status) == "EGRESS_COMPLETE", session.video.error
    name = session.video.file_results[0].filename
    video = browser.files / name
    assert decode_errors(video) == ""
    sizes = [(w, h) for w, h, _ in frames_of(video)]
    if sizes[0] != session.top:  # only where the publisher did not send its top layer at full size before the drop
        assert session.top_gaps, f"first frame {sizes[0]}, though the publisher sent {session.top} until the drop"
    # (the switch back up may take the SFU longer than the window: not asserted)
    assert len(set(sizes)) > 1 and session.layer_switches >= 1, (set(sizes), session.layer_switches)
    played = await session.viewer_page.play(name)
    assert played["frames"] > 0 and f"{session.top[0]}x{session.top[1]}" in played["sizes"], played


async def test_an_a_v_egress_records_the_browsers_camera_and_mic_into_one_live_file(
    livekit_server: LiveKitServer, make_room: RoomFactory, browser: BrowserClients
) -> None:
    """Chromium publishes camera + mic with the SDK's defaults (VP8 simulcast, RED, DTX); one ``StartEgress``
    PASSTHROUGH of both writes one WebM while they record, aligned by Chromium's sender reports: both streams
    decode cleanly, the video on the top layer, both as long as the recording."""
    room = await make_room()
    publisher = BrowserPublisher(await browser.new_page())
    await publisher.publish(livekit_server.url, join_token(livekit_server.api_key, livekit_server.api_secret, room,
                                                           "alice"))
    await top_layer(publisher)
    start = av_request(room, publisher.video, publisher.audio, "{publisher_identity}-av")
    config = Config(ws_url=livekit_server.url, api_key=livekit_server.api_key, api_secret=livekit_server.api_secret,
                    local_dir=browser.files, top_layer_wait=TOP_WAIT)
    job = AvEgress(passthrough_track_request(start), publisher.audio, config, source=start)
    run = asyncio.create_task(job.run())
    await until(lambda: job.info.status == egress.EgressStatus.EGRESS_ACTIVE, timeout=20)
    await asyncio.sleep(WINDOW)
    await publisher.unpublish()
    done = await asyncio.wait_for(run, 30)

    assert egress.EgressStatus.Name(done.status) == "EGRESS_COMPLETE", done.error
    assert "joined live, aligned by sender_report" in done.details, done.details
    (result,) = done.file_results
    path = browser.files / result.filename
    assert result.filename == "alice-av.webm" and decode_errors(path) == ""
    seconds = media_seconds(path)
    print(f"A/V file: {seconds}; {done.details}")
    assert min(seconds.values()) > WINDOW - 1, seconds
    frames = frames_of(path)
    assert max(frame[:2] for frame in frames) == CAMERA, {frame[:2] for frame in frames}
