"""G.711 (PCMU: mu-law, PCMA: A-law) to the WebSocket sink's PCM: interleaved s16le stereo at 48 kHz.

Samples are expanded with ITU-T G.711's tables and raised from 8 kHz to 48 kHz by linear interpolation
(the previous frame's last sample carried over, so frames join without a step). No codec library involved.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

RATIO = 6  # 48 kHz / 8 kHz: RTP timestamp units to the PCM timeline's
_STEPS = np.arange(1, RATIO + 1) / RATIO


def _mulaw() -> npt.NDArray[np.int16]:
    code = ~np.arange(256) & 0xFF
    exponent, mantissa = (code >> 4) & 7, code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw() -> npt.NDArray[np.int16]:
    code = np.arange(256) ^ 0x55
    exponent, mantissa = (code >> 4) & 7, code & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


TABLES = {"pcmu": _mulaw(), "pcma": _alaw()}
MULAW_SILENCE, ALAW_SILENCE = 0xFF, 0xD5  # the code of a zero sample


class G711Decoder:
    """Decodes one track's G.711 frames (``law``: ``pcmu`` or ``pcma``)."""

    def __init__(self, law: str) -> None:
        self._table = TABLES[law]
        self._last = 0.0

    def decode(self, packet: bytes) -> bytes:
        """48 kHz stereo s16le for one frame (6 x 2 output samples per input byte)."""
        if not packet:
            return b""
        samples = self._table[np.frombuffer(packet, np.uint8)].astype(np.float64)
        previous = np.concatenate(([self._last], samples[:-1]))
        self._last = float(samples[-1])
        upsampled = previous[:, None] + (samples - previous)[:, None] * _STEPS
        return np.repeat(np.rint(upsampled).astype("<i2").ravel(), 2).tobytes()
