"""EgressInfo persistence: SQLite (stdlib) on one dedicated thread, so the event loop never blocks.

Each row keeps the ``EgressInfo`` as protobuf bytes plus the columns ListEgress filters on. Writes are
queued in call order on the store's single thread, so the last ``put`` of an egress is what stays.
``save`` is the status path: a write that fails (disk full, database locked) is retried with backoff until it
succeeds, and reads see the unsaved status meanwhile, so the store never shows a status older than the truth.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from livekit.protocol import egress

from trackegress.backoff import Backoff
from trackegress.info import UNFINISHED, copy_info
from trackegress.logs import context_of

log = logging.getLogger(__name__)

Status = egress.EgressStatus
SAVE_RETRY = Backoff(0.1, cap=5.0)  # between attempts to save a status that could not be written

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
        self._unsaved: dict[str, egress.EgressInfo] = {}  # the newest status of each egress not yet written
        self._saved = asyncio.Event()  # set whenever nothing is unsaved
        self._saved.set()
        self._writer: asyncio.Task[None] | None = None

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

    def save(self, info: egress.EgressInfo) -> None:
        """Make ``info`` its egress's stored status, retrying until the write succeeds (see the module docstring)."""
        self._unsaved[info.egress_id] = copy_info(info)
        self._saved.clear()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_unsaved(), name="store writer",
                                                                  context=context_of(""))

    @property
    def unsaved(self) -> int:
        """Statuses waiting to be written."""
        return len(self._unsaved)

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every ``save`` to be written; False if some are still unsaved."""
        try:
            async with asyncio.timeout(timeout):
                await self._saved.wait()
        except TimeoutError:
            return False
        return True

    async def _write_unsaved(self) -> None:
        failures = 0
        while self._unsaved:
            egress_id, info = next(iter(self._unsaved.items()))
            try:
                await self.put(info)
            except Exception as exc:
                failures += 1
                delay = SAVE_RETRY.delay(failures)
                log.error("store write failed for egress %s (%s), retrying in %.1fs: %s", egress_id,
                          Status.Name(info.status), delay, exc)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if self._unsaved.get(egress_id) is info:
                del self._unsaved[egress_id]
        self._saved.set()

    async def get(self, egress_id: str) -> egress.EgressInfo | None:
        """The stored info of one egress, or None."""
        rows = await self._run(self._select, "WHERE egress_id = ?", (egress_id,))
        return self._newest(rows[0]) if rows else None

    def _newest(self, info: egress.EgressInfo) -> egress.EgressInfo:
        unsaved = self._unsaved.get(info.egress_id)
        if unsaved is None:
            return info
        return copy_info(unsaved)

    async def query(
        self, room_name: str = "", egress_id: str = "", active: bool = False, *, limit: int = 0,
        after: tuple[int, str] | None = None,
    ) -> list[egress.EgressInfo]:
        """Stored infos matching every filter given, oldest first (``active``: not yet ended); at most ``limit``
        (0: all), starting after the (started_at, egress_id) key ``after``."""
        clauses: list[str] = []
        params: list[object] = []
        if after is not None:
            clauses.append("(started_at, egress_id) > (?, ?)")
            params.extend(after)
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
        if limit:
            where += f" ORDER BY started_at, egress_id LIMIT {int(limit)}"
        rows: list[egress.EgressInfo] = await self._run(self._select, where, tuple(params))
        infos = [self._newest(info) for info in rows]
        return [info for info in infos if info.status in UNFINISHED] if active else infos

    async def unfinished(self) -> list[egress.EgressInfo]:
        """Egresses stored as STARTING, ACTIVE or ENDING."""
        return await self.query(active=True)

    async def close(self, timeout: float = 10.0) -> None:
        """Finish the queued writes (saves: for up to ``timeout`` s, logging what stays unsaved) and close."""
        if not await self.flush(timeout):
            for info in self._unsaved.values():
                log.error("egress %s: status %s could not be stored: %s", info.egress_id,
                          Status.Name(info.status), info)
        if self._writer is not None:
            self._writer.cancel()
        await self._run(self._db.close)
        self._executor.shutdown(wait=False)

    def _run(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _put(self, row: tuple[str, str, int, int, bytes]) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO egress VALUES (?, ?, ?, ?, ?)", row)

    def _select(self, where: str, params: tuple[Any, ...]) -> list[egress.EgressInfo]:
        order = "" if "ORDER BY" in where else " ORDER BY started_at, egress_id"
        query = f"SELECT info FROM egress {where}{order}"
        return [egress.EgressInfo.FromString(blob) for (blob,) in self._db.execute(query, params)]


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)
    return db
