"""Backoff policy and send pacing, as pure arithmetic."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from feedd.feed.backoff import Backoff
from feedd.feed.ratelimit import SlidingWindowLimiter


def test_backoff_doubles_within_jitter_and_stops_at_the_ceiling() -> None:
    backoff = Backoff(initial=1.0, ceiling=10.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    for n, delay in enumerate(delays):
        top = min(10.0, 2.0**n)
        assert top / 2 <= delay <= top
    assert backoff.failures == 8


def test_backoff_jitter_is_uniform_over_the_upper_half_of_the_delay() -> None:
    """Half-jitter: uniform in [top/2, top], so reconnects spread apart but never come early."""
    rng = random.Random(3)
    delays = []
    for _ in range(4000):
        backoff = Backoff(1.0, 60.0, rng=rng, failures=3)  # top = 8 s
        delays.append(backoff.next_delay())
    assert min(delays) >= 4.0 and max(delays) <= 8.0
    assert min(delays) < 4.05 and max(delays) > 7.95  # the whole band is used
    quarters = [sum(4.0 + q <= d < 5.0 + q for d in delays) for q in range(4)]
    assert all(900 <= n <= 1100 for n in quarters), quarters  # evenly


def test_backoff_reset_starts_from_the_initial_delay() -> None:
    backoff = Backoff(initial=2.0, ceiling=100.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert 1.0 <= backoff.next_delay() <= 2.0


def test_backoff_survives_very_many_failures() -> None:
    backoff = Backoff(initial=1.0, ceiling=300.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert 150.0 <= delay <= 300.0


def test_limiter_allows_limit_sends_in_any_window() -> None:
    limiter = SlidingWindowLimiter(3, window=1.0)
    for t in (0.0, 0.1, 0.2):
        assert limiter.delay(t) == 0
        limiter.record(t)
    assert limiter.delay(0.3) == pytest.approx(0.7)
    assert limiter.delay(1.0) == 0  # the send at 0.0 has left the window


def test_limiter_rejects_a_zero_limit() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SlidingWindowLimiter(0)


async def test_limiter_paces_a_burst_to_the_limit(autojump_clock: trio.testing.MockClock) -> None:
    limiter = SlidingWindowLimiter(4, window=1.0)
    sent: list[float] = []
    for _ in range(10):
        await limiter.acquire()
        sent.append(trio.current_time())
    for i in range(len(sent) - 4):
        assert sent[i + 4] - sent[i] >= 1.0 - 1e-9


async def test_a_shared_limiter_paces_every_sender_together_taking_turns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a per-address limit (Coinbase: 8 per second per IP) spans the connections sharing it
    limiter = SlidingWindowLimiter(4, window=1.0)
    sent: list[tuple[float, str]] = []

    async def sender(name: str) -> None:
        for _ in range(8):
            await limiter.acquire()
            sent.append((trio.current_time(), name))

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(sender, name)
    times = [t for t, _ in sent]
    assert len(times) == 24
    for i in range(len(times) - 4):
        assert times[i + 4] - times[i] >= 1.0 - 1e-9
    # each sender got its turn in every second: none waited for another to finish
    assert {name for _, name in sent[4:8]} == {"a", "b", "c"}
