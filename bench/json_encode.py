"""The JSON path, measured: decoding a Binance trade frame and encoding a record, json vs orjson.

Why orjson is a dependency: every record is decoded once and encoded once on the hot path.

    .venv/bin/python bench/json_encode.py
"""

from __future__ import annotations

import json
import timeit
from datetime import UTC, datetime

import orjson

from feedd.codec import encode_record, record_dict
from feedd.model import MarketData

FRAME = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,'
    '"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}'
)
NOW = datetime.now(UTC)
RECORD = MarketData(
    "binance", "BTCUSDT", "trade", 61837.63, 0.02, NOW, NOW, side="sell", trade_id="3735683259"
)


def stdlib_encode(record: MarketData) -> bytes:
    obj = record_dict(record)
    obj["timestamp"] = record.timestamp.isoformat().replace("+00:00", "Z")
    obj["received_at"] = record.received_at.isoformat().replace("+00:00", "Z")
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def best(stmt: object, number: int = 100_000) -> float:
    """Best of five, in µs per call (the minimum is the least disturbed by a noisy machine)."""
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    rows = [
        ("decode frame", best(lambda: json.loads(FRAME)), best(lambda: orjson.loads(FRAME))),
        ("encode record", best(lambda: stdlib_encode(RECORD)), best(lambda: encode_record(RECORD))),
    ]
    print(f"{'':16}{'json µs':>10}{'orjson µs':>11}{'ratio':>8}")
    for name, slow, fast in rows:
        print(f"{name:16}{slow:10.2f}{fast:11.2f}{slow / fast:7.1f}x")


if __name__ == "__main__":
    main()
