"""``trackegress serve`` on every core: one API in front of the node's egress processes (``supervisor.py``).

Each child process runs its own ``EgressManager`` (own store and lock in ``data_dir/process-<i>``, own webhooks)
and answers the ``Dispatcher`` calls on a Unix socket (``serve_child``); the API process's ``ChildrenDispatcher``
starts an egress on the child with the most room (the next one if it refuses ``resource_exhausted``), lists
across all of them (merged, oldest first, as one store would) and stops an egress on the child that runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from livekit.protocol import egress

from trackegress.cpuload import egress_kind
from trackegress.errors import NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE, RequestError
from trackegress.manager import EgressManager
from trackegress.ops.ports import ops_socket
from trackegress.request import passthrough_track_request

log = logging.getLogger(__name__)

SOCKET = "dispatch"
CALL_TIMEOUT = 15.0  # a start waits for the track check (up to its grace) and the store
STATE_INTERVAL = 0.5  # how often the API process asks each child for its room


def child_app(manager: EgressManager) -> web.Application:
    """What a child answers on its dispatch socket: the ``Dispatcher`` calls, errors as ``{code, message}``."""

    async def start(request: web.Request) -> web.Response:
        return _info(await manager.start(egress.TrackEgressRequest.FromString(await request.read())))

    async def start_egress(request: web.Request) -> web.Response:
        source = egress.StartEgressRequest.FromString(await request.read())
        return _info(await manager.start(passthrough_track_request(source), source=source))

    async def listing(request: web.Request) -> web.Response:
        query = await request.json()
        after = tuple(query["after"]) if query.get("after") else None
        items = await manager.list(query["room_name"], query["egress_id"], query["active"], limit=query["limit"],
                                   after=after)
        return web.Response(body=egress.ListEgressResponse(items=items).SerializeToString())

    async def stop(request: web.Request) -> web.Response:
        return _info(await manager.stop(await request.text()))

    async def update_stream(request: web.Request) -> web.Response:
        return _info(await manager.update_stream(await request.text()))

    async def state(request: web.Request) -> web.Response:
        return web.json_response({"active": manager.active_count, "accepting": manager.accepting,
                                  "available": manager.available()})

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except RequestError as exc:
            return web.json_response({"code": exc.code, "message": exc.message}, status=400)
        return response

    app = web.Application(middlewares=[errors], client_max_size=1 << 20)
    app.router.add_post("/start", start)
    app.router.add_post("/start_egress", start_egress)
    app.router.add_post("/list", listing)
    app.router.add_post("/stop", stop)
    app.router.add_post("/update_stream", update_stream)
    app.router.add_get("/state", state)
    return app


def _room(child: _Child, kind: str) -> int:
    """How many more egresses of ``kind`` ``child`` said it would take."""
    return int(dict(child.state.get("available") or {}).get(kind, 0))


def _info(info: egress.EgressInfo) -> web.Response:
    return web.Response(body=info.SerializeToString())


class _Child:
    """The API process's line to one child."""

    def __init__(self, index: int, address: str) -> None:
        self.index = index
        self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=address),
                                              timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT))
        self.state: dict[str, Any] = {}  # its latest /state answer
        self.starting = 0  # starts sent to it, not answered yet

    @property
    def active(self) -> int:
        return int(self.state.get("active", 0))

    async def call(self, path: str, body: bytes | str | None = None, *, json_body: object = None) -> bytes:
        """POST ``path``; the answer's bytes, or its ``RequestError``; ``unavailable`` if the child is down."""
        try:
            async with self._session.post(f"http://process-{self.index}{path}", data=body, json=json_body) as reply:
                data = await reply.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RequestError(UNAVAILABLE, f"egress process {self.index} unreachable: {type(exc).__name__}") \
                from None
        if reply.status != 200:
            error = json.loads(data)
            raise RequestError(error["code"], error["message"])
        return data

    async def refresh(self) -> None:
        try:
            async with self._session.get(f"http://process-{self.index}/state") as reply:
                self.state = await reply.json() if reply.status == 200 else {}
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            self.state = {}

    async def close(self) -> None:
        await self._session.close()


class ChildrenDispatcher:
    """A ``Dispatcher`` over the children of ``data_dir``; ``await start_polling()`` first, ``close()`` after."""

    def __init__(self, data_dir: Path, count: int) -> None:
        self._children = [_Child(i, ops_socket(data_dir / f"process-{i}", SOCKET)) for i in range(count)]
        self._accepting = True
        self._poller: asyncio.Task[None] | None = None

    async def start_polling(self) -> None:
        """Keep each child's room (active egresses, available) fresh in the background."""
        await asyncio.gather(*(c.refresh() for c in self._children))
        self._poller = asyncio.create_task(self._poll(), name="children state")

    @property
    def active_count(self) -> int:
        return sum(c.active for c in self._children)

    @property
    def accepting(self) -> bool:
        return self._accepting

    def available(self) -> dict[str, int] | None:
        total: dict[str, int] = {}
        for child in self._children:
            for kind, count in dict(child.state.get("available") or {}).items():
                total[kind] = total.get(kind, 0) + int(count)
        return total

    async def start(self, request: egress.TrackEgressRequest, egress_id: str | None = None, *,
                    source: egress.StartEgressRequest | None = None) -> egress.EgressInfo:
        """On the child with the most room for this kind, else the next; ``resource_exhausted`` if none has.
        ``source``: the unified ``StartEgress`` ``request`` was made from (the child reports it)."""
        if not self._accepting:
            raise RequestError(UNAVAILABLE, "the egress service is shutting down")
        kind = egress_kind(request)
        await asyncio.gather(*(c.refresh() for c in self._children if not c.state))  # just started, or was down
        ranked = sorted(self._children, key=lambda c: (c.starting - _room(c, kind), c.active + c.starting))
        refusal = RequestError(UNAVAILABLE, "no egress process is up")
        for child in ranked:
            child.starting += 1
            try:
                call = ("/start", request) if source is None else ("/start_egress", source)
                info = egress.EgressInfo.FromString(await child.call(call[0], call[1].SerializeToString()))
            except RequestError as exc:
                if exc.code not in (RESOURCE_EXHAUSTED, UNAVAILABLE):
                    raise
                refusal = exc if exc.code == RESOURCE_EXHAUSTED or refusal.code != RESOURCE_EXHAUSTED else refusal
                continue
            finally:
                child.starting -= 1
            child.state["active"] = child.active + 1  # until the next refresh
            if child.state.get("available"):
                child.state["available"][kind] = _room(child, kind) - 1
            return info
        raise refusal

    async def list(self, room_name: str = "", egress_id: str = "", active: bool = False, *, limit: int = 0,
                   after: tuple[int, str] | None = None) -> list[egress.EgressInfo]:
        query = {"room_name": room_name, "egress_id": egress_id, "active": active, "limit": limit,
                 "after": list(after) if after else None}
        pages = await asyncio.gather(*(c.call("/list", json_body=query) for c in self._children),
                                     return_exceptions=True)
        items = [i for page in pages if isinstance(page, bytes)
                 for i in egress.ListEgressResponse.FromString(page).items]
        items.sort(key=lambda i: (i.started_at, i.egress_id))
        return items[:limit] if limit else items

    async def stop(self, egress_id: str) -> egress.EgressInfo:
        return await self._on_owner("/stop", egress_id)

    async def update_stream(self, egress_id: str) -> egress.EgressInfo:
        return await self._on_owner("/update_stream", egress_id)

    async def close(self) -> None:
        """Stop accepting (the children stop their egresses when the supervisor stops them)."""
        self._accepting = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for child in self._children:
            await child.close()

    async def _on_owner(self, path: str, egress_id: str) -> egress.EgressInfo:
        """``path`` on every child at once: the answer of the one that knows ``egress_id``."""
        answers = await asyncio.gather(*(c.call(path, egress_id) for c in self._children), return_exceptions=True)
        errors = [a for a in answers if isinstance(a, RequestError)]
        for answer in answers:
            if isinstance(answer, bytes):
                return egress.EgressInfo.FromString(answer)
        known = [e for e in errors if e.code not in (NOT_FOUND, UNAVAILABLE)]
        raise (known or errors or [RequestError(NOT_FOUND, "egress does not exist")])[0]

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL)
            await asyncio.gather(*(c.refresh() for c in self._children))
