"""The unified ``StartEgress`` with preset PASSTHROUGH: upstream's shape rules (livekit/egress ``validatePassthrough``,
PR #1342) and the track egress it runs as."""

from __future__ import annotations

import pytest
from livekit.protocol import egress, models

from trackegress.errors import RequestError
from trackegress.info import recorded_track_id, request_webhooks
from trackegress.redact import redact_start_request
from trackegress.request import PublishedTrack, av_audio_track, check_av_pair, passthrough_track_request
from trackegress.storage.settings import SECRET_FIELDS

PASSTHROUGH = egress.EncodingOptionsPreset.PASSTHROUGH


def audio(track_id: str = "TR_audio") -> egress.MediaSource:
    return egress.MediaSource(audio=egress.AudioConfig(routes=[egress.AudioRoute(track_id=track_id)]))


def file_output(path: str = "rec/{track_id}.ogg", **kwargs: object) -> egress.Output:
    return egress.Output(file=egress.FileOutput(filepath=path, **kwargs))  # type: ignore[arg-type]


def request(media: egress.MediaSource | None = None, outputs: list[egress.Output] | None = None,
            **kwargs: object) -> egress.StartEgressRequest:
    fields: dict[str, object] = {"room_name": "room", "preset": PASSTHROUGH, "media": media or audio(),
                                 "outputs": [file_output()] if outputs is None else outputs}
    return egress.StartEgressRequest(**(fields | kwargs))  # type: ignore[arg-type]


def test_one_audio_route_to_one_file_is_that_track_egress() -> None:
    hook = models.WebhookConfig(url="https://hooks.example/x", signing_key="key")
    track = passthrough_track_request(request(outputs=[file_output(disable_manifest=True)], webhooks=[hook]))
    assert track == egress.TrackEgressRequest(
        room_name="room", track_id="TR_audio", webhooks=[hook],
        file=egress.DirectFileOutput(filepath="rec/{track_id}.ogg", disable_manifest=True),
    )


def test_a_video_track_and_the_storage_of_the_output_over_the_request_s() -> None:
    s3 = egress.S3Upload(bucket="out", access_key="AK", secret="SK")
    start = request(egress.MediaSource(video_track_id="TR_video"),
                    [egress.Output(file=egress.FileOutput(filepath="v"), storage=egress.StorageConfig(s3=s3))],
                    storage=egress.StorageConfig(gcp=egress.GCPUpload(bucket="req")))
    track = passthrough_track_request(start)
    assert (track.track_id, track.file.WhichOneof("output"), track.file.s3.bucket) == ("TR_video", "s3", "out")
    start.outputs[0].ClearField("storage")
    assert passthrough_track_request(start).file.gcp.bucket == "req"  # the request-level default


def test_a_video_and_an_audio_track_to_one_file_is_one_av_egress_of_the_video_track_and_its_audio() -> None:
    start = request(egress.MediaSource(video_track_id="TR_video", audio=audio().audio),
                    [file_output("rec/{publisher_identity}")])
    track = passthrough_track_request(start)
    assert (track.track_id, track.file.filepath) == ("TR_video", "rec/{publisher_identity}")
    assert av_audio_track(start) == "TR_audio"


@pytest.mark.parametrize("media", [audio(), egress.MediaSource(video_track_id="TR_video")])
def test_a_single_track_has_no_av_audio_track(media: egress.MediaSource) -> None:
    assert av_audio_track(request(media)) is None


@pytest.mark.parametrize(("start", "field"), [
    (request(preset=egress.EncodingOptionsPreset.H264_720P_30), "preset"),
    (request(advanced=egress.EncodingOptions(width=640)), "preset"),
    (egress.StartEgressRequest(room_name="room", preset=PASSTHROUGH, outputs=[file_output()]), "passthrough source"),
    (request(web=egress.WebSource(url="https://x")), "passthrough source"),
    (request(egress.MediaSource(participant_video=egress.ParticipantVideo(identity="a"))),
     "passthrough participant_video"),
    (request(egress.MediaSource(video_track_id="")), "passthrough video_track_id"),
    (request(egress.MediaSource(audio=egress.AudioConfig(capture_all=True))), "passthrough capture_all"),
    (request(egress.MediaSource(audio=egress.AudioConfig(routes=[egress.AudioRoute(track_id="a"),
                                                                egress.AudioRoute(track_id="b")]))),
     "passthrough audio routes"),
    (request(egress.MediaSource(audio=egress.AudioConfig(routes=[egress.AudioRoute(participant_identity="a")]))),
     "passthrough audio route match"),
    (request(audio("")), "passthrough audio route track_id"),
    (request(egress.MediaSource(video_track_id="TR_audio", audio=audio().audio)), "passthrough track_id"),
    (request(egress.MediaSource(video_track_id="TR_v", audio=egress.AudioConfig(capture_all=True))),
     "passthrough capture_all"),
    (request(egress.MediaSource(video_track_id="TR_v", audio=audio("").audio)), "passthrough audio route track_id"),
    (request(egress.MediaSource(participant_video=egress.ParticipantVideo(identity="a"), audio=audio().audio)),
     "passthrough participant_video"),
    (request(egress.MediaSource()), "passthrough track_id"),
    (request(outputs=[]), "passthrough outputs"),
    (request(outputs=[file_output(), file_output("b")]), "passthrough outputs"),
    (request(outputs=[egress.Output(stream=egress.StreamOutput(urls=["wss://x"]))]), "passthrough output"),
    (request(outputs=[egress.Output(segments=egress.SegmentedFileOutput(filename_prefix="x"))]), "passthrough output"),
    (request(outputs=[file_output(file_type=egress.EncodedFileType.OGG)]), "passthrough file_type"),
])
def test_other_shapes_are_invalid_arguments_naming_the_field(start: egress.StartEgressRequest, field: str) -> None:
    with pytest.raises(RequestError) as error:
        passthrough_track_request(start)
    assert error.value.code == "invalid_argument"
    assert error.value.message.startswith(f"request has missing or invalid field: {field} (")


def test_the_reported_request_has_its_credentials_redacted() -> None:
    s3 = egress.S3Upload(bucket="out", access_key="AK", secret="SK", session_token="ST")
    start = request(outputs=[egress.Output(file=egress.FileOutput(filepath="x"),
                                           storage=egress.StorageConfig(azure=egress.AzureBlobUpload(
                                               account_name="acct", account_key="AZKEY", container_name="c")))],
                    storage=egress.StorageConfig(s3=s3),
                    webhooks=[models.WebhookConfig(url="https://h", signing_key="hook-secret")])
    shown = redact_start_request(start, SECRET_FIELDS)
    text = str(shown)
    assert not {"AK", "SK", "ST", "AZKEY", "hook-secret"} & set(text.replace('"', " ").split())
    assert (shown.storage.s3.bucket, shown.storage.s3.secret) == ("out", "{secret}")
    assert shown.outputs[0].storage.azure.account_key == "{account_key}"
    assert start.storage.s3.secret == "SK"  # the original is untouched
    info = egress.EgressInfo(egress=shown)
    assert recorded_track_id(info) == "TR_audio"
    assert [hook.url for hook in request_webhooks(info)] == ["https://h"]


VIDEO, AUDIO = models.TrackType.VIDEO, models.TrackType.AUDIO


def test_a_video_and_an_audio_track_of_one_participant_are_an_av_pair() -> None:
    check_av_pair(PublishedTrack("TR_v", "alice", VIDEO), PublishedTrack("TR_a", "alice", AUDIO))


@pytest.mark.parametrize(("video", "audio", "message"), [
    (PublishedTrack("TR_v", "cam", VIDEO), PublishedTrack("TR_a", "mic", AUDIO),
     "video track TR_v (published by 'cam') and audio track TR_a (by 'mic') are not of one participant: one file "
     "holds one participant's tracks"),
    (PublishedTrack("TR_a2", "a", AUDIO), PublishedTrack("TR_a", "a", AUDIO), "video_track_id TR_a2 is not a video "
     "track"),
    (PublishedTrack("TR_v", "a", VIDEO), PublishedTrack("TR_v2", "a", VIDEO), "the audio route's track TR_v2 is not "
     "an audio track"),
])
def test_other_pairs_are_invalid_arguments(video: PublishedTrack, audio: PublishedTrack, message: str) -> None:
    with pytest.raises(RequestError) as error:
        check_av_pair(video, audio)
    assert (error.value.code, error.value.message) == ("invalid_argument", message)
