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
    return _encode(_upstream_fields(info, publisher_identity) | {
        "track_id": track_id,
        "track_kind": track_kind,
        "track_source": track_source,
        "files": _files(info),
        "codec": codec,
        "sync": None if sync is None else sync.to_json(),
    })


def build_av_manifest(info: EgressInfo, *, publisher_identity: str, tracks: list[dict[str, object]]) -> bytes:
    """An A/V egress's manifest: upstream's fields for ``info`` and its A/V file, and ``tracks``: each joined
    track's ``track_id``, ``track_kind``, ``codec``, ``sync``, ``aligned_by`` (``sender_report`` or ``arrival``),
    ``offset`` (seconds after the file's start) and ``skipped`` (seconds of its start the file lacks)."""
    return _encode(_upstream_fields(info, publisher_identity) | {"files": _files(info), "tracks": tracks})


def _upstream_fields(info: EgressInfo, publisher_identity: str) -> dict[str, object]:
    return {
        "egress_id": info.egress_id,
        "room_id": info.room_id,
        "room_name": info.room_name,
        "started_at": info.started_at,
        "ended_at": info.ended_at,
        "publisher_identity": publisher_identity,
    }


def _files(info: EgressInfo) -> list[dict[str, str]]:
    return [{"filename": f.filename, "location": f.location} for f in info.file_results]


def _encode(manifest: dict[str, object]) -> bytes:
    return json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")
