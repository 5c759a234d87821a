"""Secrets never leave the process: redacted copies of requests and URLs for results and logs."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message
from livekit.protocol import egress


def redact_url(url: str) -> str:
    """Query values (and a userinfo password) replaced by ``{...}``, as livekit/protocol's redaction.

    ``wss://h/audio?callId=1&token=abc`` → ``wss://h/audio?callId={...}&token={...}``.
    """
    base, _, query = url.partition("?")
    scheme, sep, rest = base.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        base = f"{scheme}{sep}{userinfo.split(':', 1)[0]}:{{...}}@{host}"
    if not query:
        return base if "?" not in url else f"{base}?"
    params = []
    for param in query.split("&"):
        key, eq, value = param.partition("=")
        params.append(key + "={...}" if eq and value else key + eq)
    return f"{base}?{'&'.join(params)}"


def redact_request(
    request: egress.TrackEgressRequest, secret_fields: Mapping[str, Mapping[str, str]]
) -> egress.TrackEgressRequest:
    """A copy of the request with credentials replaced by placeholders, like upstream.

    ``secret_fields``: per ``DirectFileOutput`` upload field, its credential fields (dotted) → placeholder; an empty
    placeholder redacts a URL's password only.
    """
    copy = egress.TrackEgressRequest()
    copy.CopyFrom(request)
    if copy.websocket_url:
        copy.websocket_url = redact_url(copy.websocket_url)
    for upload, fields in secret_fields.items():
        if copy.file.HasField(upload):
            for field, placeholder in fields.items():
                _redact_field(getattr(copy.file, upload), field, placeholder)
    for hook in copy.webhooks:
        if hook.signing_key:
            hook.signing_key = "{signing_key}"
    return copy


def redact_start_request(
    request: egress.StartEgressRequest, secret_fields: Mapping[str, Mapping[str, str]]
) -> egress.StartEgressRequest:
    """A copy of a unified ``StartEgress`` request with the credentials of its storages (request's and outputs')
    and webhook signing keys replaced, as upstream's ``RedactStartEgressRequest``."""
    copy = egress.StartEgressRequest()
    copy.CopyFrom(request)
    for storage in (copy.storage, *(output.storage for output in copy.outputs)):
        provider = storage.WhichOneof("provider")
        for field, placeholder in secret_fields.get(provider or "", {}).items():
            _redact_field(getattr(storage, provider or ""), field, placeholder)
    for output in copy.outputs:
        for index, url in enumerate(output.stream.urls):
            output.stream.urls[index] = redact_url(url)
    for hook in copy.webhooks:
        if hook.signing_key:
            hook.signing_key = "{signing_key}"
    return copy


def _redact_field(message: Message, dotted: str, placeholder: str) -> None:
    *path, name = dotted.split(".")
    for part in path:
        message = getattr(message, part)
    value = getattr(message, name)
    if value and placeholder:
        setattr(message, name, placeholder)
    elif "@" in value:
        setattr(message, name, redact_url(value))
