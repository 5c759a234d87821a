"""The wheels of ``make dist`` install where there is no Rust toolchain, and the installed command records a track."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from google.protobuf.json_format import Parse
from livekit.protocol import egress
from support.publisher import Publisher
from support.server import REPO, LiveKitServer, RoomFactory

DIST = REPO / "dist"
TOOLCHAIN = ("cargo", "rustc", "cmake")
# What a manylinux wheel may link from the system (PEP 600 / auditwheel's policy for x86_64).
MANYLINUX_LIBS = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libgcc_s.so.1",
                  "ld-linux-x86-64.so.2"}


def _wheels() -> tuple[Path, Path]:
    project = sorted(DIST.glob("trackegress-*-py3-none-any.whl"))
    native = sorted(DIST.glob("trackegress_native-*-cp311-abi3-manylinux_*_x86_64.whl"))
    if len(project) != 1 or len(native) != 1:
        reason = f"{DIST} needs one project wheel and one native manylinux abi3 wheel (run make dist)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(reason)
        pytest.skip(reason)
    return project[0], native[0]


def _toolless_path() -> str:
    """PATH without any directory that holds cargo, rustc or cmake."""
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if d and not any(Path(d, tool).exists() for tool in TOOLCHAIN))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh venv with both wheels (and their pinned dependencies, as wheels only) installed; (bin dir, env)."""
    project, native = _wheels()
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {"PATH": os.pathsep.join((str(venv / "bin"), _toolless_path())), "HOME": os.environ["HOME"],
           "LANG": "C.UTF-8"}
    assert [shutil.which(tool, path=env["PATH"]) for tool in TOOLCHAIN] == [None, None, None]
    started = time.monotonic()
    subprocess.run(["pip", "install", "-q", "--disable-pip-version-check", "--only-binary", ":all:",
                    str(project), str(native)], env=env, check=True, timeout=900)
    print(f"wheel install: {time.monotonic() - started:.1f} s")
    yield venv / "bin", env


def test_the_native_wheel_links_only_what_manylinux_allows(tmp_path: Path) -> None:
    _, native = _wheels()
    with zipfile.ZipFile(native) as wheel:
        (library,) = (n for n in wheel.namelist() if n.endswith(".so"))
        wheel.extract(library, tmp_path)
    dynamic = subprocess.run(["readelf", "-d", str(tmp_path / library)], capture_output=True, text=True,
                             check=True).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic))
    assert needed and needed <= MANYLINUX_LIBS, needed - MANYLINUX_LIBS


def test_the_installed_command_says_its_versions(installed: tuple[Path, dict[str, str]]) -> None:
    bin_dir, env = installed
    project, native = (wheel.name.split("-")[1] for wheel in _wheels())
    done = subprocess.run([str(bin_dir / "trackegress"), "--version"], capture_output=True, text=True, env=env,
                          timeout=60, check=True)
    lines = done.stdout.splitlines()
    assert lines[:2] == [f"trackegress {project}", f"trackegress-native {native}"]
    assert re.fullmatch(r"str0m \S+", lines[2]) and re.fullmatch(r"libopus 1\.\S+ \(audiopus_sys \S+\)", lines[3])
    assert re.fullmatch(r"OpenSSL 3\.\d+\.\d+ .+", lines[4]) and len(lines) == 5


async def test_the_installed_command_records_a_track(
    installed: tuple[Path, dict[str, str]], livekit_server: LiveKitServer, make_room: RoomFactory,
    sample_media: dict[str, Path], tmp_path: Path,
) -> None:
    bin_dir, env = installed
    room, creds = await make_room(), (livekit_server.api_key, livekit_server.api_secret)
    async with Publisher(livekit_server.url, creds, room, "alice", sample_media["opus"], start_delay=None,
                         prime=True) as pub:
        proc = await asyncio.create_subprocess_exec(
            str(bin_dir / "trackegress"), "record", "--url", livekit_server.url, "--api-key", creds[0],
            "--api-secret", creds[1], "--room", room, "--track", pub.track_sid, "--output", "alice.ogg",
            "--local-dir", str(tmp_path), stdout=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
        )
        await asyncio.sleep(4)  # interpreter start, join, subscription
        pub.begin()
        await asyncio.wait_for(pub.done, 15)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 20)

    assert proc.returncode == 0
    info = Parse(stdout.decode(), egress.EgressInfo())
    assert egress.EgressStatus.Name(info.status) == "EGRESS_COMPLETE", info.error
    with av.open(str(tmp_path / "alice.ogg")) as container:
        recorded = [bytes(p) for p in container.demux() if p.size]
    sent = pub.sent
    start = sent.index(recorded[0]) if recorded and recorded[0] in sent else -1
    # byte for byte, in order, from the recording's first frame (a frame handed to the sender as it leaves may
    # never go out, so the end of what was sent is no anchor)
    assert start >= 0 and recorded == sent[start:start + len(recorded)] and len(sent) - start - len(recorded) <= 5
