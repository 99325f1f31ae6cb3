"""The per-second counter history behind feedd top's sparklines and the status page's chart."""

from __future__ import annotations

import orjson
import pytest
import trio

from feedd.control.history import History, Totals, quantile

BOUNDS = (0.001, 0.01, 0.1)


def totals(messages: int, records: int, rejected: int = 0, delays: tuple[float, ...] = ()) -> Totals:
    return Totals(messages, records, rejected, delays)


def test_the_history_holds_per_second_differences_newest_last() -> None:
    history = History(BOUNDS)
    for n in (0, 10, 25, 27):
        history.sample({"binance": totals(2 * n, n, n // 10)})
    assert orjson.dumps(history.snapshot()).startswith(b'{"interval":1,')
    assert history.snapshot() == {
        "interval": 1,
        "venues": {"binance": {"records": [10, 15, 2], "messages": [20, 30, 4], "rejected": [1, 1, 0]}},
    }


def test_the_ring_keeps_only_its_depth() -> None:
    history = History(BOUNDS, depth=3)
    for n in range(10):
        history.sample({"bybit": totals(n * n, n * n)})
    assert history.snapshot()["venues"]["bybit"]["records"] == [13, 15, 17]


def test_a_venue_gone_from_the_totals_is_forgotten_and_a_new_one_starts_empty() -> None:
    history = History(BOUNDS)
    history.sample({"binance": totals(0, 0)})
    history.sample({"binance": totals(5, 5), "coinbase": totals(100, 100)})
    history.sample({"coinbase": totals(103, 103)})
    assert history.snapshot()["venues"] == {"coinbase": {"records": [3], "messages": [3], "rejected": [0]}}


def test_totals_that_go_backwards_give_zero_not_a_negative_rate() -> None:
    history = History(BOUNDS)
    history.sample({"binance": totals(50, 50)})
    history.sample({"binance": totals(10, 10)})
    assert history.snapshot()["venues"]["binance"]["records"] == [0]


def test_quantile_interpolates_inside_the_bucket_it_falls_in() -> None:
    # 100 observations: 50 under 1 ms, 40 in (1 ms, 10 ms], 10 in (10 ms, 100 ms]
    cumulative = (50, 90, 100, 100)
    assert quantile(0.5, BOUNDS, cumulative) == pytest.approx(0.001)
    assert quantile(0.7, BOUNDS, cumulative) == pytest.approx(0.001 + 0.009 * 20 / 40)
    assert quantile(0.99, BOUNDS, cumulative) == pytest.approx(0.01 + 0.09 * 9 / 10)


def test_quantile_beyond_the_last_bound_is_the_last_bound() -> None:
    assert quantile(0.99, BOUNDS, (0, 0, 0, 10)) == 0.1


def test_latency_covers_only_the_window() -> None:
    history = History(BOUNDS, latency_window=2)
    history.sample({"binance": totals(0, 0, delays=(0, 0, 0, 0))})
    history.sample({"binance": totals(0, 0, delays=(0, 0, 100, 100))})  # 100 slow ones, then
    history.sample({"binance": totals(0, 0, delays=(10, 10, 110, 110))})  # 10 fast
    history.sample({"binance": totals(0, 0, delays=(20, 20, 120, 120))})  # 10 fast
    latency = history.latency("binance")
    assert latency is not None
    assert latency["observations"] == 20
    assert latency["window"] == 2.0
    assert latency["p99"] <= 0.001


def test_latency_counts_a_venue_whose_first_delay_came_within_the_window() -> None:
    history = History(BOUNDS)
    history.sample({"coinbase": totals(0, 0)})  # no observation yet: no histogram child
    history.sample({"coinbase": totals(1, 1, delays=(0, 4, 4, 4))})
    latency = history.latency("coinbase")
    assert latency is not None
    assert latency["observations"] == 4
    assert 0.001 < latency["p50"] <= 0.01


def test_no_latency_without_observations() -> None:
    history = History(BOUNDS)
    history.sample({"bybit": totals(0, 0)})
    assert history.latency("bybit") is None
    history.sample({"bybit": totals(3, 3)})
    assert history.latency("bybit") is None
    assert history.latency("unknown") is None


async def test_run_samples_once_a_second(autojump_clock: trio.abc.Clock) -> None:
    history = History(BOUNDS)
    count = 0

    def read() -> dict[str, Totals]:
        nonlocal count
        count += 1
        return {"binance": totals(count * 7, count * 3)}

    async with trio.open_nursery() as nursery:
        await nursery.start(history.run, read)
        start = trio.current_time()
        await trio.sleep(10.5)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start == pytest.approx(10.5)
    assert history.snapshot()["venues"]["binance"]["records"] == [3] * 10
