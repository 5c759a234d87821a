"""The JSON manifest written next to a track egress recording."""

from __future__ import annotations

import json

from livekit.protocol.egress import EgressInfo

from trackegress.media.sync import SyncInfo


def build_manifest(
    info: EgressInfo, *, publisher_identity: str, track_id: str, track_kind: str, track_source: str, codec: str = "",
    sync: SyncInfo | None = None,
) -> bytes:
    """Upstream's manifest fields for ``info`` plus its files, with the publisher fields filled in, and ours: the
    track's ``codec`` (MIME type) and ``sync`` (``SyncInfo.to_json``; null if nothing was written) (UTF-8 JSON)."""
    manifest = {
        "egress_id": info.egress_id,
        "room_id": info.room_id,
        "room_name": info.room_name,
        "started_at": info.started_at,
        "ended_at": info.ended_at,
        "publisher_identity": publisher_identity,
        "track_id": track_id,
        "track_kind": track_kind,
        "track_source": track_source,
        "files": [{"filename": f.filename, "location": f.location} for f in info.file_results],
        "codec": codec,
        "sync": None if sync is None else sync.to_json(),
    }
    return json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")


def build_av_manifest(info: EgressInfo, *, publisher_identity: str, tracks: list[dict[str, object]]) -> bytes:
    """An A/V egress's manifest: upstream's fields for ``info`` and its joined file, and ``tracks``: each joined
    track's ``track_id``, ``track_kind``, ``codec``, ``sync`` and ``offset`` (seconds after the file's start)."""
    manifest = {
        "egress_id": info.egress_id,
        "room_id": info.room_id,
        "room_name": info.room_name,
        "started_at": info.started_at,
        "ended_at": info.ended_at,
        "publisher_identity": publisher_identity,
        "files": [{"filename": f.filename, "location": f.location} for f in info.file_results],
        "tracks": tracks,
    }
    return json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")
