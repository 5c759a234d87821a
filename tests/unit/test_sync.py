"""Where a file's first sample lies on the publisher's clock: sender reports (across RTP wraps) or arrival."""

from __future__ import annotations

import time

import pytest

from trackegress.media.frames import EncodedFrame
from trackegress.media.sync import SenderClock

NTP = 1_800_000_000_000_000_000  # a sender report's NTP time, Unix ns


def frame(timestamp: int, report: tuple[int, int] | None = None, arrival: float = 0.0) -> EncodedFrame:
    return EncodedFrame(b"x", timestamp, True, arrival, sender_report=report)


def test_first_frame_placed_by_a_later_sender_report() -> None:
    clock = SenderClock(48_000)
    first = frame(1_000)
    clock.see(first)
    clock.see(frame(1_960, (NTP, 49_000)))  # the report's instant: 48 000 ticks (1 s) after the first frame
    info = clock.info(first)
    assert (info.source, info.capture_start_ns) == ("sender_report", NTP - 1_000_000_000)
    assert (info.clock_rate, info.first_rtp_timestamp, info.sender_report) == (48_000, 1_000, (NTP, 49_000))


@pytest.mark.parametrize(("frame_ts", "report_rtp", "ticks_after_first"), [
    ((1 << 32) - 900, 8_100, 5_400 + 8_100),  # the report's timestamp wrapped, the frame's not yet
    ((1 << 32) + 500, (1 << 32) - 4_000, 5_400 - 4_000),  # the frame's timestamp wrapped, the report's not yet
])
def test_a_report_across_the_wrap(frame_ts: int, report_rtp: int, ticks_after_first: int) -> None:
    clock = SenderClock(90_000)
    first = frame((1 << 32) - 5_400)
    clock.see(first)
    clock.see(frame(frame_ts, (NTP, report_rtp)))
    info = clock.info(first)
    assert info.capture_start_ns == pytest.approx(NTP - ticks_after_first * 1_000_000_000 / 90_000, abs=1)
    assert info.first_rtp_timestamp == (1 << 32) - 5_400


def test_the_first_report_is_kept() -> None:
    clock = SenderClock(90_000)
    first = frame(0, (NTP, 0))
    clock.see(first)
    clock.see(frame(90_000, (NTP + 5_000_000_000, 90_000)))  # a later report that disagrees by 4 s
    assert clock.info(first).capture_start_ns == NTP


def test_without_a_report_the_arrival_stands_in_flagged() -> None:
    clock = SenderClock(48_000)
    now = time.monotonic()
    first = frame(10, arrival=now - 0.5)
    clock.see(first)
    info = clock.info(first)
    assert info.source == "arrival" and info.sender_report is None
    assert info.capture_start_ns == pytest.approx(time.time_ns() - 500_000_000, abs=20_000_000)
    assert info.details() == (f"; sync: capture_start_ns={info.capture_start_ns} source=arrival clock_rate=48000 "
                              "first_rtp_timestamp=10")
