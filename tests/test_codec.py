"""The wire format of a record: one JSON object per line."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from feedd.codec import encode_record
from feedd.fanout.lines import decode_record
from feedd.model import MarketData

TS = datetime(2024, 8, 8, 23, 54, 15, 342000, tzinfo=UTC)
RECORD = MarketData("binance", "BTCUSDT", "trade", 61837.63, 0.02, TS, TS, side="sell", trade_id="3735683259")

#: design.md: RFC 3339 UTC with millisecond precision or better; feedd writes microseconds, always
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")

#: instants that stress the fraction: exact seconds, exact milliseconds, the extremes of a second
EDGE_TIMES = [
    datetime(2026, 11, 25, 4, 54, 56, micro, tzinfo=UTC)
    for micro in (0, 1, 999, 1000, 342000, 500000, 999000, 999999)
] + [
    datetime(2000, 1, 1, tzinfo=UTC),
    datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
] + [TS + timedelta(milliseconds=7 * i) for i in range(300)]


def record_at(timestamp: datetime, received_at: datetime) -> MarketData:
    return MarketData("binance", "BTCUSDT", "trade", 61837.63, 0.02, timestamp, received_at, side="buy")


def test_record_is_one_line_with_every_field() -> None:
    line = encode_record(RECORD)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = orjson.loads(line)
    assert set(obj) == {
        "exchange", "symbol", "kind", "price", "volume", "timestamp", "received_at",
        "bid", "ask", "high_24h", "low_24h", "change_24h", "side", "trade_id", "bid_size", "ask_size",
    }
    assert obj["bid"] is None and obj["change_24h"] is None and obj["bid_size"] is None


@pytest.mark.parametrize("field", ["timestamp", "received_at"])
def test_every_timestamp_is_rfc3339_utc_with_a_fraction_even_on_an_exact_second(field: str) -> None:
    bad = []
    for when, other in itertools.product(EDGE_TIMES, EDGE_TIMES[:3]):
        record = record_at(when, other) if field == "timestamp" else record_at(other, when)
        text = orjson.loads(encode_record(record))[field]
        if not RFC3339_UTC.fullmatch(text):
            bad.append(text)
    assert bad == []


def test_timestamp_text_names_the_same_instant() -> None:
    for when in EDGE_TIMES:
        text = orjson.loads(encode_record(record_at(when, when)))["timestamp"]
        assert datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) == when


def test_exact_second_is_written_with_six_zero_digits() -> None:
    exact = datetime(2026, 11, 25, 4, 54, 56, tzinfo=UTC)
    obj = orjson.loads(encode_record(record_at(exact, TS)))
    assert obj["timestamp"] == "2026-11-25T04:54:56.000000Z"
    assert obj["received_at"] == "2024-08-08T23:54:15.342000Z"


def test_prices_round_trip_the_exchange_decimal() -> None:
    obj = orjson.loads(encode_record(RECORD))
    assert repr(obj["price"]) == "61837.63"


def test_decode_inverts_encode() -> None:
    assert decode_record(encode_record(RECORD)) == RECORD


def test_decode_inverts_encode_for_every_edge_time() -> None:
    for when, other in itertools.product(EDGE_TIMES[:11], repeat=2):
        record = record_at(when, other)
        decoded = decode_record(encode_record(record))
        assert decoded == record
        assert decoded.timestamp.tzinfo is UTC and decoded.received_at.tzinfo is UTC


def test_a_quote_round_trips_with_its_sizes() -> None:
    from feedd.fanout.lines import decode_record
    from feedd.model import quote_record

    quote = quote_record("bybit", "BTCUSDT", 100.5, 1.25, 100.7, 0.5, TS, TS)
    obj = orjson.loads(encode_record(quote))
    assert (obj["kind"], obj["price"], obj["volume"]) == ("quote", (100.5 + 100.7) / 2, 0.0)
    assert (obj["bid"], obj["bid_size"], obj["ask"], obj["ask_size"]) == (100.5, 1.25, 100.7, 0.5)
    assert decode_record(encode_record(quote)) == quote
