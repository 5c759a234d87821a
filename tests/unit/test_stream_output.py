"""StreamOutput on its own: what it refuses, how a failed dial is reported, and the results and details it gives."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import egress

from trackegress.config import Config
from trackegress.errors import EgressFailure
from trackegress.media.frames import Codec
from trackegress.outputs.stream import StreamOutput
from trackegress.sinks.pcm import ClockStats
from trackegress.sinks.websocket import SinkStats
from trackegress.sinks.wsauth import Caller


def _config(tmp_path: Path) -> Config:
    return Config("ws://unused", "key", "secret", local_dir=tmp_path)


def _create(tmp_path: Path, url: str, codec: Codec = Codec.OPUS, **sink: Any) -> StreamOutput:
    return StreamOutput.create(url, codec, _config(tmp_path), Caller("EG_1", "room", "TR_1"),
                               on_error=lambda exc: None, on_delay=None, catch_up=lambda: None, **sink)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_video_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EgressFailure) as refused:
        _create(tmp_path, "ws://127.0.0.1:1/pcm", Codec.VP8)
    assert (refused.value.code, refused.value.message) == (
        "invalid_argument", "format websocket incompatible with codec video/vp8")


async def test_an_unreachable_receiver_fails_the_start_and_is_reported_once(tmp_path: Path) -> None:
    output = _create(tmp_path, f"ws://127.0.0.1:{_closed_port()}/pcm?token=secret")
    with pytest.raises(EgressFailure) as failed:
        await output.start()
    assert failed.value.code == "invalid_argument"
    assert failed.value.message.startswith("failed to connect to websocket ws://127.0.0.1:")
    assert "secret" not in failed.value.message
    assert output.failure() == failed.value.message and output.closed_details() == ""
    info = egress.EgressInfo()
    await output.failed_results(info)
    await output.failed_results(info)
    assert [(s.status, s.error) for s in info.stream_results] == [(egress.StreamInfo.FAILED, failed.value.message)]
    assert "secret" not in info.stream_results[0].url


class FakeSink:
    """A WebSocket sink that delivered ``bytes_sent`` and lost ``frames_lost`` 10 ms messages."""

    def __init__(self, url: str, **_: object) -> None:
        self.url = url
        self.status = egress.StreamInfo.FINISHED
        self.bytes_sent = 0
        self.frames_lost = 0
        self.message_size = 1920

    @property
    def stats(self) -> SinkStats:
        return SinkStats(self.bytes_sent, self.bytes_sent, self.bytes_sent // self.message_size, self.frames_lost,
                         0, 0, 0, 0, ClockStats())

    def stream_info(self) -> egress.StreamInfo:
        return egress.StreamInfo(url=self.url, status=self.status)


async def test_messages_lost_are_told_and_the_result_reported(tmp_path: Path) -> None:
    output = _create(tmp_path, "ws://127.0.0.1:1/pcm", stream_sink=FakeSink)
    sink = output.sink
    assert isinstance(sink, FakeSink)
    assert output.closed_details() == ""
    sink.bytes_sent, sink.frames_lost = 497 * 1920, 3
    assert output.bytes_out == 497 * 1920 and output.failure() is None and output.loss_details() == ""
    assert output.closed_details() == "; websocket: 3 of 500 10 ms messages not delivered"
    info = egress.EgressInfo()
    assert await output.write_results(info, 1) is None
    await output.failed_results(info)
    assert list(info.stream_results) == list(info.stream.info) == [egress.StreamInfo(url=sink.url, status=sink.status)]
