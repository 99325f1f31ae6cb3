"""The rotation hand-over: two connections' records become one stream, gap-free and in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from feedd.feed.overlap import Overlap
from feedd.model import TICKER, MarketData, trade_record

T0 = datetime(2024, 8, 8, 23, 54, 15, tzinfo=UTC)


def trade(n: int, symbol: str = "BTCUSDT", trade_id: str | None = "") -> MarketData:
    at = T0 + timedelta(milliseconds=n)
    return trade_record("binance", symbol, 100.0 + n, 1.0, at, at, "buy",
                        str(n) if trade_id == "" else trade_id)


def ticker(n: int, symbol: str = "BTCUSDT") -> MarketData:
    at = T0 + timedelta(seconds=n)
    return MarketData("binance", symbol, TICKER, 100.0 + n, 5.0, at, at)


def ids(records: list[MarketData]) -> list[str | None]:
    return [r.trade_id for r in records]


def test_the_replacement_is_held_until_the_old_connection_reaches_it_then_handed_over_in_order() -> None:
    overlap = Overlap()
    assert ids(overlap.old([trade(1), trade(2)])) == ["1", "2"]
    assert overlap.new([trade(5), trade(6)]) == []  # ahead of the old one: held
    assert not overlap.caught_up
    assert ids(overlap.old([trade(3), trade(4)])) == ["3", "4"]
    assert not overlap.caught_up
    assert ids(overlap.old([trade(5)])) == ["5"]  # the old one reached the replacement's start
    assert overlap.caught_up
    assert ids(overlap.switch()) == ["6"]  # what it held beyond that
    assert ids(overlap.new([trade(6), trade(7)])) == ["7"]
    assert overlap.old([trade(8)]) == []  # after the hand-over only the replacement counts
    assert overlap.dropped == 3  # copies of 5 and 6, and the old one's 8 after the hand-over


def test_a_replacement_behind_the_old_connection_is_caught_up_at_once() -> None:
    overlap = Overlap()
    overlap.old([trade(1), trade(2), trade(3)])
    overlap.new([trade(2), trade(3)])
    assert overlap.caught_up
    assert overlap.switch() == []
    assert ids(overlap.new([trade(4)])) == ["4"]


def test_every_symbol_must_be_reached_before_the_hand_over() -> None:
    overlap = Overlap()
    overlap.old([trade(1), trade(1, "ETHUSDT")])
    overlap.new([trade(3), trade(3, "ETHUSDT")])
    overlap.old([trade(2), trade(3)])
    assert not overlap.caught_up  # ETHUSDT not yet
    overlap.old([trade(2, "ETHUSDT"), trade(3, "ETHUSDT")])
    assert overlap.caught_up
    assert overlap.switch() == []


def test_tickers_newest_exchange_time_wins() -> None:
    overlap = Overlap()
    assert overlap.old([ticker(1)]) == [ticker(1)]
    overlap.new([ticker(3)])
    assert not overlap.caught_up
    assert overlap.old([ticker(2), ticker(3)]) == [ticker(2), ticker(3)]
    assert overlap.caught_up
    assert overlap.switch() == []  # the held ticker is not newer than the one delivered
    assert overlap.new([ticker(3), ticker(4)]) == [ticker(4)]


def test_a_hand_over_before_the_old_connection_caught_up_delivers_everything_held() -> None:
    overlap = Overlap()
    overlap.old([trade(1)])
    overlap.new([trade(5), trade(6)])
    assert ids(overlap.switch()) == ["5", "6"]  # 2 to 4 never came: the caller logs it


def test_trades_without_an_id_are_the_same_trade_by_time_price_size_and_side() -> None:
    overlap = Overlap()
    assert len(overlap.old([trade(1, trade_id=None)])) == 1
    overlap.new([trade(1, trade_id=None), trade(2, trade_id=None)])
    assert overlap.caught_up
    assert [r.price for r in overlap.switch()] == [102.0]


def test_remembered_trades_are_bounded() -> None:
    overlap = Overlap(capacity=10)
    overlap.old([trade(n) for n in range(100)])
    assert len(overlap._seen) == 10
