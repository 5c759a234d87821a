"""G.711 to the WebSocket sink's PCM: FFmpeg's G.711 decoders agree on every code; 8 -> 48 kHz stereo."""

from __future__ import annotations

import av
import numpy as np
import pytest

from trackegress.media.g711 import TABLES, G711Decoder


@pytest.mark.parametrize(("law", "ffmpeg"), [("pcmu", "pcm_mulaw"), ("pcma", "pcm_alaw")])
def test_every_code_expands_as_ffmpeg_decodes_it(law: str, ffmpeg: str) -> None:
    context = av.CodecContext.create(ffmpeg, "r")
    context.sample_rate, context.layout = 8000, "mono"  # type: ignore[attr-defined]
    frames = context.decode(av.Packet(bytes(range(256))))
    assert np.concatenate([f.to_ndarray().ravel() for f in frames]).tolist() == TABLES[law].tolist()


def test_frames_become_48khz_stereo_that_joins_without_a_step() -> None:
    codes = bytes(np.random.default_rng(1).integers(0, 256, 320, dtype=np.uint8))
    whole = np.frombuffer(G711Decoder("pcmu").decode(codes), "<i2")
    decoder = G711Decoder("pcmu")
    halves = np.frombuffer(decoder.decode(codes[:160]) + decoder.decode(codes[160:]), "<i2")
    assert len(whole) == 320 * 6 * 2 and halves.tolist() == whole.tolist()
    left, right = whole[0::2], whole[1::2]
    assert left.tolist() == right.tolist()
    assert left[5::6].tolist() == TABLES["pcmu"][np.frombuffer(codes, np.uint8)].tolist()  # the 8 kHz samples


def test_a_constant_signal_stays_constant() -> None:
    decoder = G711Decoder("pcma")
    decoder.decode(bytes([0x2A]) * 160)
    out = np.frombuffer(decoder.decode(bytes([0x2A]) * 160), "<i2")
    assert set(out.tolist()) == {int(TABLES["pcma"][0x2A])}
