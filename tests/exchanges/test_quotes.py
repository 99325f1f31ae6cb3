"""The ``quotes`` channel in every adapter that has one: documentation samples and recordings
give quote records (best bid/offer with sizes, the mid as price) only for symbols subscribed to
quotes, and their tickers keep streaming unchanged beside them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from feedd.exchanges import make_venue, venue_ids
from feedd.exchanges.base import Ignored, Subscription, Topic
from feedd.exchanges.binance import BinanceSpot, BinanceUsdm
from feedd.exchanges.bybit import BybitInverse, BybitLinear, BybitSpot
from feedd.exchanges.coinbase import Coinbase
from feedd.exchanges.fields import parse_rfc3339
from feedd.feed.validate import Validator
from feedd.model import MarketData

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RECEIVED = datetime(2023, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def sample(venue: str, name: str) -> Any:
    return json.loads((FIXTURES / venue / name).read_text())


def at_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def records(events: Any) -> list[MarketData]:
    return [e for e in events if isinstance(e, MarketData)]


# ---- topics -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("venue", "symbol", "topics"),
    [
        (BinanceSpot(), "BTCUSDT", [Topic("", "btcusdt@bookTicker")]),
        (BinanceUsdm(), "BTCUSDT", [Topic("public", "btcusdt@bookTicker")]),
        (BybitSpot(), "BTCUSDT", [Topic("", "orderbook.1.BTCUSDT")]),
        (BybitLinear(), "BTCUSDT", [Topic("", "orderbook.1.BTCUSDT")]),
        (BybitInverse(), "BTCUSD", [Topic("", "orderbook.1.BTCUSD")]),
        (Coinbase(), "BTC-USD", [Topic("", "ticker:BTC-USD")]),
    ],
    ids=lambda v: getattr(v, "venue_id", None),
)
def test_quotes_ride_the_venues_best_bid_offer_stream(venue: Any, symbol: str, topics: list[Topic]) -> None:
    assert venue.topics(Subscription(symbol, "quotes")) == topics


def test_every_venue_either_streams_quotes_or_refuses_the_channel_by_name() -> None:
    for venue_id in venue_ids():
        venue = make_venue(venue_id)
        try:
            topics = venue.topics(Subscription("X", "quotes"))
        except ValueError as exc:
            assert "quotes" in str(exc)
        else:
            assert topics


# ---- Binance --------------------------------------------------------------------------------


def binance_frame(stream: str, data: Any) -> str:
    return json.dumps({"stream": stream, "data": data})


def test_binance_spot_book_ticker_sample_is_a_quote_stamped_with_the_receive_time() -> None:
    venue = BinanceSpot()
    venue.quotes.streamed.add("BNBUSDT")
    [record] = venue.new_session().decode(
        binance_frame("bnbusdt@bookTicker", sample("binance", "bookTicker.json")), RECEIVED
    )
    assert record == MarketData(
        exchange="binance", symbol="BNBUSDT", kind="quote",
        price=(25.3519 + 25.3652) / 2, volume=0.0,
        timestamp=RECEIVED,  # spot's bookTicker carries no time (§2.3)
        received_at=RECEIVED,
        bid=25.3519, ask=25.3652, bid_size=31.21, ask_size=40.66,
    )


def test_binance_book_ticker_of_a_symbol_not_subscribed_to_quotes_only_feeds_tickers() -> None:
    venue = BinanceUsdm()
    venue.quotes.streamed.add("ETHUSDT")
    frame = binance_frame("bnbusdt@bookTicker", sample("binance", "bookTicker.json"))
    assert venue.new_session().decode(frame, RECEIVED) == [Ignored()]
    assert venue.quotes.sized("BNBUSDT", RECEIVED) == (25.3519, 25.3652, 31.21, 40.66)


def test_binance_usdm_quote_carries_the_transaction_time_and_its_ticker_the_sizes() -> None:
    venue = BinanceUsdm()
    venue.quotes.streamed.add("BTCUSDT")
    data = {"e": "bookTicker", "u": 1, "E": 1672515782137, "T": 1672515782136, "s": "BTCUSDT",
            "b": "100.5", "B": "2", "a": "100.7", "A": "3.5"}
    [record] = venue.new_session().decode(binance_frame("btcusdt@bookTicker", data), RECEIVED)
    assert (record.kind, record.timestamp) == ("quote", at_ms(1672515782136))
    assert (record.bid, record.bid_size, record.ask, record.ask_size) == (100.5, 2.0, 100.7, 3.5)
    ticker = {"e": "24hrTicker", "E": 1672515782200, "s": "BTCUSDT", "c": "100.6", "v": "10",
              "h": "101", "l": "99", "P": "1.5"}
    [merged] = venue.new_session().decode(binance_frame("btcusdt@ticker", ticker), RECEIVED)
    assert (merged.bid, merged.ask, merged.bid_size, merged.ask_size) == (100.5, 100.7, 2.0, 3.5)


def test_binance_recorded_book_tickers_all_become_valid_quotes() -> None:
    venue = BinanceSpot()
    venue.quotes.streamed.add("BTCUSDT")
    session = venue.new_session()
    validator = Validator({"BTCUSDT"})
    quotes = []
    recording = FIXTURES / "binance" / "recorded_spot_trade_bookticker_2024-08-08.ndjson"
    for line in recording.read_text().splitlines():
        if "@bookTicker" not in line:
            continue
        data = json.loads(line)["data"]
        [record] = session.decode(line, RECEIVED)
        assert isinstance(record, MarketData)
        assert validator.reason(record) is None
        assert (record.bid, record.bid_size) == (float(data["b"]), float(data["B"]))
        assert (record.ask, record.ask_size) == (float(data["a"]), float(data["A"]))
        quotes.append(record)
    assert len(quotes) == 100


# ---- Bybit ---------------------------------------------------------------------------------


def level1(kind: str, bids: list[list[str]], asks: list[list[str]], symbol: str = "BTCUSDT") -> str:
    return json.dumps({
        "topic": f"orderbook.1.{symbol}", "type": kind, "ts": 1672304484978,
        "data": {"s": symbol, "b": bids, "a": asks, "u": 1, "seq": 2}, "cts": 1672304484976,
    })


def test_bybit_level_one_snapshot_sample_is_a_quote_at_the_matching_engines_time() -> None:
    venue = BybitSpot()
    venue.quotes.streamed.add("BTCUSDT")
    documented = sample("bybit", "orderbook_snapshot.json")  # a depth-50 sample; level 1 is alike
    documented["topic"] = "orderbook.1.BTCUSDT"
    documented["data"]["b"] = documented["data"]["b"][:1]
    documented["data"]["a"] = documented["data"]["a"][:1]
    [record] = venue.new_session().decode(json.dumps(documented), RECEIVED)
    assert record == MarketData(
        exchange="bybit", symbol="BTCUSDT", kind="quote", price=(16493.5 + 16611.0) / 2,
        volume=0.0, timestamp=at_ms(1672304484976),  # cts
        received_at=RECEIVED, bid=16493.5, ask=16611.0, bid_size=0.006, ask_size=0.029,
    )


def test_bybit_level_one_delta_replaces_a_side_and_a_zero_size_deletes_it() -> None:
    venue = BybitLinear()
    venue.quotes.streamed.add("BTCUSDT")
    session = venue.new_session()
    session.decode(level1("snapshot", [["100", "1"]], [["101", "2"]]), RECEIVED)
    [moved] = records(session.decode(level1("delta", [["100.5", "4"]], []), RECEIVED))
    assert (moved.bid, moved.bid_size, moved.ask, moved.ask_size) == (100.5, 4.0, 101.0, 2.0)
    # the ask side emptied: no quote, and nothing cached for tickers either
    assert session.decode(level1("delta", [], [["101", "0"]]), RECEIVED) == [Ignored()]
    assert venue.quotes.sized("BTCUSDT", RECEIVED) == (None, None, None, None)


def test_bybit_inverse_quote_sizes_are_base_units() -> None:
    venue = BybitInverse()
    venue.quotes.streamed.add("BTCUSD")
    frame = level1("snapshot", [["50000", "1000"]], [["50010", "5001"]], "BTCUSD")
    [record] = venue.new_session().decode(frame, RECEIVED)
    assert (record.bid_size, record.ask_size) == (1000 / 50000, 5001 / 50010)  # USD contracts / price


def test_bybit_spot_ticker_takes_the_level_one_sizes_with_the_quote() -> None:
    venue = BybitSpot()
    session = venue.new_session()
    assert session.decode(level1("snapshot", [["100", "1.5"]], [["101", "2.5"]]), RECEIVED) == [Ignored()]
    [ticker] = records(session.decode(json.dumps(sample("bybit", "spot_tickers.json")), RECEIVED))
    assert ticker.kind == "ticker"
    assert (ticker.bid, ticker.ask, ticker.bid_size, ticker.ask_size) == (100.0, 101.0, 1.5, 2.5)


# ---- Coinbase ------------------------------------------------------------------------------


def test_coinbase_ticker_sample_gives_a_quote_and_no_ticker_for_a_quotes_only_product() -> None:
    venue = Coinbase()
    venue.quotes.streamed.add("BTC-USD")
    [record] = records(venue.new_session().decode(json.dumps(sample("coinbase", "ticker.json")), RECEIVED))
    assert record == MarketData(
        exchange="coinbase", symbol="BTC-USD", kind="quote", price=(21931.98 + 21933.98) / 2,
        volume=0.0, timestamp=datetime(2023, 2, 9, 20, 30, 37, 167359, tzinfo=UTC),
        received_at=RECEIVED, bid=21931.98, ask=21933.98, bid_size=8000.21, ask_size=8038.07770938,
    )


def test_coinbase_ticker_sample_gives_both_records_when_both_channels_are_subscribed() -> None:
    venue = Coinbase()
    venue.quotes.streamed.add("BTC-USD")
    venue.quotes.ticked.add("BTC-USD")
    got = records(venue.new_session().decode(json.dumps(sample("coinbase", "ticker.json")), RECEIVED))
    assert [r.kind for r in got] == ["ticker", "quote"]
    sizes = (8000.21, 8038.07770938)
    assert (got[0].bid_size, got[0].ask_size) == (got[1].bid_size, got[1].ask_size) == sizes


def test_coinbase_quote_without_quantities_is_a_decode_error_not_a_sizeless_quote() -> None:
    venue = Coinbase()
    venue.quotes.streamed.add("BTC-USD")
    documented = sample("coinbase", "ticker.json")
    del documented["events"][0]["tickers"][0]["best_bid_quantity"]
    [event] = venue.new_session().decode(json.dumps(documented), RECEIVED)
    assert "quantities" in getattr(event, "reason", "")


# ---- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [float("nan"), float("inf"), -1.0])
def test_a_quote_with_a_bad_size_is_refused(size: float) -> None:
    from feedd.model import quote_record

    bad = quote_record("binance", "BTCUSDT", 1.0, size, 2.0, 1.0, RECEIVED, RECEIVED)
    assert Validator({"BTCUSDT"}).reason(bad) == "bad_size"


def test_coinbase_recorded_tickers_all_become_valid_quotes_with_their_quantities() -> None:
    venue = Coinbase()
    venue.quotes.streamed.update(("BTC-USD", "ETH-USD"))
    session = venue.new_session()
    validator = Validator({"BTC-USD", "ETH-USD"})
    recording = FIXTURES / "coinbase" / "recorded_advanced_trade_2026-08-09.ndjson"
    quotes = []
    for line in recording.read_text().splitlines():
        msg = json.loads(line)
        if msg.get("channel") != "ticker":
            continue
        tickers = [t for e in msg["events"] for t in e["tickers"]]
        got = records(session.decode(line, parse_rfc3339(msg["timestamp"])))
        assert [r.kind for r in got] == ["quote"] * len(tickers)  # quotes only: no ticker records
        for record, ticker in zip(got, tickers, strict=True):
            assert validator.reason(record) is None
            assert (record.bid_size, record.ask_size) == (
                float(ticker["best_bid_quantity"]), float(ticker["best_ask_quantity"])
            )
        quotes += got
    assert len(quotes) >= 160
