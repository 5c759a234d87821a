"""Fixtures for end-to-end tests against a real livekit-server (built by scripts/install.sh)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit import api

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # makes tests/support importable as `support`

from support import netns
from support.browser import BrowserClients, installed
from support.egress_service import EgressService, WebhookSink
from support.media import make_h264, make_opus_ogg, make_vp8_ivf
from support.server import BINARY, LiveKitServer, RoomFactory, create_room
from support.site import Site, open_site


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under tests/e2e as ``e2e``."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def livekit_server() -> Iterator[LiveKitServer]:
    """One dev-mode livekit-server for the whole session (skipped when not installed, outside CI)."""
    if not os.access(BINARY, os.X_OK):
        reason = f"livekit-server not installed at {BINARY} (run scripts/install.sh)"
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    with LiveKitServer() as server:
        yield server


@pytest.fixture
async def room_api(livekit_server: LiveKitServer) -> AsyncIterator[api.LiveKitAPI]:
    """A server API client (RoomService, EgressService, ...) for the test server."""
    client = api.LiveKitAPI(livekit_server.http_url, livekit_server.api_key, livekit_server.api_secret)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def make_room(room_api: api.LiveKitAPI) -> AsyncIterator[RoomFactory]:
    """``await make_room()`` creates a uniquely named room; every such room is deleted after the test."""
    names: list[str] = []

    async def factory() -> str:
        names.append(await create_room(room_api))
        return names[-1]

    yield factory
    for name in names:
        try:
            await room_api.room.delete_room(api.DeleteRoomRequest(room=name))
        except api.TwirpError:
            pass


@pytest.fixture
async def hooks(livekit_server: LiveKitServer) -> AsyncIterator[WebhookSink]:
    """A webhook receiver that verifies each request like LiveKit's ``WebhookReceiver``."""
    sink = WebhookSink(livekit_server.api_key, livekit_server.api_secret)
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture(scope="session")
def sample_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two-second sample files by codec name: ``opus`` (.ogg), ``h264`` (.h264), ``vp8`` (.ivf)."""
    folder = tmp_path_factory.mktemp("media")
    return {
        "opus": make_opus_ogg(folder / "tone.ogg", seconds=2),
        "h264": make_h264(folder / "testsrc.h264", seconds=2),
        "vp8": make_vp8_ivf(folder / "testsrc.ivf", seconds=2),
    }


@pytest.fixture
async def client(service: EgressService, livekit_server: LiveKitServer) -> AsyncIterator[api.LiveKitAPI]:
    """The Egress API of the test file's own ``service`` fixture."""
    lk = api.LiveKitAPI(url=service.url, api_key=livekit_server.api_key, api_secret=livekit_server.api_secret)
    yield lk
    await lk.aclose()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserClients]:
    """Headless Chromium pages (tests/support/browser.py); in CI a missing install fails instead of skipping."""
    missing = installed()
    if missing:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"not installed: {missing} (scripts/install-clients.sh)")
        pytest.skip(f"not installed: {missing} (scripts/install-clients.sh)")
    async with BrowserClients(tmp_path) as clients:
        yield clients


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """The SFU host of the multi-host tests (skipped where network namespaces cannot be made)."""
    if reason := netns.unavailable():
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    if not os.access(BINARY, os.X_OK):
        pytest.skip(f"livekit-server not installed at {BINARY} (run scripts/install.sh)")
    with open_site() as opened:
        yield opened


@pytest.fixture
def host(site: Site) -> Iterator[netns.Host]:
    """The site's first worker host, its link healed and its processes killed after the test."""
    yield site.host
    site.host.heal()
    site.host.kill_all()
