"""The manifest carries upstream's fields, the files, and the publisher fields upstream leaves empty."""

import json

from livekit.protocol import egress

from trackegress.outputs.manifest import build_manifest


def _info() -> egress.EgressInfo:
    info = egress.EgressInfo(
        egress_id="EG_1",
        room_id="RM_1",
        room_name="lobby",
        started_at=1_700_000_000_000_000_000,
        ended_at=1_700_000_060_000_000_000,
    )
    info.file_results.add(filename="rec/TR_1.ogg", location="/data/rec/TR_1.ogg", size=42)
    return info


def test_manifest_has_every_field_in_order() -> None:
    data = build_manifest(
        _info(), publisher_identity="alice", track_id="TR_1", track_kind="audio", track_source="microphone"
    )
    assert json.loads(data) == {
        "egress_id": "EG_1",
        "room_id": "RM_1",
        "room_name": "lobby",
        "started_at": 1_700_000_000_000_000_000,
        "ended_at": 1_700_000_060_000_000_000,
        "publisher_identity": "alice",
        "track_id": "TR_1",
        "track_kind": "audio",
        "track_source": "microphone",
        "files": [{"filename": "rec/TR_1.ogg", "location": "/data/rec/TR_1.ogg"}],
    }
    keys = "egress_id room_id room_name started_at ended_at publisher_identity track_id track_kind track_source files"
    assert list(json.loads(data)) == keys.split()


def test_manifest_is_indented_utf8() -> None:
    info = egress.EgressInfo(egress_id="EG_2")
    data = build_manifest(info, publisher_identity="zoë", track_id="TR_2", track_kind="video", track_source="camera")
    assert data.startswith(b'{\n  "egress_id": "EG_2",\n')
    assert '"publisher_identity": "zoë"'.encode() in data
    assert b'"files": []' in data
