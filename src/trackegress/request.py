"""Checks a ``TrackEgressRequest`` before anything starts: bad input changes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from livekit.protocol import egress, models

from trackegress.errors import INVALID_ARGUMENT, ConfigError, RequestError
from trackegress.redact import redact_url
from trackegress.sinks.naming import MAX_KEY, MAX_PATH, check_template_limits, validate_template
from trackegress.sinks.wslink import validate_websocket_url
from trackegress.storage.local import resolve_under
from trackegress.storage.settings import from_request


def check_track_request(request: egress.TrackEgressRequest, local_dir: Path) -> None:
    """Raise ``RequestError`` unless the request can be started as given."""
    if not request.room_name:
        raise RequestError(INVALID_ARGUMENT, "room_name is required")
    if not request.track_id:
        raise RequestError(INVALID_ARGUMENT, "track_id is required")
    for hook in request.webhooks:
        try:
            check_webhook_url(hook.url)
        except ValueError as exc:
            raise RequestError(INVALID_ARGUMENT, f"webhook url {exc}") from None
    output = request.WhichOneof("output")
    if output is None:
        raise RequestError(INVALID_ARGUMENT, "output is required: file or websocket_url")
    if output == "websocket_url":
        try:
            validate_websocket_url(request.websocket_url)
        except ValueError as exc:
            raise RequestError(INVALID_ARGUMENT, str(exc)) from None
        return
    _check_file(request.file, local_dir)


def check_webhooks(request: egress.TrackEgressRequest, api_key: str) -> None:
    """Raise ``RequestError`` unless every signed webhook of the request is signed with our API key (their URLs are
    checked with the request: ``check_track_request``)."""
    for hook in request.webhooks:
        if hook.signing_key and hook.signing_key != api_key:
            raise RequestError(INVALID_ARGUMENT, "webhook signing_key is not a configured API key")


def check_webhook_url(url: str) -> None:
    """``ValueError`` (its message redacted) unless ``url`` is an http(s) URL without user info: the
    ``Authorization`` header carries the webhook's signature, so credentials in the URL cannot be sent."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"{redact_url(url)!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{redact_url(url)!r} has user info: the Authorization header carries the webhook "
                         "signature; put credentials in the path or query instead")


def _check_file(file: egress.DirectFileOutput, local_dir: Path) -> None:
    try:
        upload = from_request(file)
    except ConfigError as exc:
        raise RequestError(exc.code, exc.message) from None
    try:
        validate_template(file.filepath)
        check_template_limits(file.filepath, MAX_KEY if upload is not None else MAX_PATH)
        # An empty path or a directory ("dir/") gets the default file name ({track_id}-{time}.ext) appended.
        default_name = not file.filepath or file.filepath.endswith("/")
        resolve_under(local_dir, file.filepath + "{track_id}" if default_name else file.filepath)
    except ValueError as exc:
        raise RequestError(INVALID_ARGUMENT, f"invalid filepath {file.filepath!r}: {exc}") from None


def _invalid(field: str, why: str) -> RequestError:
    """livekit/egress's ``ErrInvalidInput`` wording, with the reason."""
    return RequestError(INVALID_ARGUMENT, f"request has missing or invalid field: {field} ({why})")


def passthrough_track_request(request: egress.StartEgressRequest) -> egress.TrackEgressRequest:
    """The track egress a unified ``StartEgress`` asks for: preset ``PASSTHROUGH``, one track (``video_track_id`` or
    one audio route by ``track_id``) and exactly one file output of the default file type, as livekit/egress's
    ``validatePassthrough`` (PR #1342) accepts; any other shape is ``invalid_argument``.

    Ours beyond upstream (which refuses a second track): ``video_track_id`` and one audio route together ask for one
    A/V file (``avegress.py``); the track egress returned then names the video track and the A/V file, and
    ``av_audio_track`` names the audio track."""
    if request.WhichOneof("encoding") != "preset" or request.preset != egress.EncodingOptionsPreset.PASSTHROUGH:
        raise _invalid("preset", "only preset PASSTHROUGH is supported: tracks recorded as they are published")
    video, audio = _passthrough_tracks(request)
    track_id = video or audio
    if len(request.outputs) != 1:
        raise _invalid("passthrough outputs", f"exactly one output is required, got {len(request.outputs)}")
    output = request.outputs[0]
    if output.WhichOneof("config") != "file":
        raise _invalid("passthrough output", "the output must be a file")
    if output.file.file_type != egress.EncodedFileType.DEFAULT_FILETYPE:
        raise _invalid("passthrough file_type", "must be DEFAULT_FILETYPE: the container follows the track's codec")
    file = egress.DirectFileOutput(filepath=output.file.filepath, disable_manifest=output.file.disable_manifest)
    storage = output.storage if output.HasField("storage") else request.storage
    provider = storage.WhichOneof("provider")
    if provider is not None:
        getattr(file, provider).CopyFrom(getattr(storage, provider))
    return egress.TrackEgressRequest(room_name=request.room_name, track_id=track_id, file=file,
                                     webhooks=request.webhooks)


def av_audio_track(request: egress.StartEgressRequest) -> str | None:
    """The audio track of a request ``passthrough_track_request`` accepted naming a video and an audio track (an A/V
    egress); None for any other request."""
    media = request.media
    if request.WhichOneof("source") != "media" or not media.video_track_id or len(media.audio.routes) != 1:
        return None
    return media.audio.routes[0].track_id or None


def _passthrough_tracks(request: egress.StartEgressRequest) -> tuple[str, str]:
    """The video and the audio track named (either may be ``""``, not both)."""
    if request.WhichOneof("source") != "media":
        raise _invalid("passthrough source", "a media source naming one or two tracks is required")
    media = request.media
    video = ""
    if media.WhichOneof("video") == "participant_video":
        raise _invalid("passthrough participant_video", "name the track with video_track_id")
    if media.WhichOneof("video") == "video_track_id":
        if not media.video_track_id:
            raise _invalid("passthrough video_track_id", "empty")
        video = media.video_track_id
    audio = ""
    if media.HasField("audio"):
        routes = media.audio.routes
        if media.audio.capture_all:
            raise _invalid("passthrough capture_all", "name one audio track instead")
        if len(routes) > 1:
            raise _invalid("passthrough audio routes", f"one route is allowed, got {len(routes)}")
        if len(routes) == 1:
            if routes[0].WhichOneof("match") != "track_id":
                raise _invalid("passthrough audio route match", "the route must match a track_id")
            if not routes[0].track_id:
                raise _invalid("passthrough audio route track_id", "empty")
            audio = routes[0].track_id
    if not video and not audio:
        raise _invalid("passthrough track_id", "a track is required: video_track_id, one audio route or both")
    if video == audio:
        raise _invalid("passthrough track_id", "video_track_id and the audio route name the same track")
    return video, audio


@dataclass(frozen=True, slots=True)
class PublishedTrack:
    """A track as the room lists it: its sid, its publisher's identity, its ``models.TrackType``."""

    sid: str
    publisher: str
    type: int


def check_av_pair(video: PublishedTrack, audio: PublishedTrack) -> None:
    """``invalid_argument`` unless ``video`` and ``audio`` are a video and an audio track of one participant (the
    tracks an A/V egress joins into one file)."""
    if video.type != models.TrackType.VIDEO:
        raise RequestError(INVALID_ARGUMENT, f"video_track_id {video.sid} is not a video track")
    if audio.type != models.TrackType.AUDIO:
        raise RequestError(INVALID_ARGUMENT, f"the audio route's track {audio.sid} is not an audio track")
    if video.publisher != audio.publisher:
        raise RequestError(INVALID_ARGUMENT, f"video track {video.sid} (published by {video.publisher!r}) and audio "
                           f"track {audio.sid} (by {audio.publisher!r}) are not of one participant: one file holds "
                           "one participant's tracks")
