"""The manifest carries upstream's fields, the files, and the publisher fields upstream leaves empty."""

import json

from livekit.protocol import egress

from trackegress.media.sync import SyncInfo
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
        "codec": "",
        "sync": None,
    }
    keys = ("egress_id room_id room_name started_at ended_at publisher_identity track_id track_kind track_source files"
            " codec sync")
    assert list(json.loads(data)) == keys.split()


def test_manifest_is_indented_utf8() -> None:
    info = egress.EgressInfo(egress_id="EG_2")
    data = build_manifest(info, publisher_identity="zoë", track_id="TR_2", track_kind="video", track_source="camera")
    assert data.startswith(b'{\n  "egress_id": "EG_2",\n')
    assert '"publisher_identity": "zoë"'.encode() in data
    assert b'"files": []' in data


def test_manifest_carries_the_codec_and_the_sync_fields() -> None:
    sync = SyncInfo(1_700_000_000_123_456_789, "sender_report", 48_000, 4_000_000_000, (1_700_000_000_100_000_000, 7))
    data = json.loads(build_manifest(_info(), publisher_identity="a", track_id="TR_1", track_kind="audio",
                                     track_source="microphone", codec="audio/opus", sync=sync))
    assert data["codec"] == "audio/opus"
    assert data["sync"] == {
        "capture_start_ns": 1_700_000_000_123_456_789,
        "capture_start": "2023-11-14T22:13:20.123456789Z",
        "source": "sender_report",
        "clock_rate": 48_000,
        "first_rtp_timestamp": 4_000_000_000,
        "sender_report": {"ntp_ns": 1_700_000_000_100_000_000, "rtp_timestamp": 7},
    }
    assert SyncInfo.from_json(data["sync"]) == sync
