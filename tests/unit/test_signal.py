"""The /rtc URL our signalling client dials."""

from urllib.parse import parse_qs, urlsplit

import pytest

from trackegress.room.signal import SignalError, rtc_url


def test_rtc_url_carries_protocol_17_and_subscriber_settings() -> None:
    url = urlsplit(rtc_url("https://lk.example/base/", "TOKEN"))
    assert (url.scheme, url.netloc, url.path) == ("wss", "lk.example", "/base/rtc")
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["access_token"] == "TOKEN"
    assert query["protocol"] == "17"
    assert query["auto_subscribe"] == "0"
    assert query["adaptive_stream"] == "0"
    assert query["subscriber_allow_pause"] == "0"


def test_rtc_url_rejects_other_schemes() -> None:
    with pytest.raises(SignalError, match="scheme"):
        rtc_url("ftp://lk.example", "TOKEN")
