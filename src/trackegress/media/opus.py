"""Opus: packet durations from the TOC byte (RFC 6716 §3.1) and in-loop decoding to 48 kHz stereo s16 PCM."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import time
import weakref
from pathlib import Path

import av

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


@functools.cache
def _libopus() -> ctypes.CDLL:
    """libopus: the build PyAV's wheel bundles (the one its FFmpeg decodes with), else the system's."""
    bundled = sorted((Path(av.__file__).resolve().parent.parent / "av.libs").glob("libopus*.so*"))
    for name in [*map(str, bundled), ctypes.util.find_library("opus")]:
        if name:
            with contextlib.suppress(OSError):
                return _declare(ctypes.CDLL(name))
    raise RuntimeError("libopus not found (neither in PyAV's wheel nor on the system)")


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = (ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int))
    lib.opus_decoder_destroy.restype = None
    lib.opus_decoder_destroy.argtypes = (ctypes.c_void_p,)
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int,
                                ctypes.c_int)  # fmt: skip
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = (ctypes.c_int,)
    return lib


def _error(lib: ctypes.CDLL, code: int) -> str:
    return bytes(lib.opus_strerror(code)).decode(errors="replace")


class OpusDecoder:
    """Decodes one track's Opus packets in the calling thread (the event loop), libopus called directly.

    One ``opus_decode`` per packet into a reused buffer: interleaved s16 stereo 48 kHz PCM straight from
    libopus (mono packets come out duplicated on both channels), no per-packet objects but the result.
    DTX packets (no frame data) become zeros of the TOC's duration; an empty packet repeats the previous
    packet's duration. Invalid packets raise ``ValueError``. ``decode_seconds`` / ``packets`` measure the cost.
    """

    def __init__(self) -> None:
        lib = _libopus()
        error = ctypes.c_int()
        state = lib.opus_decoder_create(SAMPLE_RATE, CHANNELS, ctypes.byref(error))
        if error.value or not state:
            raise RuntimeError(f"opus_decoder_create failed: {_error(lib, error.value)}")
        weakref.finalize(self, lib.opus_decoder_destroy, state)
        self._decode = functools.partial(lib.opus_decode, state)
        self._lib = lib
        self._pcm = ctypes.create_string_buffer(MAX_PACKET_SAMPLES * FRAME_BYTES)
        self._last_samples = 960
        self.packets = 0
        self.dtx_packets = 0
        self.decode_seconds = 0.0

    def decode(self, packet: bytes) -> bytes:
        samples = opus_packet_samples(packet) or self._last_samples
        self._last_samples = samples
        self.packets += 1
        if len(packet) <= DTX_MAX_BYTES:
            self.dtx_packets += 1
            return bytes(samples * FRAME_BYTES)
        started = time.perf_counter()
        decoded: int = self._decode(packet, len(packet), self._pcm, MAX_PACKET_SAMPLES, 0)
        self.decode_seconds += time.perf_counter() - started
        if decoded < 0:
            raise ValueError(f"invalid Opus packet: {_error(self._lib, decoded)}")
        return ctypes.string_at(self._pcm, decoded * FRAME_BYTES)
