"""What a record must satisfy before anyone downstream sees it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest

from feedd.feed.validate import Validator
from feedd.model import MarketData

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
GOOD = MarketData("binance", "BTCUSDT", "trade", 61837.63, 0.02, NOW, NOW, side="buy", trade_id="1")


def test_good_record_passes() -> None:
    assert Validator({"BTCUSDT"}).reason(GOOD) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"price": float("nan")}, "non_finite_price"),
        ({"price": float("inf")}, "non_finite_price"),
        ({"price": 0.0}, "non_positive_price"),
        ({"price": -1.0}, "non_positive_price"),
        ({"volume": -0.1}, "negative_volume"),
        ({"volume": float("nan")}, "non_finite_volume"),
        ({"timestamp": NOW - timedelta(hours=1)}, "timestamp_skew"),
        ({"timestamp": NOW + timedelta(minutes=6)}, "timestamp_skew"),
        ({"symbol": "ETHUSDT"}, "unknown_symbol"),
        ({"bid": float("nan")}, "non_finite_field"),
    ],
)
def test_bad_record_is_refused_with_its_reason(change: dict[str, object], reason: str) -> None:
    assert Validator({"BTCUSDT"}).reason(attrs.evolve(GOOD, **change)) == reason


def test_zero_volume_ticker_is_accepted() -> None:
    ticker = attrs.evolve(GOOD, kind="ticker", volume=0.0, side=None, trade_id=None)
    assert Validator({"BTCUSDT"}).reason(ticker) is None


def test_known_symbols_are_read_live() -> None:
    symbols: set[str] = set()
    validator = Validator(symbols)
    assert validator.reason(GOOD) == "unknown_symbol"
    symbols.add("BTCUSDT")
    assert validator.reason(GOOD) is None


def test_the_skew_window_is_five_minutes_either_way_of_each_records_own_receive_time() -> None:
    validator = Validator({"BTCUSDT"})  # one validator: its window follows each received_at
    edge, over = timedelta(minutes=5), timedelta(minutes=5, microseconds=1)
    for received_at in (NOW, NOW + timedelta(hours=2), NOW):
        at = attrs.evolve(GOOD, received_at=received_at)
        assert validator.reason(attrs.evolve(at, timestamp=received_at - edge)) is None
        assert validator.reason(attrs.evolve(at, timestamp=received_at + edge)) is None
        assert validator.reason(attrs.evolve(at, timestamp=received_at - over)) == "timestamp_skew"
        assert validator.reason(attrs.evolve(at, timestamp=received_at + over)) == "timestamp_skew"


@pytest.mark.parametrize(("change", "reason"), [
    ({"price": float("nan"), "volume": -1.0, "symbol": "ETHUSDT"}, "non_finite_price"),
    ({"price": -1.0, "volume": float("inf")}, "non_positive_price"),
    ({"volume": float("inf"), "timestamp": NOW - timedelta(hours=1)}, "non_finite_volume"),
    ({"timestamp": NOW - timedelta(hours=1), "symbol": "ETHUSDT"}, "timestamp_skew"),
    ({"symbol": "ETHUSDT", "bid": float("nan")}, "unknown_symbol"),
    ({"bid": float("nan"), "bid_size": -1.0}, "non_finite_field"),
    ({"ask_size": -1.0}, "bad_size"),
    ({"bid_size": float("nan")}, "bad_size"),
])
def test_a_record_failing_several_checks_gets_the_first_in_a_fixed_order(
    change: dict[str, object], reason: str,
) -> None:
    assert Validator({"BTCUSDT"}).reason(attrs.evolve(GOOD, **change)) == reason
