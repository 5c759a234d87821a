"""Opus: packet durations from the TOC byte (RFC 6716 §3.1). Decoding to PCM is the media core's
(``native/src/opus.rs``)."""

from __future__ import annotations

MAX_PACKET_SAMPLES = 5_760  # 120 ms, the longest legal Opus packet

_SILK_SAMPLES = (480, 960, 1920, 2880)  # configs 0-11: 10, 20, 40, 60 ms
_HYBRID_SAMPLES = (480, 960)  # configs 12-15: 10, 20 ms
_CELT_SAMPLES = (120, 240, 480, 960)  # configs 16-31: 2.5, 5, 10, 20 ms


def opus_frame_samples(toc: int) -> int:
    """Samples per channel (at 48 kHz) of each frame for the TOC byte's configuration."""
    config = toc >> 3
    if config < 12:
        return _SILK_SAMPLES[config % 4]
    if config < 16:
        return _HYBRID_SAMPLES[config % 2]
    return _CELT_SAMPLES[config % 4]


def opus_frame_count(packet: bytes) -> int:
    """Number of frames in a non-empty packet: codes 0, 1/2, and 3 (count in the second byte)."""
    code = packet[0] & 0x03
    if code == 0:
        return 1
    if code < 3:
        return 2
    if len(packet) < 2:
        raise ValueError("invalid Opus packet: code 3 without a frame count byte")
    return packet[1] & 0x3F


def opus_packet_samples(packet: bytes) -> int:
    """Samples per channel at 48 kHz in one Opus packet, from its TOC (RFC 6716 §3.1); 0 if empty."""
    if not packet:
        return 0
    samples = opus_frame_count(packet) * opus_frame_samples(packet[0])
    if samples == 0 or samples > MAX_PACKET_SAMPLES:
        raise ValueError(f"invalid Opus packet: {samples} samples (TOC 0x{packet[0]:02x})")
    return samples


def packet_samples_or_zero(packet: bytes) -> int:
    """``opus_packet_samples``, 0 if the packet is empty or invalid."""
    try:
        return opus_packet_samples(packet)
    except ValueError:
        return 0
