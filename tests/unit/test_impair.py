"""The impairment relay's model (seeded, so counts are exact) and the relay itself on loopback UDP."""

from __future__ import annotations

import itertools
import socket
import threading

import pytest
from support.impair import GilbertElliott, Impairment, Profile, UdpRelay


def run(profile: Profile, packets: int = 10_000, seed: int = 7, interval: float = 0.02, size: int = 1000) -> tuple[
    Impairment, list[list[float]]
]:
    model = Impairment(profile, seed)
    return model, [model.decide(i * interval, size) for i in range(packets)]


def test_clean_profile_passes_everything_at_once() -> None:
    model, out = run(Profile(), 100)
    assert out == [[i * 0.02] for i in range(100)]
    assert model.counters.dropped == 0


def test_reseeding_mid_burst_repeats_a_fresh_models_losses() -> None:
    profile = Profile(burst=GilbertElliott.bursty(0.03, 3))
    used, _ = run(profile, 5000, seed=3)  # left in whatever state 5000 packets put it
    used.reseed(29)
    fresh = Impairment(profile, 29)
    assert [used.decide(i, 100) for i in range(2000)] == [fresh.decide(i, 100) for i in range(2000)]


def test_random_loss_is_seeded_and_near_its_rate() -> None:
    model, out = run(Profile(loss=0.03))
    lost = sum(not copies for copies in out)
    assert lost == model.counters.lost == run(Profile(loss=0.03))[0].counters.lost  # same seed, same losses
    assert lost != run(Profile(loss=0.03), seed=8)[0].counters.lost
    assert 250 <= lost <= 350  # 3 % of 10 000, ±5 sigma
    assert model.counters.bursts > 0.9 * lost  # random losses are mostly isolated


def test_gilbert_elliott_loss_comes_in_bursts() -> None:
    ge = GilbertElliott.bursty(mean_loss=0.03, mean_burst=4)
    assert ge.mean_loss == pytest.approx(0.03)
    model, out = run(Profile(burst=ge), 50_000)
    c = model.counters
    assert 0.02 <= c.lost / c.packets <= 0.04
    assert 3.0 <= c.lost / c.bursts <= 5.0  # mean burst length ≈ 4
    runs, current = [], 0
    for copies in out:
        if not copies:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    assert len(runs) == c.bursts - (1 if current else 0)
    assert max(runs) >= 10


def test_jitter_delays_within_bounds_and_keeps_order() -> None:
    _, out = run(Profile(delay=0.005, jitter=0.030), 2000)
    times = [copies[0] for copies in out]
    delays = [t - i * 0.02 for i, t in enumerate(times)]
    assert times == sorted(times)
    assert min(delays) >= 0.005
    assert max(delays) < 0.005 + 0.030 + 0.02  # at most one packet interval of order-keeping wait
    assert max(delays) > 0.030  # the spread is really used


def test_reordering_lets_later_packets_overtake() -> None:
    model, out = run(Profile(reorder=0.05, reorder_delay=0.05), 2000)
    times = [copies[0] for copies in out]
    later_min = [min(times[i + 1 :]) for i in range(len(times) - 1)]
    overtaken = sum(t > m for t, m in zip(times, later_min, strict=False))
    assert overtaken <= model.counters.reordered
    assert overtaken >= 0.9 * model.counters.reordered
    assert 60 <= model.counters.reordered <= 140


def test_duplication_sends_two_copies() -> None:
    model, out = run(Profile(duplicate=0.1), 1000)
    doubles = sum(len(copies) == 2 for copies in out)
    assert doubles == model.counters.duplicated
    assert 60 <= doubles <= 140


def test_bandwidth_cap_spaces_packets_and_drops_when_the_queue_is_full() -> None:
    # 1000-byte packets every 1 ms (8 Mbit/s offered) into a 4 Mbit/s link with a 50 ms queue.
    model, out = run(Profile(rate=4_000_000, queue=0.05), 1000, interval=0.001)
    sent = [copies[0] for copies in out if copies]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) == pytest.approx(0.002)  # 8000 bits at 4 Mbit/s
    assert model.counters.overflow == 1000 - len(sent)
    assert 0.45 <= model.counters.overflow / 1000 <= 0.55
    assert max(t - i * 0.001 for i, t in ((i, c[0]) for i, c in enumerate(out) if c)) <= 0.05 + 0.002


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)

    def serve() -> None:
        while True:
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if data == b"stop":
                return
            sock.sendto(data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock, thread


def _probe(relay: UdpRelay, count: int) -> list[int]:
    """Send ``count`` numbered datagrams through the relay to the echo server; the numbers that came back."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    got: list[int] = []

    def receive(timeout: float) -> None:
        client.settimeout(timeout)
        try:
            while True:
                got.append(int.from_bytes(client.recv(2048)[:4], "big"))
        except (TimeoutError, BlockingIOError):
            pass

    for i in range(count):
        client.sendto(i.to_bytes(4, "big") + bytes(200), relay.listen)
        receive(0.001)
    receive(0.5)
    client.close()
    return got


def test_relay_forwards_both_ways_and_impairs_only_the_selected_direction() -> None:
    echo, thread = _echo_server()
    server = echo.getsockname()
    with UdpRelay(("127.0.0.2", _free_udp()), server,
                  down=Profile(loss=0.1), seed=3) as relay:
        got = _probe(relay, 500)
        assert relay.down.counters.packets == 500
        assert len(got) == 500 - relay.down.counters.lost
        assert 25 <= relay.down.counters.lost <= 80
        assert relay.up.counters.packets == 0  # the clean direction bypasses the model
        assert relay.forwarded == {"up": 500, "down": len(got)}
        assert len(relay.clients) == 1
    echo.sendto(b"stop", server)
    thread.join(2)
    echo.close()


def test_relay_jitter_reorders_nothing_and_adds_bounded_delay() -> None:
    echo, thread = _echo_server()
    server = echo.getsockname()
    with UdpRelay(("127.0.0.1", _free_udp()), server, down=Profile(jitter=0.03), seed=1) as relay:
        got = _probe(relay, 200)
    assert got == list(range(200))
    echo.sendto(b"stop", server)
    thread.join(2)
    echo.close()


def _free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
