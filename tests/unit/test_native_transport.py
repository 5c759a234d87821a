"""The native media core's transport (str0m under PyO3) answering LiveKit-style offers, without a server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

import pytest
import trackegress_native

from trackegress.media.frames import EncodedFrame
from trackegress.room.native import NativeTransport, TransportError
from trackegress.room.transport import IceCandidate, MediaTrack, TransportState

FINGERPRINT = ":".join(["AB"] * 32)


def offer(ufrag: str = "srvA", pwd: str = "serverpasswordserverpass", media: str = "") -> str:
    """An SFU subscriber offer like livekit-server's first one: data channels only (plus ``media``)."""
    bundle = "0 1" if media else "0"
    return (
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        f"a=group:BUNDLE {bundle}\r\na=msid-semantic:WMS *\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
        f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=fingerprint:sha-256 {FINGERPRINT}\r\n"
        "a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\n" + media
    )


AUDIO = (
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\nc=IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:srvA\r\na=ice-pwd:serverpasswordserverpass\r\na=fingerprint:sha-256 " + FINGERPRINT + "\r\n"
    "a=setup:actpass\r\na=mid:1\r\na=sendonly\r\na=rtcp-mux\r\n"
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtcp-fb:111 transport-cc\r\n"
    "a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n"
    "a=ssrc:1111 cname:pub\r\na=msid:PA_x|TR_x TR_x\r\n"
)


class Recorder:
    """The transport's events, as a subscriber would get them."""

    def __init__(self) -> None:
        self.states: list[TransportState] = []
        self.candidates: list[IceCandidate] = []
        self.tracks: list[MediaTrack] = []
        self.frames: list[tuple[str, EncodedFrame]] = []

    def on_state(self, state: TransportState) -> None:
        self.states.append(state)

    def on_local_candidate(self, candidate: IceCandidate) -> None:
        self.candidates.append(candidate)

    def on_track(self, track: MediaTrack) -> None:
        self.tracks.append(track)

    def on_frames(self, mid: str, frames: Sequence[EncodedFrame]) -> None:
        self.frames.extend((mid, f) for f in frames)


def attribute(sdp: str, name: str) -> list[str]:
    return re.findall(rf"^a={name}:(.*?)\r?$", sdp, re.MULTILINE)


def test_host_addresses_include_loopback() -> None:
    assert "127.0.0.1" in trackegress_native.host_addresses()


async def test_data_channel_only_offer_is_answered_as_dtls_server_with_our_host_candidates() -> None:
    events = Recorder()
    transport = NativeTransport([], events, addresses=["127.0.0.1"])
    try:
        answer = await transport.accept_offer(offer())
        assert "m=application 9 UDP/DTLS/SCTP webrtc-datachannel" in answer
        assert attribute(answer, "setup") == ["passive"]
        udp, tcp = attribute(answer, "candidate")
        assert re.fullmatch(r"\S+ 1 udp \d+ 127\.0\.0\.1 \d+ typ host ufrag \S+", udp), udp
        assert re.fullmatch(r"\S+ 1 tcp \d+ 127\.0\.0\.1 9 typ host tcptype active ufrag \S+", tcp), tcp
        assert int(udp.split()[3]) > int(tcp.split()[3]), "UDP preferred"
        assert transport.remote_description == offer() and transport.local_description == answer
        await asyncio.sleep(0.05)
        assert [c.candidate for c in events.candidates] == ["candidate:" + udp, "candidate:" + tcp], "reported too"
    finally:
        await transport.close()
    assert transport.state is TransportState.CLOSED
    assert events.states[-1] is TransportState.CLOSED


@pytest.mark.parametrize(("protocols", "expected"), [(("udp",), ["udp"]), (("tcp",), ["tcp"])])
async def test_media_protocols_choose_the_candidates_gathered(protocols: tuple[str, ...], expected: list[str]) -> None:
    transport = NativeTransport([], Recorder(), addresses=["127.0.0.1"], protocols=protocols)
    try:
        answer = await transport.accept_offer(offer())
        assert [c.split()[2] for c in attribute(answer, "candidate")] == expected
    finally:
        await transport.close()


async def test_audio_offer_answers_opus_and_red_recvonly() -> None:
    transport = NativeTransport([], Recorder(), addresses=["127.0.0.1"])
    try:
        await transport.accept_offer(offer())
        answer = await transport.accept_offer(offer(media=AUDIO))
        audio = answer[answer.index("m=audio"):]
        assert audio.startswith("m=audio 9 UDP/TLS/RTP/SAVPF 111 63")
        assert "a=recvonly" in audio and "a=rtpmap:63 red/48000/2" in audio
    finally:
        await transport.close()


async def test_new_ice_credentials_restart_ice_with_new_local_credentials() -> None:
    transport = NativeTransport([], Recorder(), addresses=["127.0.0.1"])
    try:
        first = await transport.accept_offer(offer())
        again = await transport.accept_offer(offer())
        restarted = await transport.accept_offer(offer(ufrag="srvB", pwd="anotherpasswordanotherpw"))
        assert attribute(again, "ice-ufrag") == attribute(first, "ice-ufrag")
        assert attribute(restarted, "ice-ufrag") != attribute(first, "ice-ufrag")
        assert attribute(restarted, "ice-pwd") != attribute(first, "ice-pwd")
    finally:
        await transport.close()


async def test_a_bad_offer_is_refused_and_the_peer_carries_on() -> None:
    transport = NativeTransport([], Recorder(), addresses=["127.0.0.1"])
    try:
        with pytest.raises(TransportError, match="offer"):
            await transport.accept_offer("v=0\r\n")
        with pytest.raises(TransportError):
            await transport.accept_offer(offer().replace("a=group:BUNDLE 0\r\n", ""))
        assert "m=application" in await transport.accept_offer(offer())
    finally:
        await transport.close()


async def test_trickled_candidates_and_keyframe_requests_are_accepted_before_and_after_the_offer() -> None:
    transport = NativeTransport([], Recorder(), addresses=["127.0.0.1"])
    try:
        early = IceCandidate("candidate:1 1 udp 2130706431 127.0.0.1 9 typ host", "0", 0, "srvA")
        await transport.add_remote_candidate(early)
        await transport.accept_offer(offer())
        await transport.add_remote_candidate(IceCandidate("candidate:2 1 tcp 1 127.0.0.1 9 typ host tcptype passive"))
        await transport.add_remote_candidate(IceCandidate("not a candidate"))
        transport.request_keyframe("0")
        transport.flush()
        assert transport.stats() == []
    finally:
        await transport.close()
    with pytest.raises(TransportError):
        await transport.accept_offer(offer())
