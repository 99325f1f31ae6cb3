"""The wire format of a record: one JSON object per line."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from feedd.codec import decode_record, encode_record
from feedd.model import MarketData

TS = datetime(2024, 8, 8, 23, 54, 15, 342000, tzinfo=UTC)
RECORD = MarketData("binance", "BTCUSDT", "trade", 61837.63, 0.02, TS, TS, side="sell", trade_id="3735683259")


def test_record_is_one_line_with_every_field() -> None:
    line = encode_record(RECORD)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = orjson.loads(line)
    assert set(obj) == {
        "exchange", "symbol", "kind", "price", "volume", "timestamp", "received_at",
        "bid", "ask", "high_24h", "low_24h", "change_24h", "side", "trade_id",
    }
    assert obj["bid"] is None and obj["change_24h"] is None


def test_timestamps_are_rfc3339_utc_with_milliseconds_or_better() -> None:
    obj = orjson.loads(encode_record(RECORD))
    assert obj["timestamp"] == "2024-08-08T23:54:15.342000Z"


def test_prices_round_trip_the_exchange_decimal() -> None:
    obj = orjson.loads(encode_record(RECORD))
    assert repr(obj["price"]) == "61837.63"


def test_decode_inverts_encode() -> None:
    assert decode_record(encode_record(RECORD)) == RECORD
