"""A WebSocket egress's output: the track's audio as live PCM to the request's ``websocket_url``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
from livekit.protocol import egress

from trackegress.config import Config
from trackegress.errors import INVALID_ARGUMENT, EgressFailure
from trackegress.media.frames import Codec
from trackegress.sinks.file import write_error
from trackegress.sinks.websocket import SinkStats, WebSocketSink
from trackegress.sinks.wsauth import Caller, caller_headers
from trackegress.sinks.wslink import WebSocketSinkError

StreamSinkFactory = Callable[..., WebSocketSink]


class StreamOutput:
    """The stream one audio track is sent to: ``start`` dials it, ``sink`` feeds it, ``write_results`` reports it."""

    def __init__(self, sink: WebSocketSink, directory: Path) -> None:
        self.sink = sink
        self._directory = directory  # where a write error is checked for a full disk

    @classmethod
    def create(
        cls, url: str, codec: Codec, config: Config, caller: Caller, *, on_error: Callable[[Exception], None],
        on_delay: Callable[[float], None] | None, catch_up: Callable[[], None],
        stream_sink: StreamSinkFactory = WebSocketSink,
    ) -> StreamOutput:
        """The stream for ``url`` (``EgressFailure`` if the codec is video); ``start`` dials it, with the configured
        headers and a token signed for ``caller``."""
        if codec.is_video:
            raise EgressFailure(INVALID_ARGUMENT, f"format websocket incompatible with codec {codec.mime}")
        sink = stream_sink(
            url,
            codec=codec,
            sample_rate=config.websocket_sample_rate,
            channels=config.websocket_channels,
            on_error=on_error,
            on_delay=on_delay,
            catch_up=catch_up,
            headers=caller_headers(config.websocket_headers, config.api_key, config.api_secret, caller),
        )
        return cls(sink, config.local_dir.resolve())

    async def start(self) -> None:
        """Dial the receiver once (``EgressFailure`` if it cannot be reached: the stream's result says so too)."""
        try:
            await self.sink.start()
        except WebSocketSinkError as exc:
            raise EgressFailure(INVALID_ARGUMENT, str(exc)) from None

    @property
    def bytes_out(self) -> int:
        """PCM bytes the receiver confirmed reading."""
        return self.sink.bytes_sent

    @property
    def stats(self) -> SinkStats:
        """The sink's counters (reconnects, frames lost, ...)."""
        return self.sink.stats

    def write_error(self, exc: OSError | av.FFmpegError) -> str:
        return write_error(exc, self._directory)

    def loss_details(self) -> str:
        """Nothing before the sink closes: what it lost is known once it has (``closed_details``)."""
        return ""

    def closed_details(self) -> str:
        """``; websocket: 3 of 500 10 ms messages not delivered`` when a sink that did not fail lost audio."""
        stats = self.sink.stats
        if self.failure() is not None or not stats.frames_lost:
            return ""
        total = stats.frames_lost + stats.bytes_sent // max(1, self.sink.message_size)
        return f"; websocket: {stats.frames_lost} of {total} 10 ms messages not delivered"

    def failure(self) -> str | None:
        """The error that failed the sink (receiver gone past the reconnect deadline, ...); None if it did not."""
        info = self.sink.stream_info()
        return info.error if info.status == egress.StreamInfo.FAILED else None

    async def release_unused(self) -> None:
        """A stream leaves nothing behind."""

    async def write_results(self, info: egress.EgressInfo, started_at: int) -> str | None:
        """The stream's result into ``info`` (a stream has nothing to upload: never an error)."""
        stream_info = self.sink.stream_info()
        info.stream_results.append(stream_info)
        info.stream.info.append(stream_info)
        return None

    async def failed_results(self, info: egress.EgressInfo) -> None:
        """A failed WebSocket egress still reports its stream (with the stream's own status and error)."""
        if not info.stream_results:
            await self.write_results(info, 0)
