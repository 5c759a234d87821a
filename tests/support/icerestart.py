"""ICE restarts for aiortc (the tests' publisher): it ignores new remote ICE credentials once ICE has started.

After a signal resume livekit-server restarts ICE on the subscriber peer connection: it offers new credentials
and its ICE agent (pion) drops the pair in use until a check with the new credentials arrives. aiortc would
answer the offer but keep checking with the old ones, so media would stop. We point aioice's connection at the
new credentials and send a check on the pair in use (nominating it when we are the controlling side, as we are
against an ice-lite server); a full ICE server sends its own checks, which aioice then accepts.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aioice import stun
from aiortc import RTCPeerConnection

log = logging.getLogger(__name__)

_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)
_PWD = re.compile(r"^a=ice-pwd:(\S+)", re.MULTILINE)


def ice_credentials(sdp: str) -> tuple[str, str] | None:
    """The (ufrag, pwd) of an SDP (the first ones: the server BUNDLEs everything), None if it has none."""
    ufrag, pwd = _UFRAG.search(sdp), _PWD.search(sdp)
    return (ufrag.group(1), pwd.group(1)) if ufrag and pwd else None


async def restart_ice(pc: RTCPeerConnection, credentials: tuple[str, str]) -> None:
    """Switch every started ICE connection of ``pc`` to the remote ``credentials`` (if new) and check its pair."""
    changed = [c for c in _connections(pc) if (c.remote_username, c.remote_password) != credentials]
    for connection in changed:
        log.info("ICE restart: %s switches to the server's new credentials", connection)
        connection.remote_username, connection.remote_password = credentials
    await asyncio.gather(*(_check(c, pair) for c in changed for pair in c._nominated.values()))


def _connections(pc: RTCPeerConnection) -> list[Any]:
    """aioice connections in use (one with BUNDLE), those whose checks have already started."""
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    unique = {id(c): c for c in (t.transport._connection for t in transports)}
    return [c for c in unique.values() if c.remote_username is not None]


async def _check(connection: Any, pair: Any) -> None:
    """One connectivity check on ``pair`` with the new credentials (retransmitted as STUN does)."""
    request = connection.build_request(pair, nominate=connection.ice_controlling)
    try:
        await pair.protocol.request(request, pair.remote_addr, integrity_key=connection.remote_password.encode())
    except stun.TransactionError as exc:
        log.warning("ICE restart: check on %s failed: %s", pair.remote_addr, exc)
