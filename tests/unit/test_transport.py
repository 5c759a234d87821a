"""The transport seam's own data: LiveKit's candidateInit JSON both ways."""

import json

import pytest

from trackegress.room.transport import IceCandidate


def test_candidate_init_round_trip() -> None:
    init = json.dumps({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host", "sdpMid": "0",
                       "sdpMLineIndex": 0, "usernameFragment": "abc"})
    candidate = IceCandidate.from_json(init)
    assert candidate == IceCandidate("candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host", "0", 0, "abc")
    assert json.loads(candidate.to_json()) == json.loads(init)


def test_candidate_init_without_optional_fields() -> None:
    candidate = IceCandidate.from_json('{"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}')
    assert (candidate.sdp_mid, candidate.sdp_mline_index, candidate.username_fragment) == (None, None, None)


def test_candidate_init_must_be_an_object() -> None:
    with pytest.raises(ValueError):
        IceCandidate.from_json("[1, 2]")
