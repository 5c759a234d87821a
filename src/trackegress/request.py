"""Checks a ``TrackEgressRequest`` before anything starts: bad input changes nothing."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from livekit.protocol import egress

from trackegress.errors import ConfigError, RequestError
from trackegress.redact import redact_url
from trackegress.sinks.naming import MAX_KEY, MAX_PATH, check_template_limits, validate_template
from trackegress.sinks.websocket import validate_websocket_url
from trackegress.storage.local import resolve_under
from trackegress.storage.settings import from_request


def check_track_request(request: egress.TrackEgressRequest, local_dir: Path) -> None:
    """Raise ``RequestError`` unless the request can be started as given."""
    if not request.room_name:
        raise RequestError("invalid_argument", "room_name is required")
    if not request.track_id:
        raise RequestError("invalid_argument", "track_id is required")
    for hook in request.webhooks:
        try:
            check_webhook_url(hook.url)
        except ValueError as exc:
            raise RequestError("invalid_argument", f"webhook url {exc}") from None
    output = request.WhichOneof("output")
    if output is None:
        raise RequestError("invalid_argument", "output is required: file or websocket_url")
    if output == "websocket_url":
        try:
            validate_websocket_url(request.websocket_url)
        except ValueError as exc:
            raise RequestError("invalid_argument", str(exc)) from None
        return
    _check_file(request.file, local_dir)


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
        raise RequestError("invalid_argument", f"invalid filepath {file.filepath!r}: {exc}") from None


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
