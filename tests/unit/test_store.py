"""The SQLite store: EgressInfo round trips, ListEgress filters, persistence across reopen."""

from __future__ import annotations

from pathlib import Path

from livekit.protocol import egress

from trackegress.reporting.store import Store

Status = egress.EgressStatus


def info(egress_id: str, room: str, status: int, started_at: int) -> egress.EgressInfo:
    return egress.EgressInfo(
        egress_id=egress_id, room_name=room, status=status, started_at=started_at,  # type: ignore[arg-type]
        track=egress.TrackEgressRequest(room_name=room, track_id="TR_1", file=egress.DirectFileOutput(filepath="x")),
    )


async def test_put_get_and_filters(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "db" / "egress.db")
    a = info("EG_a", "r1", Status.EGRESS_ACTIVE, 2)
    b = info("EG_b", "r1", Status.EGRESS_COMPLETE, 1)
    c = info("EG_c", "r2", Status.EGRESS_STARTING, 3)
    for item in (a, b, c):
        store.put(item)
    assert await store.get("EG_a") == a
    assert await store.get("EG_missing") is None
    assert [i.egress_id for i in await store.query()] == ["EG_b", "EG_a", "EG_c"]
    assert [i.egress_id for i in await store.query(room_name="r1")] == ["EG_b", "EG_a"]
    assert [i.egress_id for i in await store.query(active=True)] == ["EG_a", "EG_c"]
    assert [i.egress_id for i in await store.query(room_name="r1", active=True)] == ["EG_a"]
    assert [i.egress_id for i in await store.query(egress_id="EG_c")] == ["EG_c"]
    assert [i.egress_id for i in await store.unfinished()] == ["EG_a", "EG_c"]
    await store.close()


async def test_the_last_put_wins_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "egress.db"
    store = await Store.open(path)
    first = info("EG_a", "r", Status.EGRESS_STARTING, 1)
    store.put(first)
    final = info("EG_a", "r", Status.EGRESS_COMPLETE, 1)
    final.file_results.add(filename="x.ogg", size=123)
    store.put(final)  # queued behind the first: order is kept without awaiting
    await store.close()

    reopened = await Store.open(path)
    assert await reopened.query() == [final]
    assert await reopened.unfinished() == []
    await reopened.close()
