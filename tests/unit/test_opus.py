"""Opus TOC durations (RFC 6716 §3.1), also on packets encoded by PyAV (decoding: ``native/src/opus.rs``)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from trackegress.media.opus import opus_packet_samples

RATE = 48_000


def encode(signal: np.ndarray, *, frame_ms: str = "20", bitrate: int = 96_000) -> list[bytes]:
    """Opus packets for an int16 (channels, samples) signal, via PyAV's libopus encoder."""
    layout = "stereo" if signal.shape[0] == 2 else "mono"
    enc = av.CodecContext.create("libopus", "w")
    assert isinstance(enc, av.AudioCodecContext)
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = RATE, layout, "s16", bitrate
    enc.options = {"frame_duration": frame_ms}
    enc.open()
    packets: list[bytes] = []
    step = enc.frame_size
    for i in range(0, signal.shape[1] - step + 1, step):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(signal[:, i : i + step].T).reshape(1, -1), format="s16", layout=layout
        )
        frame.sample_rate, frame.pts = RATE, i
        packets += [bytes(p) for p in enc.encode(frame)]
    return packets


def tones(seconds: float, *freqs: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return np.stack([np.sin(2 * np.pi * f * t) * 8000 for f in freqs]).astype(np.int16)


@pytest.mark.parametrize(
    ("toc", "extra", "samples"),
    [
        (0 << 3, b"", 480),  # SILK NB 10 ms
        (1 << 3, b"", 960),  # SILK NB 20 ms
        (3 << 3, b"", 2880),  # SILK NB 60 ms
        (10 << 3, b"", 1920),  # SILK WB 40 ms
        (12 << 3, b"", 480),  # hybrid SWB 10 ms
        (15 << 3, b"", 960),  # hybrid FB 20 ms
        (16 << 3, b"", 120),  # CELT NB 2.5 ms
        (29 << 3, b"", 240),  # CELT FB 5 ms
        (31 << 3 | 0b100, b"", 960),  # CELT FB 20 ms, stereo flag
        (31 << 3 | 1, b"", 1920),  # code 1: two equal frames
        (31 << 3 | 2, b"\x01", 1920),  # code 2: two frames of different sizes
        (31 << 3 | 3, b"\x03", 2880),  # code 3: M=3 frames
        (3 << 3 | 3, b"\x02", 5760),  # code 3: 2 x 60 ms = the 120 ms maximum
    ],
)
def test_packet_samples_from_toc(toc: int, extra: bytes, samples: int) -> None:
    assert opus_packet_samples(bytes([toc]) + extra + b"\x00" * 10) == samples


@pytest.mark.parametrize(
    "packet",
    [bytes([31 << 3 | 3]), bytes([31 << 3 | 3, 0]), bytes([3 << 3 | 3, 3]) + b"\x00" * 10],
    ids=["code3-no-count", "code3-zero-frames", "over-120ms"],
)
def test_invalid_packets_raise(packet: bytes) -> None:
    with pytest.raises(ValueError, match="invalid Opus packet"):
        opus_packet_samples(packet)


def test_empty_packet_has_no_samples() -> None:
    assert opus_packet_samples(b"") == 0


@pytest.mark.parametrize(
    ("frame_ms", "samples"), [("2.5", 120), ("5", 240), ("10", 480), ("20", 960), ("60", 2880)]
)
def test_packet_samples_match_the_encoder(frame_ms: str, samples: int) -> None:
    packets = encode(tones(0.3, 440, 660), frame_ms=frame_ms)
    assert packets and {opus_packet_samples(p) for p in packets} == {samples}
