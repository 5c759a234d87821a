"""Recording through an impaired network: livekit-server's media reaches every client through ``UdpRelay``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit.protocol import egress
from support.egress_helpers import file_request, record_published
from support.impair import GilbertElliott, Profile, UdpRelay
from support.server import BINARY, LiveKitServer, RoomFactory
from test_file_egress import config_for, decode_errors

RELAY_IP = "127.0.0.2"
Status = egress.EgressStatus


@pytest.fixture(scope="module")
def relayed() -> Iterator[tuple[LiveKitServer, UdpRelay]]:
    """A livekit-server whose only media address is a relay (clean until a test sets its profiles)."""
    if not os.access(BINARY, os.X_OK):
        pytest.skip(f"livekit-server not installed at {BINARY}")
    with LiveKitServer(relay_ip=RELAY_IP) as server, UdpRelay(
        (RELAY_IP, server.udp_port), ("127.0.0.1", server.udp_port), seed=15
    ) as relay:
        yield server, relay


@pytest.fixture
def relay(relayed: tuple[LiveKitServer, UdpRelay]) -> Iterator[UdpRelay]:
    _, relay = relayed
    yield relay
    relay.set_profiles(down=Profile(), up=Profile())


@pytest.fixture
def relayed_server(relayed: tuple[LiveKitServer, UdpRelay]) -> LiveKitServer:
    return relayed[0]


@pytest.fixture
async def relayed_room(relayed_server: LiveKitServer) -> RoomFactory:
    from livekit import api
    from support.server import create_room

    async def factory() -> str:
        async with api.LiveKitAPI(relayed_server.http_url, relayed_server.api_key, relayed_server.api_secret) as c:
            return await create_room(c)

    return factory


async def test_all_media_goes_through_the_relay(
    relayed_server: LiveKitServer, relay: UdpRelay, relayed_room: RoomFactory, sample_media: dict[str, Path],
    tmp_path: Path,
) -> None:
    before = dict(relay.forwarded)
    room = await relayed_room()
    config = config_for(relayed_server, tmp_path)
    info, sent, _ = await record_published(
        relayed_server, room, sample_media["h264"], config, lambda track: file_request(room, track)
    )
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info.error
    # the publisher's media went up and the egress's came down through the relay (no other path exists)
    assert relay.forwarded["up"] - before["up"] > len(sent)
    assert relay.forwarded["down"] - before["down"] > len(sent)
    out = tmp_path / info.file_results[0].filename
    assert decode_errors(out) == ""


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param(Profile(loss=0.03, jitter=0.03, reorder=0.01), id="random-3pct"),
        pytest.param(Profile(burst=GilbertElliott.bursty(0.03, 3), jitter=0.03, reorder=0.01), id="bursty-3pct"),
    ],
)
@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_video_under_loss_decodes_without_errors(
    codec: str, profile: Profile, relayed_server: LiveKitServer, relay: UdpRelay, relayed_room: RoomFactory,
    sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    room = await relayed_room()
    relay.set_profiles(down=profile)
    lost_before = relay.down.counters.dropped
    config = config_for(relayed_server, tmp_path)
    info, _, _ = await record_published(
        relayed_server, room, sample_media[codec], config, lambda track: file_request(room, track)
    )
    assert relay.down.counters.dropped > lost_before  # the impairment really applied
    assert Status.Name(info.status) == "EGRESS_COMPLETE", info.error
    out = tmp_path / info.file_results[0].filename
    assert decode_errors(out) == ""
