"""The hot path's record constructors make exactly what the class's own constructor makes."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs

from feedd.model import QUOTE, TRADE, MarketData, quote_record, trade_record

T0 = datetime(2024, 8, 8, 6, 53, 2, 668000, tzinfo=UTC)
T1 = datetime(2024, 8, 8, 6, 53, 2, 668208, tzinfo=UTC)


def test_trade_record_fills_every_field_as_the_attrs_constructor_does() -> None:
    made = trade_record("binance", "BTCUSDT", 61012.34, 0.5, T0, T1, "sell", "17")
    expected = MarketData("binance", "BTCUSDT", TRADE, 61012.34, 0.5, T0, T1, side="sell", trade_id="17")
    assert made == expected
    assert hash(made) == hash(expected)
    assert attrs.asdict(made) == attrs.asdict(expected)  # every slot set, defaults included
    assert attrs.evolve(made, price=1.0).price == 1.0


def test_quote_record_is_the_mid_with_both_sides_and_no_volume() -> None:
    made = quote_record("binance", "BTCUSDT", 100.0, 2.0, 102.0, 3.0, T0, T1)
    expected = MarketData("binance", "BTCUSDT", QUOTE, 101.0, 0.0, T0, T1, bid=100.0, ask=102.0,
                          bid_size=2.0, ask_size=3.0)
    assert attrs.asdict(made) == attrs.asdict(expected)
    assert made.backfilled is False
