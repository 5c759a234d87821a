"""EgressInfo persistence: SQLite (stdlib) on one dedicated thread, so the event loop never blocks.

Each row keeps the ``EgressInfo`` as protobuf bytes plus the columns ListEgress filters on. Writes are
queued in call order on the store's single thread, so the last ``put`` of an egress is what stays.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from livekit.protocol import egress

from trackegress.info import UNFINISHED

_SCHEMA = """
CREATE TABLE IF NOT EXISTS egress (
    egress_id  TEXT PRIMARY KEY,
    room_name  TEXT NOT NULL,
    status     INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    info       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS egress_room ON egress (room_name);
"""


class Store:
    """``await Store.open(path)``; every method runs its query on the store's own thread."""

    def __init__(self, executor: ThreadPoolExecutor, db: sqlite3.Connection) -> None:
        self._executor = executor
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (or create) the database at ``path``, creating its directory."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        loop = asyncio.get_running_loop()
        db = await loop.run_in_executor(executor, _connect, path)
        return cls(executor, db)

    def put(self, info: egress.EgressInfo) -> asyncio.Future[None]:
        """Insert or replace ``info`` (queued at once, in call order; await the result to know it is saved)."""
        row = (info.egress_id, info.room_name, info.status, info.started_at, info.SerializeToString())
        return self._run(self._put, row)

    async def get(self, egress_id: str) -> egress.EgressInfo | None:
        """The stored info of one egress, or None."""
        rows = await self._run(self._select, "WHERE egress_id = ?", (egress_id,))
        return rows[0] if rows else None

    async def query(
        self, room_name: str = "", egress_id: str = "", active: bool = False
    ) -> list[egress.EgressInfo]:
        """Stored infos matching every filter given, oldest first (``active``: not yet ended)."""
        clauses: list[str] = []
        params: list[object] = []
        if room_name:
            clauses.append("room_name = ?")
            params.append(room_name)
        if egress_id:
            clauses.append("egress_id = ?")
            params.append(egress_id)
        if active:
            clauses.append(f"status IN ({', '.join('?' * len(UNFINISHED))})")
            params.extend(int(s) for s in UNFINISHED)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        infos: list[egress.EgressInfo] = await self._run(self._select, where, tuple(params))
        return infos

    async def unfinished(self) -> list[egress.EgressInfo]:
        """Egresses stored as STARTING, ACTIVE or ENDING."""
        return await self.query(active=True)

    async def close(self) -> None:
        """Finish the queued writes and close the database."""
        await self._run(self._db.close)
        self._executor.shutdown(wait=False)

    def _run(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _put(self, row: tuple[str, str, int, int, bytes]) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO egress VALUES (?, ?, ?, ?, ?)", row)

    def _select(self, where: str, params: tuple[Any, ...]) -> list[egress.EgressInfo]:
        query = f"SELECT info FROM egress {where} ORDER BY started_at, egress_id"
        return [egress.EgressInfo.FromString(blob) for (blob,) in self._db.execute(query, params)]


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)
    return db
