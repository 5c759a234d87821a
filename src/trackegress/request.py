"""Checks a ``TrackEgressRequest`` before anything starts: bad input changes nothing."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from livekit.protocol import egress

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
    """Raise ``RequestError`` unless every webhook of the request has an http(s) URL and our API key (if signed)."""
    for hook in request.webhooks:
        if not _is_http_url(hook.url):
            raise RequestError(INVALID_ARGUMENT, f"webhook url {redact_url(hook.url)!r} is not an http(s) URL")
        if hook.signing_key and hook.signing_key != api_key:
            raise RequestError(INVALID_ARGUMENT, "webhook signing_key is not a configured API key")


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


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
