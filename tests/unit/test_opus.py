"""Opus TOC durations (RFC 6716 §3.1) and the in-loop PyAV decoder, on packets encoded by PyAV."""

from __future__ import annotations

import time

import av
import numpy as np
import pytest

from trackegress.media.opus import OpusDecoder, opus_packet_samples

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


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * RATE / len(samples))


def decode_all(packets: list[bytes]) -> np.ndarray:
    decoder = OpusDecoder()
    pcm = b"".join(decoder.decode(p) for p in packets)
    return np.frombuffer(pcm, dtype="<i2").reshape(-1, 2).astype(np.float64)


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
    decoder = OpusDecoder()
    assert all(len(decoder.decode(p)) == samples * 4 for p in packets)


def test_decodes_stereo_to_s16_interleaved_48k() -> None:
    pcm = decode_all(encode(tones(1.0, 440, 660)))
    assert len(pcm) == RATE
    assert peak_hz(pcm[4800:, 0]) == pytest.approx(440, abs=2)
    assert peak_hz(pcm[4800:, 1]) == pytest.approx(660, abs=2)
    assert np.abs(pcm[4800:]).max() == pytest.approx(8000, rel=0.15)


def test_mono_packets_are_duplicated_on_both_channels() -> None:
    packets = encode(tones(0.5, 440))
    assert packets[0][0] & 0b100 == 0  # mono TOC
    pcm = decode_all(packets)
    assert len(pcm) == RATE // 2
    assert (pcm[:, 0] == pcm[:, 1]).all()
    assert peak_hz(pcm[4800:, 0]) == pytest.approx(440, abs=2)


def test_dtx_and_empty_packets_decode_to_zeros_of_the_right_length() -> None:
    decoder = OpusDecoder()
    assert decoder.decode(bytes([1 << 3])) == bytes(960 * 4)  # SILK 20 ms, no frame data
    assert decoder.decode(bytes([31 << 3 | 3, 2])) == bytes(1920 * 4)  # code 3, two empty CELT frames
    assert decoder.decode(b"") == bytes(1920 * 4)  # no TOC: previous packet's duration
    assert decoder.dtx_packets == 3


def test_corrupt_packet_raises_value_error() -> None:
    decoder = OpusDecoder()
    with pytest.raises(ValueError, match="invalid Opus packet"):
        decoder.decode(bytes([31 << 3 | 3, 0x3F]) + b"\xff" * 40)  # 63 frames: over 120 ms
    with pytest.raises(ValueError, match="invalid Opus packet: corrupted stream"):
        decoder.decode(bytes([31 << 3]) + b"\xff" * 1300)  # one frame over libopus's 1275-byte limit
    assert len(decoder.decode(encode(tones(0.1, 440, 660))[0])) == 960 * 4  # and it goes on decoding


def test_decode_cost_per_20ms_packet_is_small() -> None:
    packets = encode(tones(2.0, 440, 660))
    decoder = OpusDecoder()
    started = time.process_time()
    for p in packets:
        decoder.decode(p)
    cpu = (time.process_time() - started) / len(packets)
    assert decoder.packets == len(packets) == 100
    assert cpu < 0.002, f"{cpu * 1e6:.0f} µs CPU per 20 ms packet"
