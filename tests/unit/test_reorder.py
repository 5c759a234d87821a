"""Audio packets leave in sequence order at once; a hole waits for at most ``patience`` packets."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from trackegress.room.reorder import AudioReorderBuffer


@dataclass
class Packet:
    sequence_number: int
    timestamp: int
    _data: bytes


def run(seqs: list[int], patience: int = 3, flush: bool = False) -> tuple[list[int], AudioReorderBuffer]:
    out: list[int] = []
    buffer = AudioReorderBuffer(lambda data, ts: out.append(ts // 960), patience)
    for seq in seqs:
        buffer.add(Packet(seq & 0xFFFF, seq * 960, b"x"))
    if flush:
        buffer.flush()
    return out, buffer


def test_in_order_packets_leave_immediately() -> None:
    out: list[int] = []
    buffer = AudioReorderBuffer(lambda data, ts: out.append(ts))
    assert buffer.add(Packet(7, 100, b"a")) == (False, None)
    assert out == [100]


def test_reordered_packets_are_put_back_in_order() -> None:
    out, buffer = run([0, 2, 1, 3])
    assert out == [0, 1, 2, 3] and buffer.lost == 0


def test_a_hole_is_given_up_after_patience_packets() -> None:
    out, buffer = run([0, 2, 3, 4])
    assert out == [0]
    out, buffer = run([0, 2, 3, 4, 5])
    assert out == [0, 2, 3, 4, 5] and buffer.lost == 1


def test_late_and_duplicate_packets_are_dropped() -> None:
    out, buffer = run([0, 1, 2, 1, 2, 3])
    assert out == [0, 1, 2, 3] and buffer.late == 2


def test_sequence_numbers_wrap() -> None:
    out, _ = run([65534, 65535, 65537, 65536])
    assert out == [65534, 65535, 65536, 65537]


def test_flush_releases_what_is_held() -> None:
    out, buffer = run([0, 2, 3], flush=True)
    assert out == [0, 2, 3] and buffer.lost == 1


@given(st.permutations(list(range(40))))
def test_output_is_increasing_and_complete_after_flush(order: list[int]) -> None:
    out, buffer = run(order, flush=True)
    assert out == sorted(out)
    assert len(out) + buffer.late == 40
