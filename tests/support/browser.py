"""Headless Chromium with LiveKit's JS client SDK as publisher and reference viewer (see tests/browser/page.html).

Debian's ``chromium`` is driven by Playwright (PyPI ``playwright``, no browser download); the page and the SDK's
UMD build come from an aiohttp server on 127.0.0.1, recordings under ``files`` at ``/files/<name>``. The browser
reaches nothing but loopback: no STUN servers (the page passes ``iceServers: []``), no background services, and
every host name resolves to nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiohttp import web
from livekit import api
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/lib/chromium/chromium")  # the real binary; /usr/bin/chromium is Debian's shell wrapper
PAGE = REPO / "tests" / "browser" / "page.html"
SDK = REPO / "tests" / "browser" / "node_modules" / "livekit-client" / "dist" / "livekit-client.umd.js"
FLAGS = (
    "--use-fake-device-for-media-stream",  # fake camera (1280x720@20 with the SDK's default capture) and mic
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",  # required as root
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no host name resolves, only 127.0.0.1
)


def installed() -> str:
    """Empty if Chromium and the SDK are installed, else what is missing (scripts/install-clients.sh installs it)."""
    missing = [str(p) for p in (CHROMIUM, SDK) if not os.access(p, os.R_OK)]
    return ", ".join(missing)


def join_token(server_key: str, server_secret: str, room: str, identity: str) -> str:
    """A join token for ``identity`` that may publish and subscribe in ``room``."""
    grants = api.VideoGrants(room_join=True, room=room)
    return api.AccessToken(server_key, server_secret).with_identity(identity).with_grants(grants).to_jwt()


class BrowserClients:
    """One Chromium and the loopback page server; ``await new_page()`` gives one participant each."""

    def __init__(self, files: Path) -> None:
        self.files = files
        self._runner: web.AppRunner | None = None
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._contexts: list[BrowserContext] = []
        self.origin = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", lambda _: web.FileResponse(PAGE))
        app.router.add_get("/lk.js", lambda _: web.FileResponse(SDK))
        app.router.add_static("/files/", self.files)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.origin = f"http://127.0.0.1:{port}"
        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(FLAGS))

    async def new_page(self) -> Page:
        """A fresh context (its own participant) with the page loaded."""
        assert self._browser is not None
        context = await self._browser.new_context()
        self._contexts.append(context)
        page = await context.new_page()
        await page.goto(f"{self.origin}/")
        return page

    async def stop(self) -> None:
        for context in self._contexts:
            await context.close()
        if self._browser is not None:
            await self._browser.close()
        if self._playwright is not None:
            await self._playwright.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> BrowserClients:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class BrowserPublisher:
    """A page publishing the fake camera and mic; ``video`` / ``audio`` are the track sids."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.video = ""
        self.audio = ""

    async def publish(self, url: str, token: str, **options: object) -> None:
        """Connect and publish camera + mic; ``options``: videoCodec, backupCodec, simulcast, dynacast, red, dtx,
        degradationPreference."""
        sids = await self.page.evaluate("(a) => publish(a)", {"url": url, "token": token, "options": options})
        self.video, self.audio = sids["video"], sids["audio"]

    async def set_layer_active(self, rid: str, active: bool) -> list[dict[str, Any]]:
        """Turn one simulcast encoding on or off at the RTCRtpSender (what a bandwidth cap or the SFU would do)."""
        result: list[dict[str, Any]] = await self.page.evaluate("([r, a]) => setLayerActive(r, a)", [rid, active])
        return result

    async def outbound(self) -> list[dict[str, Any]]:
        """outbound-rtp per encoding: mime, rid, frame size, encoder, scalability mode."""
        result: list[dict[str, Any]] = await self.page.evaluate("() => outbound()")
        return result

    async def unpublish(self) -> None:
        await self.page.evaluate("() => unpublish()")


class BrowserViewer:
    """A page subscribed to everything with the SDK's defaults: what a viewer in the room receives."""

    def __init__(self, page: Page) -> None:
        self.page = page

    async def join(self, url: str, token: str) -> None:
        await self.page.evaluate("(a) => subscribe(a)", {"url": url, "token": token})

    async def inbound(self) -> dict[str, Any]:
        """inbound-rtp per kind (``video``: framesDecoded, frameWidth...; ``audio``: totalSamplesReceived...)
        and ``frames``: the [width, height] of every presented video frame."""
        result: dict[str, Any] = await self.page.evaluate("() => inbound()")
        return result

    async def audio_log(self) -> list[tuple[float, int]]:
        """(epoch seconds, audio samples received in packets so far: not the ones the viewer concealed), every
        100 ms until the last audio packet arrived."""
        log: list[list[float]] = await self.page.evaluate("() => audioLog()")
        last = next(i for i, entry in enumerate(log) if entry[2] == log[-1][2])
        return [(t / 1000, int(n)) for t, n, _ in log[:last + 1]]

    async def play(self, name: str) -> dict[str, Any]:
        """Play ``files/<name>`` in a <video> element to ``ended`` (raises on a media error)."""
        result: dict[str, Any] = await self.page.evaluate("(n) => play(n)", name)
        return result
