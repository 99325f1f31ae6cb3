"""Quote conflation: at most one quote per symbol per interval, always the newest; nothing else held."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio
import trio.testing

from feedd.feed.conflate import Conflator, flush_every
from feedd.feed.status import VenueStatus
from feedd.model import Ingress, MarketData, quote_record, trade_record

T0 = datetime(2026, 12, 7, tzinfo=UTC)


def quote(symbol: str, bid: float, n: int = 0) -> MarketData:
    at = T0 + timedelta(milliseconds=n)
    return quote_record("binance", symbol, bid, 1.0, bid + 1, 2.0, at, at)


def trade(symbol: str, n: int) -> MarketData:
    return trade_record("binance", symbol, 100.0, 1.0, T0, T0, "buy", str(n))


def test_absorb_keeps_the_newest_quote_per_symbol_and_passes_the_rest_in_order() -> None:
    conflator = Conflator()
    rest = conflator.absorb([quote("A", 1), trade("A", 1), quote("B", 5), quote("A", 2), trade("B", 2)])
    assert rest == [trade("A", 1), trade("B", 2)]
    assert conflator.take() == [quote("A", 2), quote("B", 5)]
    assert conflator.take() == []  # nothing pending after a take


def test_a_later_batch_replaces_a_pending_quote() -> None:
    conflator = Conflator()
    conflator.absorb([quote("A", 1)])
    conflator.absorb([quote("A", 3)])
    assert len(conflator) == 1
    assert conflator.take() == [quote("A", 3)]


async def test_the_flush_sends_one_newest_quote_per_symbol_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conflator = Conflator()
    status = VenueStatus("binance")
    send, receive = trio.open_memory_channel[Ingress](100)
    got: list[tuple[float, Ingress]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush_every, 0.1, conflator, send, status)
        start = trio.current_time()
        # 30 quotes of A and 3 of B over 0.3 s, every 10 ms (off the flush grid by 5 ms)
        await trio.sleep(0.005)
        for n in range(30):
            batch = [quote("A", n, n)] + ([quote("B", 100 + n, n)] if n % 10 == 0 else [])
            assert conflator.absorb(batch) == []
            await trio.sleep(0.01)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    send.close()
    async for batch in receive:
        got.append((trio.current_time() - start, batch))
    flushed = [b for _, b in got]
    assert all(isinstance(b, list) for b in flushed)
    # three intervals carried quotes: A's newest of each (9, 19, 29), B's (100, 110, 120)
    bids = [[(r.symbol, r.bid) for r in b] for b in flushed if isinstance(b, list)]
    assert bids == [[("A", 9), ("B", 100)], [("A", 19), ("B", 110)], [("A", 29), ("B", 120)]]
    assert status.records == 6


async def test_an_idle_interval_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    conflator = Conflator()
    send, receive = trio.open_memory_channel[Ingress](10)
    with trio.move_on_after(1.0):
        await flush_every(0.1, conflator, send, VenueStatus("binance"))
    assert receive.statistics().current_buffer_used == 0
