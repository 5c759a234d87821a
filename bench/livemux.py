"""What the live A/V file (issue 23) costs: CPU per second of audio + video muxed, beside what the two track files
cost for the same packets.

No server: the packets an A/V egress's two track muxers write (Opus, 50 a second; video, 30 frames a second of
``--frame-bytes`` each, a keyframe every second) are fed, in arrival order, once into two track ``Muxer``s (Ogg +
WebM, what every A/V egress writes anyway) and once more into those plus a ``LiveMux`` (the A/V WebM). The
difference is the live file's price. CPU is this process's (``time.process_time``), best of ``--runs``.

    .venv/bin/python bench/livemux.py [--seconds 60] [--frame-bytes 4000] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from trackegress.media.frames import Codec, EncodedFrame
from trackegress.media.sync import SENDER_REPORT, SyncInfo
from trackegress.sinks.livemux import LiveMux
from trackegress.sinks.muxer import Muxer

T0 = 1_800_000_000_000_000_000
OPUS = bytes([0xFC]) + bytes(159)  # a 20 ms CELT frame's size at 64 kbit/s


class Track:
    """A lane's view of its track: sender-report sync at T0, the picture size the track file declares."""

    def __init__(self, codec: Codec, size: tuple[int, int] | None = None) -> None:
        self.codec, self.header_size = codec, size
        self.sync = self.arrival_sync = SyncInfo(T0, SENDER_REPORT, codec.clock_rate, 0, (T0, 0))


def frames(seconds: float, frame_bytes: int) -> list[tuple[str, EncodedFrame]]:
    """Both tracks' frames in arrival order (audio every 20 ms, video every 33 ms, a keyframe each second)."""
    audio = [(k * 0.02, "audio", EncodedFrame(OPUS, k * 960, True)) for k in range(int(seconds * 50))]
    key = b"\x10\x02\x00\x9d\x01\x2a" + (1280).to_bytes(2, "little") + (720).to_bytes(2, "little")
    video = [(k / 30, "video", EncodedFrame((key if k % 30 == 0 else b"\x11") + bytes(frame_bytes), k * 3000,
                                            k % 30 == 0)) for k in range(int(seconds * 30))]
    return [(kind, frame) for _, kind, frame in sorted(audio + video, key=lambda item: item[0])]


def run(directory: Path, stream: list[tuple[str, EncodedFrame]], live: bool) -> float:
    """CPU seconds to mux ``stream`` into the track files (and the live file if ``live``)."""
    joint = LiveMux() if live else None
    tracks = {"audio": Track(Codec.OPUS), "video": Track(Codec.VP8, (1280, 720))}
    muxers = {}
    for kind, codec in (("audio", Codec.OPUS), ("video", Codec.VP8)):
        lane = joint.lanes[kind] if joint is not None else None
        if lane is not None:
            lane.track = tracks[kind]
        muxers[kind] = Muxer(directory / f"{kind}-{live}.{'ogg' if kind == 'audio' else 'webm'}", codec,
                             size=(1280, 720) if kind == "video" else None, tee=lane)
    if joint is not None:
        joint.start(directory / "av.webm", Codec.VP8)
    started = time.process_time()
    for kind, frame in stream:
        muxers[kind].write(frame)
    for muxer in muxers.values():
        muxer.close()
    if joint is not None:
        joint.close()
        assert joint.error is None and joint.packets == len(stream), joint.error
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--frame-bytes", type=int, default=4000, help="video frame size (4000: ~1 Mbit/s at 30 fps)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    stream = frames(args.seconds, args.frame_bytes)
    best = {False: float("inf"), True: float("inf")}
    for _ in range(args.runs):
        for live in (False, True):
            with tempfile.TemporaryDirectory() as directory:
                best[live] = min(best[live], run(Path(directory), stream, live))
    per_second = {live: cpu / args.seconds * 1000 for live, cpu in best.items()}
    print(f"{len(stream)} packets, {args.seconds:.0f} s of A/V, video frames of {args.frame_bytes} bytes, best of "
          f"{args.runs}")
    print("| written | CPU ms per A/V second |")
    print("|---|---|")
    print(f"| the two track files (Ogg + WebM) | {per_second[False]:.2f} |")
    print(f"| the track files and the live A/V file | {per_second[True]:.2f} |")
    print(f"| the live A/V file's share | {per_second[True] - per_second[False]:.2f} |")


if __name__ == "__main__":
    main()
