"""VP9 key frames and dimensions (VP9 bitstream spec 6.2, uncompressed header; Annex B superframes).

A depacketized VP9 picture may be a superframe: several frames (a hidden alt-ref and the shown frame, or the
spatial layers of an SVC picture as LiveKit forwards them) with an index at its end. A picture is a keyframe
when its first frame is a KEY_FRAME; its size is the largest frame size it states (the top spatial layer sent).

libwebrtc marks every spatial layer of an SVC picture shown. libvpx (browsers) outputs only a superframe's last
frame, but FFmpeg's own decoder outputs each shown frame, so ``show_top_layer_only`` marks the lower layers hidden
(6.2: ``show_frame`` 0, and for an inter frame the ``intra_only`` bit that the syntax then carries). The decoded
pictures are unchanged: every layer is error resilient (the previous frame's visibility is not used), as in
Chromium's L3T3_KEY.
"""

from __future__ import annotations

_SYNC_CODE = 0x498342
_CS_RGB = 7


_LF_DELTAS = 4 + 2  # loop_filter ref_deltas, mode_deltas
_SEG_PROBS, _SEG_PRED_PROBS, _SEGMENTS = 7, 3, 8
_SEG_FEATURE_BITS = ((8, True), (6, True), (2, False), (0, False))  # (bits, signed) per feature
_MIN_TILE_WIDTH_B64, _MAX_TILE_WIDTH_B64 = 4, 64


class _Bits:
    """MSB-first bit reader over one frame's uncompressed header."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def pos(self) -> int:
        return self._pos

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._pos >> 3
            if byte >= len(self._data):
                raise ValueError("VP9 header truncated")
            value = (value << 1) | ((self._data[byte] >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value


def split_superframe(data: bytes) -> list[bytes]:
    """The frames of a superframe (Annex B index at the end), or ``[data]`` for a single frame."""
    if not data:
        return []
    marker = data[-1]
    if marker & 0xE0 != 0xC0:
        return [data]
    frames = (marker & 0x07) + 1
    size_bytes = ((marker >> 3) & 0x03) + 1
    index_size = 2 + size_bytes * frames
    if len(data) < index_size or data[-index_size] != marker:
        return [data]
    out, offset, pos = [], 0, len(data) - index_size + 1
    for _ in range(frames):
        size = int.from_bytes(data[pos:pos + size_bytes], "little")
        pos += size_bytes
        if size == 0 or offset + size > len(data) - index_size:
            return [data]
        out.append(data[offset:offset + size])
        offset += size
    return out


def _profile(bits: _Bits) -> int:
    if bits.read(2) != 2:
        raise ValueError("not a VP9 frame (frame marker)")
    low, high = bits.read(1), bits.read(1)
    profile = (high << 1) | low
    if profile == 3:
        bits.read(1)
    return profile


def _skip_color_config(bits: _Bits, profile: int) -> None:
    if profile >= 2:
        bits.read(1)  # ten_or_twelve_bit
    if bits.read(3) != _CS_RGB:
        bits.read(1)  # color_range
        if profile in (1, 3):
            bits.read(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        bits.read(1)


def _frame_size(bits: _Bits) -> tuple[int, int]:
    return bits.read(16) + 1, bits.read(16) + 1


def frame_info(frame: bytes) -> tuple[bool, tuple[int, int] | None]:
    """(is a KEY_FRAME, the size the frame states or None when it takes a reference's size) of one frame."""
    bits = _Bits(frame)
    profile = _profile(bits)
    if bits.read(1):  # show_existing_frame
        return False, None
    key = bits.read(1) == 0
    show_frame, error_resilient = bits.read(1), bits.read(1)
    if key:
        if bits.read(24) != _SYNC_CODE:
            raise ValueError("VP9 keyframe without sync code")
        _skip_color_config(bits, profile)
        return True, _frame_size(bits)
    intra_only = bits.read(1) if not show_frame else 0
    if not error_resilient:
        bits.read(2)  # reset_frame_context
    if intra_only:
        if bits.read(24) != _SYNC_CODE:
            raise ValueError("VP9 intra-only frame without sync code")
        if profile > 0:
            _skip_color_config(bits, profile)
        bits.read(8)  # refresh_frame_flags
        return False, _frame_size(bits)
    bits.read(8 + 3 * 4)  # refresh_frame_flags, (ref_frame_idx, sign_bias) x 3
    for _ in range(3):
        if bits.read(1):  # found_ref: the size of that reference
            return False, None
    return False, _frame_size(bits)


def is_keyframe(data: bytes) -> bool:
    """True when the picture's first frame is a VP9 KEY_FRAME."""
    frames = split_superframe(data)
    try:
        return bool(frames) and frame_info(frames[0])[0]
    except ValueError:
        return False


def dimensions(data: bytes) -> tuple[int, int] | None:
    """The largest (width, height) a keyframe picture states (its top spatial layer); None for other pictures."""
    frames = split_superframe(data)
    try:
        if not frames or not frame_info(frames[0])[0]:
            return None
        sizes = [size for size in (frame_info(f)[1] for f in frames) if size is not None]
    except ValueError:
        return None
    return max(sizes, key=lambda s: s[0] * s[1]) if sizes else None


def show_top_layer_only(picture: bytes) -> bytes:
    """The superframe with every frame but the last marked hidden; unchanged unless every frame can be (see above)."""
    frames = split_superframe(picture)
    if len(frames) < 2:
        return picture
    hidden = [_hidden(frame) for frame in frames[:-1]]
    if any(frame is None for frame in hidden):
        return picture
    return join_superframe([frame for frame in hidden if frame is not None] + frames[-1:])


def join_superframe(frames: list[bytes]) -> bytes:
    """Frames with an Annex B superframe index (sizes in the fewest bytes that hold the largest)."""
    magnitude = next(n for n in range(1, 5) if max(map(len, frames)) < 1 << (8 * n))
    marker = bytes([0xC0 | (magnitude - 1) << 3 | (len(frames) - 1)])
    return b"".join(frames) + marker + b"".join(len(f).to_bytes(magnitude, "little") for f in frames) + marker


def _hidden(frame: bytes) -> bytes | None:
    """``frame`` with show_frame 0 (and intra_only 0 inserted for an inter frame); None when not rewritable."""
    try:
        layout = _header_layout(frame)
    except ValueError:
        return None
    if layout is None:
        return None
    show, inserted_at, end, key = layout
    header = (end + 7) // 8
    bits = "".join(f"{byte:08b}" for byte in frame[:header])[:end]
    bits = bits[:show] + "0" + bits[show + 1:]
    if not key:
        bits = bits[:inserted_at] + "0" + bits[inserted_at:]
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") + frame[header:]


def _header_layout(frame: bytes) -> tuple[int, int, int, bool] | None:
    """(show_frame's bit, the bit after error_resilient_mode, the uncompressed header's end in bits, KEY_FRAME) of
    a shown, error-resilient frame whose size it states; None for other frames."""
    bits = _Bits(frame)
    profile = _profile(bits)
    if bits.read(1):  # show_existing_frame
        return None
    key = bits.read(1) == 0
    show = bits.pos
    if not bits.read(1) or not bits.read(1):  # show_frame, error_resilient_mode
        return None
    after_error_resilient = bits.pos
    if key:
        if bits.read(24) != _SYNC_CODE:
            raise ValueError("VP9 keyframe without sync code")
        _skip_color_config(bits, profile)
    else:
        bits.read(8 + 3 * 4)  # refresh_frame_flags, (ref_frame_idx, sign_bias) x 3
        if any(bits.read(1) for _ in range(3)):  # found_ref: the size is a reference's, unknown here
            return None
    width, _ = _frame_size(bits)
    if bits.read(1):  # render_and_frame_size_different
        bits.read(32)
    if not key:
        bits.read(1)  # allow_high_precision_mv
        if not bits.read(1):  # is_filter_switchable
            bits.read(2)
    bits.read(2)  # frame_context_idx (error resilient: no refresh_frame_context, frame_parallel_decoding_mode)
    _skip_loop_filter(bits)
    bits.read(8)  # base_q_idx
    for _ in range(3):
        if bits.read(1):
            bits.read(5)  # delta_q
    _skip_segmentation(bits)
    _skip_tile_info(bits, width)
    bits.read(16)  # header_size_in_bytes
    return show, after_error_resilient, bits.pos, key


def _skip_loop_filter(bits: _Bits) -> None:
    bits.read(6 + 3)  # loop_filter_level, loop_filter_sharpness
    if bits.read(1) and bits.read(1):  # loop_filter_delta_enabled, loop_filter_delta_update
        for _ in range(_LF_DELTAS):
            if bits.read(1):
                bits.read(7)


def _skip_segmentation(bits: _Bits) -> None:
    if not bits.read(1):  # segmentation_enabled
        return
    if bits.read(1):  # segmentation_update_map
        for _ in range(_SEG_PROBS):
            if bits.read(1):
                bits.read(8)
        if bits.read(1):  # segmentation_temporal_update
            for _ in range(_SEG_PRED_PROBS):
                if bits.read(1):
                    bits.read(8)
    if bits.read(1):  # segmentation_update_data
        bits.read(1)  # segmentation_abs_or_delta_update
        for _ in range(_SEGMENTS):
            for size, signed in _SEG_FEATURE_BITS:
                if bits.read(1):
                    bits.read(size + signed)


def _skip_tile_info(bits: _Bits, width: int) -> None:
    sb64_cols = (((width + 7) >> 3) + 7) >> 3
    min_log2 = 0
    while _MAX_TILE_WIDTH_B64 << min_log2 < sb64_cols:
        min_log2 += 1
    max_log2 = 1
    while sb64_cols >> max_log2 >= _MIN_TILE_WIDTH_B64:
        max_log2 += 1
    log2 = min_log2
    while log2 < max_log2 - 1 and bits.read(1):  # increment_tile_cols_log2
        log2 += 1
    if bits.read(1):  # tile_rows_log2
        bits.read(1)
