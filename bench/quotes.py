"""CPU per quote record on feedd's per-record path, beside a trade's and a ticker's, in one run.

    .venv/bin/python bench/quotes.py

What a record costs between the frame's text and its line on the socket, in this process (no
sockets, no tasks: the part of the path that grows with the quote rate): the adapter's decode of
one frame (Binance spot ``@trade``, ``@bookTicker``, ``@ticker``; Bybit ``orderbook.1``;
Coinbase ``ticker``), validation, the JSON encode, and with ``conflate`` set the conflator's
absorb instead of the hub. Each figure is the best of seven runs of 50,000 frames (the least
disturbed on a shared machine); compare figures of one run only. The wakeups, syscalls and hops
every record shares are ``bench/compare.py``'s; a quote adds to them only what this shows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from feedd.codec import encode_record
from feedd.exchanges.binance import BinanceSpot
from feedd.exchanges.bybit import BybitLinear
from feedd.exchanges.coinbase import Coinbase
from feedd.feed.conflate import Conflator
from feedd.feed.validate import Validator
from feedd.model import MarketData

N = 50_000
RECEIVED = datetime.now(UTC)
NOW_MS = int(RECEIVED.timestamp() * 1000)


def binance(stream: str, data: dict[str, Any]) -> str:
    return json.dumps({"stream": stream, "data": data}, separators=(",", ":"))


FRAMES = {
    "binance trade": (BinanceSpot, "BTCUSDT", binance("btcusdt@trade", {
        "e": "trade", "E": NOW_MS, "s": "BTCUSDT", "t": 3735683259, "p": "61837.63000000",
        "q": "0.02000000", "T": NOW_MS, "m": True, "M": True})),
    "binance ticker": (BinanceSpot, "BTCUSDT", binance("btcusdt@ticker", {
        "e": "24hrTicker", "E": NOW_MS, "s": "BTCUSDT", "p": "0.0015", "P": "250.00", "c": "61837.63",
        "b": "61837.62", "B": "10", "a": "61837.64", "A": "100", "h": "62000", "l": "61000",
        "v": "10000", "q": "18"})),
    "binance quote": (BinanceSpot, "BTCUSDT", binance("btcusdt@bookTicker", {
        "u": 50093239212, "s": "BTCUSDT", "b": "61837.63000000", "B": "3.78826000",
        "a": "61837.64000000", "A": "1.54698000"})),
    "bybit quote": (BybitLinear, "BTCUSDT", json.dumps({
        "topic": "orderbook.1.BTCUSDT", "type": "snapshot", "ts": NOW_MS,
        "data": {"s": "BTCUSDT", "b": [["61837.6", "3.788"]], "a": [["61837.7", "1.546"]],
                 "u": 1, "seq": 2}, "cts": NOW_MS - 2}, separators=(",", ":"))),
    "coinbase quote": (Coinbase, "BTC-USD", json.dumps({
        "channel": "ticker", "client_id": "", "timestamp": RECEIVED.isoformat().replace("+00:00", "Z"),
        "sequence_num": 0, "events": [{"type": "update", "tickers": [{
            "type": "ticker", "product_id": "BTC-USD", "price": "61837.63", "volume_24_h": "16038.28",
            "low_24_h": "61000", "high_24_h": "62000", "low_52_w": "15460", "high_52_w": "73000",
            "price_percent_chg_24_h": "-4.15", "best_bid": "61837.62", "best_bid_quantity": "0.5",
            "best_ask": "61837.64", "best_ask_quantity": "0.25"}]}]}, separators=(",", ":"))),
}


def best(run: Callable[[], float]) -> float:
    return min(run() for _ in range(7))


def measure(name: str, conflate: bool) -> dict[str, float]:
    factory, symbol, frame = FRAMES[name]
    venue = factory()
    if name.endswith("quote"):
        venue.quotes.streamed.add(symbol)
    session = venue.new_session()
    check = Validator({symbol}).reason
    conflator = Conflator()
    decode = session.decode

    def decoded() -> float:
        start = time.perf_counter()
        for _ in range(N):
            decode(frame, RECEIVED)
        return (time.perf_counter() - start) / N * 1e6

    record = next(e for e in decode(frame, RECEIVED) if isinstance(e, MarketData))
    assert check(record) is None, check(record)

    def validated() -> float:
        start = time.perf_counter()
        for _ in range(N):
            check(record)
        return (time.perf_counter() - start) / N * 1e6

    def encoded() -> float:
        start = time.perf_counter()
        for _ in range(N):
            encode_record(record)
        return (time.perf_counter() - start) / N * 1e6

    def absorbed() -> float:
        batch = [record]
        start = time.perf_counter()
        for _ in range(N):
            conflator.absorb(batch)
        return (time.perf_counter() - start) / N * 1e6

    row = {"decode": best(decoded), "validate": best(validated)}
    # conflated, a quote is absorbed at once and encoded once per interval (not per update)
    row["encode"] = best(encoded)
    row["absorb"] = best(absorbed) if conflate else 0.0
    row["total"] = row["decode"] + row["validate"] + (row["absorb"] if conflate else row["encode"])
    return row


def main() -> None:
    rows = [(name, False, measure(name, False)) for name in FRAMES]
    rows += [(name + ", conflated", True, measure(name, True)) for name in FRAMES if name.endswith("quote")]
    trade = rows[0][2]["total"]
    print(f"{'µs per record':<28}{'decode':>8}{'validate':>10}{'encode':>8}{'absorb':>8}{'total':>8}"
          f"{'x trade':>9}")
    for name, conflate, row in rows:
        print(f"{name:<28}{row['decode']:>8.2f}{row['validate']:>10.2f}"
              f"{(row['encode'] if not conflate else 0):>8.2f}{row['absorb']:>8.2f}{row['total']:>8.2f}"
              f"{row['total'] / trade:>9.2f}")
    print("(conflated rows: the encode happens once per symbol per interval, not per update)")


if __name__ == "__main__":
    main()
