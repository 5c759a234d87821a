"""Reading the ICE credentials of the server's offers (an ICE restart changes them)."""

from support.icerestart import ice_credentials

OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=ice-ufrag:AbCd\r\na=ice-pwd:secret+pwd/1\r\na=mid:0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:AbCd\r\na=ice-pwd:secret+pwd/1\r\na=mid:1\r\n"
)


def test_ice_credentials_of_a_bundled_offer() -> None:
    assert ice_credentials(OFFER) == ("AbCd", "secret+pwd/1")


def test_ice_credentials_missing() -> None:
    assert ice_credentials("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:x\r\n") is None
