"""The backfiller's own rules, without a simulator: each trade once, a gap older than the REST
keeps is reported lost without asking, and a symbol is never held beyond ``backfill_hold``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio
import trio.testing

from feedd.exchanges.binance import BinanceSpot
from feedd.feed.backfill import Backfiller, BackfillSettings
from feedd.feed.status import VenueStatus
from feedd.feed.validate import Validator
from feedd.model import Backfilled, Ingress, MarketData, trade_record

T0 = datetime(2026, 12, 7, 12, tzinfo=UTC)


def trade(n: int, at: datetime = T0, symbol: str = "BTCUSDT") -> MarketData:
    return trade_record("binance", symbol, 100.0, 1.0, at, at, "buy", str(n))


def backfiller(rest_url: str = "http://127.0.0.1:9", **settings: float) -> tuple[
    Backfiller, VenueStatus, trio.MemoryReceiveChannel[Ingress]
]:
    send, receive = trio.open_memory_channel[Ingress](100)
    status = VenueStatus("binance")
    made = Backfiller(BinanceSpot(), "binance", rest_url, send, status, Validator({"BTCUSDT", "ETHUSDT"}),
                      BackfillSettings(**settings))  # type: ignore[arg-type]
    return made, status, receive


def test_a_trade_delivered_already_is_dropped_and_counted() -> None:
    made, status, _ = backfiller()
    assert made.sift([trade(1), trade(2)]) == [trade(1), trade(2)]
    assert made.sift([trade(2), trade(3), trade(1)]) == [trade(3)]  # e.g. a rotation's overlap
    assert status.duplicates == 2


def test_records_other_than_trades_and_other_symbols_pass_untouched() -> None:
    made, _, _ = backfiller()
    ticker = MarketData("binance", "BTCUSDT", "ticker", 1.0, 1.0, T0, T0)
    assert made.sift([trade(5), ticker, trade(1, symbol="ETHUSDT")]) == [
        trade(5), ticker, trade(1, symbol="ETHUSDT")
    ]


def test_after_forget_a_resubscribed_symbol_starts_afresh() -> None:
    made, status, _ = backfiller()
    made.sift([trade(10)])
    made.forget("BTCUSDT")
    assert made.sift([trade(5_000)]) == [trade(5_000)]  # no gap 11..4999 to fetch
    assert status.lost_trades == 0


async def test_a_gap_older_than_max_age_is_lost_without_a_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    made, status, receive = backfiller(max_age=60.0)
    async with trio.open_nursery() as nursery:
        made.attach(nursery)
        made.sift([trade(1)])
        late = trade(11, T0 + timedelta(minutes=5))
        assert made.sift([late]) == [late]  # not held: nothing will be fetched
    event = receive.receive_nowait()
    assert isinstance(event, Backfilled)
    assert (event.recovered, event.lost, event.missing) == (0, 9, (2, 10))
    assert event.reason is not None and "backfill_max_age" in event.reason
    assert status.lost_trades == 9


async def test_a_hanging_rest_holds_the_symbol_only_for_backfill_hold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hang(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, hang, 0)
        port = listeners[0].socket.getsockname()[1]
        made, status, receive = backfiller(f"http://127.0.0.1:{port}", hold=2.0)
        made.attach(nursery)
        made.sift([trade(1)])
        start = trio.current_time()
        assert made.sift([trade(5)]) == []  # held
        assert made.sift([trade(6)]) == []
        released = await receive.receive()
        assert trio.current_time() - start == 2.0
        assert released == [trade(5), trade(6)]
        await trio.testing.wait_all_tasks_blocked()  # the release is over
        assert made.sift([trade(7)]) == [trade(7)]  # no longer held
        event = await receive.receive()  # the fetch timed out later: reported, late
        assert isinstance(event, Backfilled)
        assert (event.recovered, event.lost, event.late) == (0, 3, True)
        assert event.reason is not None and event.reason.startswith("REST unavailable")
        await made.aclose()
        nursery.cancel_scope.cancel()
    assert status.lost_trades == 3
