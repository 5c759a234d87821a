"""When a file's first sample was captured, on the publisher's clock: the RTCP sender reports (RFC 3550 §6.4.1) map
the track's RTP timestamps to the publisher's NTP wall clock; with none, the first frame's arrival stands in.

LiveKit forwards the publisher's sender reports with the NTP time as the publisher sent it and the RTP timestamp
moved into the forwarded stream's timestamp space (the same offset as its packets), so the mapping holds for the
timestamps we receive. The first report received is used (clock drift over a recording is a few ppm).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any, Literal

from trackegress.media.frames import EncodedFrame

SENDER_REPORT: Literal["sender_report"] = "sender_report"
ARRIVAL: Literal["arrival"] = "arrival"
_WRAP = 1 << 32


@dataclass(frozen=True, slots=True)
class SyncInfo:
    """``capture_start_ns``: Unix ns of the file's first sample (file time 0), on the publisher's clock when
    ``source`` is ``sender_report``, else when its frame arrived here (``arrival``); ``clock_rate`` and
    ``first_rtp_timestamp`` (32 bits, as sent) place any RTP timestamp of the track on the same clock."""

    capture_start_ns: int
    source: Literal["sender_report", "arrival"]
    clock_rate: int
    first_rtp_timestamp: int
    sender_report: tuple[int, int] | None  # (NTP Unix ns, RTP timestamp) the capture time was derived from

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``sync`` object."""
        report = self.sender_report
        return {
            "capture_start_ns": self.capture_start_ns,
            "capture_start": _iso(self.capture_start_ns),
            "source": self.source,
            "clock_rate": self.clock_rate,
            "first_rtp_timestamp": self.first_rtp_timestamp,
            "sender_report": None if report is None else {"ntp_ns": report[0], "rtp_timestamp": report[1]},
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SyncInfo:
        report = value.get("sender_report")
        return cls(
            int(value["capture_start_ns"]), value["source"], int(value["clock_rate"]),
            int(value["first_rtp_timestamp"]),
            None if report is None else (int(report["ntp_ns"]), int(report["rtp_timestamp"])),
        )

    def details(self) -> str:
        """``; sync: capture_start_ns=... source=sender_report clock_rate=48000 first_rtp_timestamp=...``."""
        return (f"; sync: capture_start_ns={self.capture_start_ns} source={self.source} "
                f"clock_rate={self.clock_rate} first_rtp_timestamp={self.first_rtp_timestamp}")


class SenderClock:
    """Sees every frame of a track (before any is dropped) and keeps the first sender report that came with one,
    its RTP timestamp extended like the frames' (``EncodedFrame.timestamp``)."""

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self._report: tuple[int, int, int] | None = None  # NTP ns, extended RTP, RTP as sent
        self._wall_offset = time.time_ns() - time.monotonic_ns()  # monotonic -> Unix, for arrival times

    def see(self, frame: EncodedFrame) -> None:
        if self._report is not None or frame.sender_report is None:
            return
        ntp_ns, rtp = frame.sender_report
        delta = (rtp - frame.timestamp) % _WRAP  # the report's instant relative to this frame, across a wrap
        if delta >= _WRAP // 2:
            delta -= _WRAP
        self._report = (ntp_ns, frame.timestamp + delta, rtp)

    def info(self, first: EncodedFrame, *, by_arrival: bool = False) -> SyncInfo:
        """Where ``first`` (the file's first frame) lies on the publisher's clock, or its arrival without a report
        (or if ``by_arrival``)."""
        first_rtp = first.timestamp % _WRAP
        if self._report is None or by_arrival:
            arrival = round(first.arrival * 1e9) + self._wall_offset
            return SyncInfo(arrival, ARRIVAL, self.clock_rate, first_rtp, None)
        ntp_ns, rtp_ext, rtp = self._report
        start = ntp_ns + (first.timestamp - rtp_ext) * 1_000_000_000 // self.clock_rate
        return SyncInfo(start, SENDER_REPORT, self.clock_rate, first_rtp, (ntp_ns, rtp))


def _iso(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns % 1_000_000_000:09d}Z"
