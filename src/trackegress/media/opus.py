"""Opus: packet durations from the TOC byte (RFC 6716 §3.1) and in-loop decoding to 48 kHz stereo s16 PCM."""

from __future__ import annotations

import time

import av
import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48_000
CHANNELS = 2
FRAME_BYTES = 2 * CHANNELS  # one interleaved s16 stereo sample frame
MAX_PACKET_SAMPLES = 5_760  # 120 ms, the longest legal Opus packet
DTX_MAX_BYTES = 2  # TOC (+ frame count) only: every frame in the packet is empty

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


def _open_context() -> av.AudioCodecContext:
    """A stereo 48 kHz decoder: libopus (s16 out) if FFmpeg has it, else FFmpeg's native one (float)."""
    names = [name for name in ("libopus", "opus") if name in av.codecs_available]
    if not names:
        raise RuntimeError("FFmpeg has no Opus decoder")
    ctx = av.CodecContext.create(names[0], "r")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate = SAMPLE_RATE
    ctx.layout = "stereo"  # mono packets come out duplicated on both channels
    ctx.open()
    return ctx


def _interleaved_s16(frame: av.AudioFrame) -> npt.NDArray[np.int16]:
    """The frame as a (samples, channels) int16 array, whatever the decoder's sample format."""
    array = frame.to_ndarray()
    samples = array.T if frame.format.is_planar else array.reshape(-1, frame.layout.nb_channels)
    if samples.dtype.kind != "f":
        return samples.astype(np.int16, copy=False)
    floats: npt.NDArray[np.float32] = np.clip(samples.astype(np.float32), -1.0, 1.0) * np.float32(32767.0)
    return np.rint(floats).astype(np.int16)


def frame_to_pcm(frame: av.AudioFrame) -> bytes:
    """Interleaved s16le stereo bytes for a decoded frame (mono is duplicated)."""
    samples = _interleaved_s16(frame)
    if samples.shape[1] == 1:
        samples = np.repeat(samples, CHANNELS, axis=1)
    elif samples.shape[1] > CHANNELS:
        samples = samples[:, :CHANNELS]
    return samples.astype("<i2", copy=False).tobytes()


class OpusDecoder:
    """Decodes one track's Opus packets in the calling thread (the event loop) with one PyAV context.

    ``decode`` returns interleaved s16le stereo 48 kHz PCM. DTX packets (no frame data) become zeros of
    the TOC's duration; an empty packet repeats the previous packet's duration. Invalid packets raise
    ``ValueError``. ``decode_seconds`` / ``packets`` measure the cost.
    """

    def __init__(self) -> None:
        self._ctx = _open_context()
        self._last_samples = 960
        self.packets = 0
        self.dtx_packets = 0
        self.decode_seconds = 0.0

    @property
    def codec_name(self) -> str:
        return str(self._ctx.name)

    def decode(self, packet: bytes) -> bytes:
        samples = opus_packet_samples(packet) or self._last_samples
        self._last_samples = samples
        self.packets += 1
        if len(packet) <= DTX_MAX_BYTES:
            self.dtx_packets += 1
            return bytes(samples * FRAME_BYTES)
        started = time.perf_counter()
        try:
            return b"".join(frame_to_pcm(frame) for frame in self._ctx.decode(av.Packet(packet)))
        except av.FFmpegError as exc:
            raise ValueError(f"invalid Opus packet: {exc}") from exc
        finally:
            self.decode_seconds += time.perf_counter() - started
