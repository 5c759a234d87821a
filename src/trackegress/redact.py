"""Secrets never leave the process: redacted copies of requests and URLs for results and logs."""

from __future__ import annotations

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


def redact_request(request: egress.TrackEgressRequest) -> egress.TrackEgressRequest:
    """A copy of the request with credentials replaced by placeholders, like upstream."""
    copy = egress.TrackEgressRequest()
    copy.CopyFrom(request)
    if copy.websocket_url:
        copy.websocket_url = redact_url(copy.websocket_url)
    file = copy.file
    if file.HasField("s3"):
        for field in ("access_key", "secret", "session_token", "assume_role_external_id"):
            if getattr(file.s3, field):
                setattr(file.s3, field, "{" + ("external_id" if field.startswith("assume") else field) + "}")
    if file.HasField("gcp") and file.gcp.credentials:
        file.gcp.credentials = "{credentials}"
    for upload in (file.s3, file.gcp):
        if upload.proxy.password:
            upload.proxy.password = "{proxy_password}"
        if "@" in upload.proxy.url:
            upload.proxy.url = redact_url(upload.proxy.url)
    if file.HasField("azure") and file.azure.account_key:
        file.azure.account_key = "{account_key}"
    if file.HasField("aliOSS") and file.aliOSS.secret:
        file.aliOSS.access_key = "{access_key}"
        file.aliOSS.secret = "{secret}"
    for hook in copy.webhooks:
        if hook.signing_key:
            hook.signing_key = "{signing_key}"
    return copy
