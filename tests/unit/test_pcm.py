"""PcmClock / PcmConverter: the PCM timeline of the WebSocket sink, with fake time and a position ramp."""

from __future__ import annotations

import numpy as np
import pytest

from trackegress.sinks.pcm import CHUNK_BYTES, CHUNK_SAMPLES, PcmClock, PcmConverter

RATE = 48_000
BASE_TS = 1_234_567  # RTP timestamp of the first frame


def ramp(ts: int, samples: int = 960) -> bytes:
    """Stereo s16 whose value tells the timestamp: left = 1 + ts % 30000, right = -left (never zero)."""
    left = 1 + (np.arange(ts, ts + samples) % 30_000)
    return np.stack([left, -left], axis=1).astype("<i2").tobytes()


def values(chunks: list[bytes]) -> np.ndarray:
    """The left channel of the emitted chunks."""
    data = b"".join(chunks)
    return np.frombuffer(data, dtype="<i2").reshape(-1, 2)[:, 0].astype(np.int64)


def in_order(v: np.ndarray) -> bool:
    """Each value follows the previous one on the ramp: nothing repeated, reordered or skipped."""
    return bool(((np.diff(v) - 1) % 30_000 == 0).all())


def push_frames(clock: PcmClock, indices: range | list[int], *, late: float = 0.0) -> list[bytes]:
    """Push 20 ms frames ``indices`` (timestamps BASE_TS + k*960), each arriving at k*0.02 + late."""
    out: list[bytes] = []
    for k in indices:
        now = k * 0.02 + late
        out += clock.tick(now)
        out += clock.push(BASE_TS + k * 960, ramp(BASE_TS + k * 960), now)
    return out


def test_contiguous_frames_become_exact_10ms_chunks() -> None:
    clock = PcmClock()
    out = push_frames(clock, range(50))
    assert all(len(c) == CHUNK_BYTES for c in out)
    assert len(out) == 100
    assert b"".join(out) == b"".join(ramp(BASE_TS + k * 960) for k in range(50))
    assert clock.stats.gap_samples == clock.stats.stall_samples == clock.stats.resyncs == 0


def test_timestamp_gap_is_filled_with_exact_zeros() -> None:
    clock = PcmClock()
    out = push_frames(clock, [0, 1, 2, 6, 7])  # packets 3-5 lost (or DTX)
    v = values(out)
    assert len(v) == 8 * 960
    assert (v[3 * 960 : 6 * 960] == 0).all()
    assert (v[6 * 960 :] == 1 + (BASE_TS + 6 * 960 + np.arange(1920)) % 30_000).all()
    assert clock.stats.gap_samples == 3 * 960


def test_frame_behind_the_timeline_is_dropped_or_trimmed() -> None:
    clock = PcmClock()
    out = push_frames(clock, range(3))
    out += clock.push(BASE_TS + 960, ramp(BASE_TS + 960), 0.05)  # duplicate
    assert clock.stats.dropped_frames == 1
    out += clock.push(BASE_TS + 3 * 960 - 100, ramp(BASE_TS + 3 * 960 - 100), 0.06)  # overlaps by 100
    assert clock.stats.trimmed_samples == 100
    v = values(out + clock.flush())
    assert in_order(v[: 4 * 960 - 100])  # one continuous ramp, nothing twice


def test_short_frames_wait_for_a_whole_chunk_and_flush_pads() -> None:
    clock = PcmClock()
    out: list[bytes] = []
    for k in range(6):  # 2.5 ms CELT frames
        out += clock.push(BASE_TS + k * 120, ramp(BASE_TS + k * 120, 120), k * 0.0025)
        assert len(out) == (1 if k >= 3 else 0)
    tail = clock.flush()
    assert len(tail) == 1 and len(tail[0]) == CHUNK_BYTES
    assert values(tail)[240:].tolist() == [0] * 240
    assert clock.flush() == []


def test_silence_keeps_flowing_in_real_time_while_no_media() -> None:
    clock = PcmClock(late_allowance=0.06)
    assert clock.tick(5.0) == [] and clock.deadline() is None
    push_frames(clock, range(5))  # 100 ms of media, last at t=0.08
    assert clock.deadline() == pytest.approx(0.1 + 0.06)
    assert clock.tick(0.15) == []
    emitted = 0
    for step in range(1, 101):
        now = 0.1 + step * 0.01
        emitted += len(clock.tick(now))
        position = 4800 + emitted * CHUNK_SAMPLES  # never late by more than the allowance, never ahead
        due = round((now - 0.06) * RATE)
        assert due <= position <= max(4800, due + CHUNK_SAMPLES)
    assert clock.stats.stall_samples == emitted * CHUNK_SAMPLES


def test_media_resuming_with_advanced_timestamps_keeps_its_position() -> None:
    clock = PcmClock()
    out = push_frames(clock, range(10))
    for step in range(1, 80):  # 0.8 s with no media
        out += clock.tick(0.2 + step * 0.01)
    out += push_frames(clock, range(50, 60))  # timestamps kept running (t=1.0 s)
    v = values(out)
    assert len(v) == 60 * 960
    assert (v[10 * 960 : 50 * 960] == 0).all()
    assert v[50 * 960] == 1 + (BASE_TS + 50 * 960) % 30_000
    assert clock.stats.resyncs == 0


def test_media_resuming_behind_the_silence_is_resynced_after_it() -> None:
    clock = PcmClock()
    out = push_frames(clock, range(10))
    for step in range(1, 80):
        out += clock.tick(0.2 + step * 0.01)
    zeros_end = clock.position
    # the publisher's timestamps did not advance while it was muted: next frame is index 10 at t=1.0
    for k in range(10, 20):
        now = 1.0 + (k - 10) * 0.02
        out += clock.push(BASE_TS + k * 960, ramp(BASE_TS + k * 960), now) + clock.tick(now)
    v = values(out)
    assert clock.stats.resyncs == 1 and clock.stats.dropped_frames == 0
    assert (v[10 * 960 : zeros_end] == 0).all()
    resumed = v[zeros_end : zeros_end + 10 * 960]
    assert (resumed == 1 + (BASE_TS + 10 * 960 + np.arange(9600)) % 30_000).all()
    assert in_order(v[v != 0])  # in order, no sample twice


def test_late_burst_after_silence_is_not_sent_twice() -> None:
    clock = PcmClock()
    out = push_frames(clock, range(10))
    for step in range(1, 40):  # network stall: 0.4 s of silence emitted
        out += clock.tick(0.2 + step * 0.01)
    for k in range(10, 30):  # the stalled frames arrive in one burst, then real time goes on
        out += clock.push(BASE_TS + k * 960, ramp(BASE_TS + k * 960), 0.6)
    v = values(out)
    assert in_order(v[v != 0])
    assert (v != 0).sum() == 30 * 960


def test_timestamp_jump_far_ahead_is_a_discontinuity_not_minutes_of_zeros() -> None:
    clock = PcmClock(max_lead=1.0)
    out = push_frames(clock, range(5))
    out += clock.push(BASE_TS + 10 * RATE, ramp(BASE_TS + 10 * RATE), 0.1)  # +10 s
    v = values(out + clock.flush())
    assert len(v) <= 6 * 960 + CHUNK_SAMPLES
    assert clock.stats.resyncs == 1


def test_rejects_partial_stereo_frames() -> None:
    with pytest.raises(ValueError, match="whole stereo"):
        PcmClock().push(0, b"\x00" * 6, 0.0)


def sine_chunks(seconds: float, freq: float = 440.0) -> list[bytes]:
    t = np.arange(int(seconds * RATE)) / RATE
    tone = (np.sin(2 * np.pi * freq * t) * 10_000).astype("<i2")
    data = np.stack([tone, tone], axis=1).tobytes()
    return [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize("rate", [8_000, 16_000, 24_000, 48_000])
@pytest.mark.parametrize("channels", [1, 2])
def test_converter_emits_one_10ms_message_per_chunk(rate: int, channels: int) -> None:
    converter = PcmConverter(rate, channels)
    size = rate // 100 * channels * 2
    assert converter.message_bytes == size and converter.bytes_per_second == rate * channels * 2
    out: list[bytes] = []
    for chunk in sine_chunks(1.0):
        messages = converter.convert(chunk)
        assert len(messages) == 1 and len(messages[0]) == size  # no added 10 ms of delay
        out += messages
    assert all(len(m) == size for m in converter.flush())
    pcm = np.frombuffer(b"".join(out), dtype="<i2").reshape(-1, channels).astype(np.float64)
    assert len(pcm) == rate
    for ch in range(channels):
        assert peak_hz(pcm[rate // 10 :, ch], rate) == pytest.approx(440, abs=3)
    assert np.abs(pcm[rate // 10 :]).max() == pytest.approx(10_000, rel=0.05)  # mono averages L and R


def test_converter_is_identity_for_48k_stereo() -> None:
    converter = PcmConverter()
    chunk = sine_chunks(0.01)[0]
    assert converter.convert(chunk) == [chunk]
    assert converter.flush() == []


@pytest.mark.parametrize(("rate", "channels"), [(44_100, 2), (16_000, 3)])
def test_converter_rejects_other_formats(rate: int, channels: int) -> None:
    with pytest.raises(ValueError, match="invalid"):
        PcmConverter(rate, channels)
