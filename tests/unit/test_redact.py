"""Secrets are replaced by placeholders in request copies and URLs."""

import re
from collections.abc import Iterator

import pytest
from google.protobuf.message import Message
from livekit.protocol import egress

from trackegress.redact import redact_request, redact_url
from trackegress.storage.settings import SECRET_FIELDS


def test_query_values_are_redacted_like_livekit_protocol() -> None:
    assert redact_url("wss://asr.example/ws?token=s3cr3t&lang=en") == "wss://asr.example/ws?token={...}&lang={...}"
    assert redact_url("ws://h/p?flag&empty=") == "ws://h/p?flag&empty="
    assert redact_url("ws://h/p") == "ws://h/p"


def test_password_in_the_authority_is_redacted() -> None:
    assert redact_url("ws://user:pass@host:9000/p") == "ws://user:{...}@host:9000/p"


def test_request_copy_hides_every_secret_and_leaves_the_original() -> None:
    request = egress.TrackEgressRequest(room_name="r", track_id="TR_1")
    request.file.filepath = "a/{track_id}"
    request.file.s3.access_key = "AKIA123"
    request.file.s3.secret = "topsecret"
    request.webhooks.add(url="http://hook", signing_key="k3y")
    copy = redact_request(request, SECRET_FIELDS)
    text = str(copy)
    for secret in ("AKIA123", "topsecret", "k3y"):
        assert secret not in text
    assert copy.file.s3.access_key == "{access_key}" and copy.file.filepath == "a/{track_id}"
    assert request.file.s3.secret == "topsecret"


def test_websocket_url_in_request_copy_is_redacted() -> None:
    request = egress.TrackEgressRequest(room_name="r", track_id="TR_1", websocket_url="ws://h/a?key=abc")
    assert redact_request(request, SECRET_FIELDS).websocket_url == "ws://h/a?key={...}"


def test_proxy_passwords_of_s3_and_gcp_uploads_are_redacted() -> None:
    for upload in ("s3", "gcp"):
        request = egress.TrackEgressRequest(room_name="r", track_id="TR_1")
        getattr(request.file, upload).proxy.CopyFrom(egress.ProxyConfig(url="http://u:inurl@proxy:3128", username="u",
                                                                       password="pr0xy-pw"))
        copy = redact_request(request, SECRET_FIELDS)
        proxy = getattr(copy.file, upload).proxy
        assert (proxy.url, proxy.username, proxy.password) == ("http://u:{...}@proxy:3128", "u", "{proxy_password}")
        assert "pr0xy-pw" not in str(copy) and "inurl" not in str(copy)
        assert copy.file.WhichOneof("output") == upload  # the other upload was not set by the redaction


def _credential_fields(message: Message, prefix: str = "") -> Iterator[str]:
    """The string fields of an upload message (and its sub-messages) whose names say they hold a credential."""
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None and not field.is_repeated:
            yield from _credential_fields(getattr(message, field.name), f"{prefix}{field.name}.")
        elif field.type == field.TYPE_STRING and re.search(r"key|secret|token|credential|password", field.name):
            yield prefix + field.name


@pytest.mark.parametrize("upload", sorted(SECRET_FIELDS))
def test_the_backend_registry_names_every_credential_and_all_are_redacted(upload: str) -> None:
    request = egress.TrackEgressRequest(room_name="r", track_id="TR_1")
    fields = list(_credential_fields(getattr(request.file, upload)))
    assert fields and set(fields) <= set(SECRET_FIELDS[upload])
    for number, dotted in enumerate(fields):
        *path, name = dotted.split(".")
        message = getattr(request.file, upload)
        for part in path:
            message = getattr(message, part)
        setattr(message, name, f"s3cr3t-{number}")
    assert "s3cr3t" not in str(redact_request(request, SECRET_FIELDS))
