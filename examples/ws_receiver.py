"""A WebSocket receiver that accepts trackegress only (its token signed with your API secret) and refuses strangers.

LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... python ws_receiver.py 8765
"""

import asyncio
import os
import sys

from livekit.api import TokenVerifier
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

verifier = TokenVerifier(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])


def authorize(conn: ServerConnection, request: Request) -> Response | None:
    """Accept (None) a caller whose Bearer token verifies; 401 for anyone else."""
    try:
        claims = verifier.verify(request.headers.get("Authorization", "").removeprefix("Bearer "))
    except Exception:  # bad signature, expired, missing
        return conn.respond(401, "unknown caller\n")
    print("egress", claims.identity, "room", claims.video.room, "track", claims.attributes["track_id"], flush=True)
    return None


async def receive(ws: ServerConnection) -> None:
    size = sum([len(message) async for message in ws if isinstance(message, bytes)])
    print("pcm bytes", size, flush=True)


async def main(port: int) -> None:
    async with serve(receive, "127.0.0.1", port, process_request=authorize):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
