"""Generate the Bybit and Coinbase tapes the simulators replay (``feedd/sim/data/{bybit,coinbase}``).

The package may only ship data an MIT package may ship, so these tapes are not venue recordings:
they are the venues' documented frame shapes (the field sets and field order of Bybit v5 and
Coinbase Advanced Trade, ``../shared/protocols/``) filled with the trades and best quotes of MIT
licensed Binance recordings from nkaz001/hftbacktest, paced by those recordings' real receive
times (each ``.recv_ts`` line is the receive time, in integer nanoseconds, of the source frame the
line was made from):

* BTC: Binance spot ``btcusdt@trade`` and ``btcusdt@bookTicker``,
  ``examples/spot/btcusdt_20240808.gz`` (2024-08-08 23:54:13.9 to 23:59:59.9 UTC);
* ETH: Binance COIN-M ``ethusd_perp@trade`` and ``ethusd_perp@bookTicker``,
  ``examples/cm/ethusd_perp_20240808.gz`` (sizes turned from 10 USD contracts into ETH).

The inputs are the project's copies in ``../shared/fixtures/recorded/`` (see the README there).
Each tape takes its own window of a recording (:data:`WINDOWS`). What a source does not hold
(24 h statistics, open interest, funding, the 52-week range) is a constant below, round figures of
the day's public market, not data from anywhere. Output is deterministic:
``tests/sim/test_data_licences.py`` checks that regenerating gives the committed bytes.

Run: ``.venv/bin/python scripts/sim_data.py [--recorded DIR] [--out feedd/sim/data]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: the project's recordings, beside the clone
RECORDED = ROOT.parent / "shared" / "fixtures" / "recorded"
OUT = ROOT / "feedd" / "sim" / "data"

SOURCES = {
    "btcusdt": "binance/hftbacktest_binance_spot_btcusdt_2024-08-08",
    "ethusd_perp": "binance_coinm/hftbacktest_binance_coinm_ethusd_perp_2024-08-08",
}
#: the seconds of each window are counted from this time (both sources start just after it)
EPOCH = 1_723_161_254  # 2024-08-08 23:54:14 UTC
#: (source, first second, last second) of each tape; Bybit linear plays BTC and ETH together
WINDOWS = {
    "bybit/spot": ("btcusdt", 130.0, 150.0),
    "bybit/linear": ("btcusdt", 160.0, 180.0),
    "bybit/linear/eth": ("ethusd_perp", 160.0, 180.0),
    "coinbase/btc_usd": ("btcusdt", 60.0, 85.0),
    "coinbase/eth_usd": ("ethusd_perp", 35.0, 65.0),
}
#: a COIN-M ETHUSD_PERP contract is 10 USD of notional
ETH_CONTRACT_USD = 10
#: Bybit pushes orderbook.200 every 100 ms, spot tickers ~ every 50 ms: the tapes keep the first
#: best quote at least this long after the one kept before (the other pushes add nothing here)
BOOK_EVERY_NS = 100_000_000
SPOT_TICKER_EVERY_NS = 500_000_000
#: Coinbase's market_trades updates batch 250 ms of trades; between batches a change of the best
#: bid or ask is pushed as a ticker update at most this often
COINBASE_BATCH_NS = 250_000_000
COINBASE_QUOTE_EVERY_NS = 250_000_000

# Round figures for what the sources do not hold (2024-08-08, BTC and ETH).
BTC_DAY = {"prev": 55_100.0, "high": 62_700.0, "low": 54_750.0, "volume": 35_000.0}
ETH_DAY = {"prev": 2_340.0, "high": 2_720.0, "low": 2_320.0, "volume": 180_000.0}
BTC_52W = ("24900", "73750")
ETH_52W = ("1520", "4095")
BTC_OPEN_INTEREST = 55_000.0  # BTC, Bybit linear BTCUSDT
BTC_PREV_HOUR = 61_500.0
TRADE_ID_NAMESPACE = uuid.UUID("5d6c3f0e-2a41-4c8e-9b7a-0f3e6d1c2b95")
_MS = 1_000_000
_NS = 1_000_000_000


# ---- reading the sources ------------------------------------------------------------------------


def read_source(recorded: Path, name: str) -> list[tuple[int, dict[str, Any]]]:
    """(receive time ns, combined-stream frame) of every frame of a source, in order."""
    stem = recorded / SOURCES[name]
    with gzip.open(f"{stem}.ndjson.gz", "rt", encoding="utf-8") as frames:
        lines = frames.read().splitlines()
    with gzip.open(f"{stem}.recv_ts.gz", "rt", encoding="utf-8") as stamps:
        times = [int(line) for line in stamps.read().splitlines()]
    return [(at, json.loads(line)) for at, line in zip(times, lines, strict=True)]


class Source:
    """One window of a source: its trades and best quotes, with receive times."""

    def __init__(self, frames: list[tuple[int, dict[str, Any]]], start: float, end: float) -> None:
        self.symbol = frames[0][1]["data"]["s"]
        #: sizes are 10 USD contracts (COIN-M), not base units
        self.contracts = self.symbol.endswith("_PERP")
        trades = [(at, f["data"]) for at, f in frames if f["stream"].endswith("@trade")]
        #: the recorder's clock runs behind the venue's: receive time + offset = venue time (ns)
        self.offset = int(statistics.median(d["E"] * _MS - at for at, d in trades))
        lo, hi = (EPOCH + int(start)) * _NS, (EPOCH + int(end)) * _NS
        self.before = [d for at, d in trades if at < lo]
        #: (receive time, "trade" or "bookTicker", payload) of the window (depth frames left out)
        self.events = [
            (at, kind, f["data"])
            for at, f in frames
            if lo <= at < hi and (kind := f["stream"].partition("@")[2]) in ("trade", "bookTicker")
        ]
        self.first_quote = next(
            f["data"] for at, f in reversed(frames) if at < lo and f["stream"].endswith("@bookTicker")
        )

    def venue_ms(self, at: int) -> int:
        return (at + self.offset) // _MS

    def venue_ns(self, at: int) -> int:
        return at + self.offset

    def size(self, data: dict[str, Any], key: str, price: float) -> float:
        """A size in base units (COIN-M's are contracts of 10 USD)."""
        return float(data[key]) * ETH_CONTRACT_USD / price if self.contracts else float(data[key])


def strip(text: str) -> str:
    """Binance's fixed eight decimals without trailing zeros ("61837.63000000" -> "61837.63")."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def fixed(value: float, places: int) -> str:
    return f"{value:.{places}f}"


def plain(value: float, places: int) -> str:
    return strip(fixed(value, places))


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def taker(trade: dict[str, Any]) -> str:
    return "Sell" if trade["m"] else "Buy"  # m: the buyer was the maker


def same_order(trades: Iterable[tuple[int, dict[str, Any]]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Consecutive trades of one taker order (one symbol and trade time ``T``) as one batch, at the receive
    time of its last trade."""
    batch: list[dict[str, Any]] = []
    at = 0
    for at_next, trade in trades:
        if batch and (trade["T"], trade["s"]) != (batch[-1]["T"], batch[-1]["s"]):
            yield at, batch
            batch = []
        batch.append(trade)
        at = at_next
    if batch:
        yield at, batch


class Tape:
    """Frames with their receive times, written as ``<name>.ndjson`` and ``<name>.recv_ts``."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.times: list[int] = []

    def add(self, at: int, frame: dict[str, Any]) -> None:
        self.lines.append(dumps(frame))
        self.times.append(at)

    def files(self, name: str) -> dict[str, str]:
        return {
            f"{name}.ndjson": "".join(line + "\n" for line in self.lines),
            f"{name}.recv_ts": "".join(f"{at}\n" for at in self.times),
        }


# ---- Bybit v5 -----------------------------------------------------------------------------------


def bybit_trades(sources: list[Source], category: str) -> Tape:
    """``publicTrade.<symbol>`` frames: one per taker order, trades in the category's field order.
    The sources' trades are merged by receive time; ``seq`` is the source's last quote id."""
    tape = Tape()
    trades: list[tuple[int, dict[str, Any]]] = []
    for source in sources:
        symbol = "ETHUSDT" if source.contracts else source.symbol
        quote_id = source.first_quote["u"]
        for at, kind, data in source.events:
            if kind == "bookTicker":
                quote_id = data["u"]
            else:
                price = float(data["p"])
                base = source.size(data, "q", price)
                trades.append((at, data | {"s": symbol, "seq": quote_id, "base": base}))
    trades.sort(key=lambda item: item[0])
    last: dict[str, float] = {}
    direction: dict[str, str] = {}
    for at, batch in same_order(trades):
        made: list[dict[str, Any]] = []
        symbol = batch[0]["s"]
        for trade in batch:
            if category == "spot":
                made.append(
                    {
                        "i": str(trade["t"]),
                        "T": trade["T"],
                        "p": strip(trade["p"]),
                        "v": plain(trade["base"], 6),
                        "S": taker(trade),
                        "seq": trade["seq"],
                        "s": symbol,
                        "BT": False,
                        "RPI": False,
                    }
                )
                continue
            # linear ticks: BTCUSDT 0.1 and 0.001 BTC, ETHUSDT 0.01 and 0.01 ETH
            tick, step = (0.1, 3) if symbol == "BTCUSDT" else (0.01, 2)
            price = round(round(float(trade["p"]) / tick) * tick, 2)
            before = last.get(symbol, price)
            if price > before:
                direction[symbol] = "PlusTick"
            elif price < before:
                direction[symbol] = "MinusTick"
            else:
                was = direction.get(symbol, "ZeroPlusTick")
                direction[symbol] = "ZeroPlusTick" if was in ("PlusTick", "ZeroPlusTick") else "ZeroMinusTick"
            last[symbol] = price
            made.append(
                {
                    "T": trade["T"],
                    "s": symbol,
                    "S": taker(trade),
                    "v": fixed(max(10.0**-step, round(trade["base"], step)), step),
                    "p": fixed(price, 2),
                    "L": direction[symbol],
                    "i": str(uuid.uuid5(TRADE_ID_NAMESPACE, f"{symbol}:{trade['t']}")),
                    "BT": False,
                    "RPI": False,
                    "seq": trade["seq"],
                }
            )
        topic = f"publicTrade.{symbol}"
        ts = max(trade["E"] for trade in batch)
        if category == "spot":
            tape.add(at, {"topic": topic, "ts": ts, "type": "snapshot", "data": made})
        else:
            tape.add(at, {"topic": topic, "type": "snapshot", "ts": ts, "data": made})
    return tape


def kept_quotes(source: Source, every: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """The best quotes at least ``every`` ns apart (by receive time) that changed the quote."""
    kept_at = None
    kept: tuple[str, ...] = ()
    for at, kind, data in source.events:
        if kind != "bookTicker":
            continue
        quote = (data["b"], data["B"], data["a"], data["A"])
        if quote != kept and (kept_at is None or at - kept_at >= every):
            kept_at, kept = at, quote
            yield at, data


def bybit_spot_book(source: Source) -> Tape:
    """``orderbook.200.BTCUSDT``: a snapshot of the first best quote, then deltas that set each
    new best level and delete the levels it passed (the book holds the levels seen so far)."""
    tape = Tape()
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    for index, (at, quote) in enumerate(kept_quotes(source, BOOK_EVERY_NS)):
        bid, bid_size, ask, ask_size = (strip(quote[k]) for k in ("b", "B", "a", "A"))
        changes: dict[str, list[list[str]]] = {"b": [], "a": []}
        for side, book, best, size, sign in (("b", bids, bid, bid_size, 1), ("a", asks, ask, ask_size, -1)):
            # the levels better than the new best are gone (traded or cancelled)
            for price in sorted((p for p in book if sign * (float(p) - float(best)) > 0), key=float):
                del book[price]
                changes[side].append([price, "0"])
            if book.get(best) != size:
                book[best] = size
                changes[side].append([best, size])
        ms = source.venue_ms(at)
        if index == 0:
            data = {"s": "BTCUSDT", "b": [[bid, bid_size]], "a": [[ask, ask_size]]}
            kind = "snapshot"
        else:
            data = {"s": "BTCUSDT", "b": changes["b"], "a": changes["a"]}
            kind = "delta"
        data |= {"u": quote["u"], "seq": quote["u"]}
        tape.add(at, {"topic": "orderbook.200.BTCUSDT", "ts": ms, "type": kind, "data": data, "cts": ms})
    return tape


class Day:
    """24 h statistics: the day's round figures, moved by the window's trades."""

    def __init__(self, figures: dict[str, float], last: float) -> None:
        self.prev = figures["prev"]
        self.high = max(figures["high"], last)
        self.low = min(figures["low"], last)
        self.volume = figures["volume"]
        self.turnover = figures["volume"] * (figures["high"] + figures["low"]) / 2
        self.last = last

    def trade(self, price: float, size: float) -> None:
        self.last = price
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.volume += size
        self.turnover += price * size


def bybit_spot_tickers(source: Source) -> Tape:
    """``tickers.BTCUSDT`` spot snapshots: the last trade, the day, the mid as ``usdIndexPrice``."""
    tape = Tape()
    day = Day(BTC_DAY, float(source.before[-1]["p"]))
    kept_at = None
    for at, kind, data in source.events:
        if kind == "trade":
            day.trade(float(data["p"]), float(data["q"]))
            continue
        if kept_at is not None and at - kept_at < SPOT_TICKER_EVERY_NS:
            continue
        kept_at = at
        mid = (float(data["b"]) + float(data["a"])) / 2
        ticker = {
            "symbol": "BTCUSDT",
            "lastPrice": plain(day.last, 2),
            "highPrice24h": plain(day.high, 2),
            "lowPrice24h": plain(day.low, 2),
            "prevPrice24h": plain(day.prev, 2),
            "volume24h": fixed(day.volume, 6),
            "turnover24h": fixed(day.turnover, 8),
            "price24hPcnt": fixed((day.last - day.prev) / day.prev, 4),
            "usdIndexPrice": fixed(mid, 6),
        }
        frame = {"topic": "tickers.BTCUSDT", "ts": source.venue_ms(at), "type": "snapshot", "cs": data["u"]}
        tape.add(at, frame | {"data": ticker})
    return tape


def bybit_linear_tickers(source: Source) -> Tape:
    """``tickers.BTCUSDT`` linear: a snapshot, then a delta of the fields that changed at each
    kept best quote (mark and index price move with the mid once a second)."""
    tape = Tape()
    day = Day(BTC_DAY, round(float(source.before[-1]["p"]), 1))
    direction = "ZeroPlusTick"
    mark = 0.0
    marked_at = None
    published: dict[str, str] = {}
    quotes = dict(kept_quotes(source, BOOK_EVERY_NS))
    for at, kind, data in source.events:
        if kind == "trade":
            price = round(float(data["p"]), 1)
            if price != day.last:
                direction = "PlusTick" if price > day.last else "MinusTick"
            day.trade(price, float(data["q"]))
            continue
        if at not in quotes:
            continue
        bid = float(data["b"]) // 0.1 * 0.1
        ask = max(-(-float(data["a"]) // 0.1) * 0.1, bid + 0.1)
        if marked_at is None or at - marked_at >= _NS:
            marked_at, mark = at, (float(data["b"]) + float(data["a"])) / 2
        ms = source.venue_ms(at)
        funding = (ms // (8 * 3_600_000) + 1) * 8 * 3_600_000
        interest = BTC_OPEN_INTEREST
        ticker = {
            "symbol": "BTCUSDT",
            "tickDirection": direction,
            "price24hPcnt": fixed((day.last - day.prev) / day.prev, 6),
            "lastPrice": fixed(day.last, 2),
            "prevPrice24h": fixed(day.prev, 2),
            "highPrice24h": fixed(day.high, 2),
            "lowPrice24h": fixed(day.low, 2),
            "prevPrice1h": fixed(BTC_PREV_HOUR, 2),
            "markPrice": fixed(mark + 0.5, 2),
            "indexPrice": fixed(mark, 2),
            "openInterest": fixed(interest, 3),
            "openInterestValue": fixed(interest * (mark + 0.5), 2),
            "turnover24h": fixed(day.turnover, 4),
            "volume24h": fixed(day.volume, 4),
            "fundingIntervalHour": "8",
            "fundingCap": "0.005",
            "singleOpenInterest": fixed(interest / 2, 3),
            "singleOpenInterestValue": fixed(interest * (mark + 0.5) / 2, 2),
            "nextFundingTime": str(funding),
            "fundingRate": "0.0001",
            "bid1Price": fixed(bid, 2),
            "bid1Size": fixed(float(data["B"]), 3),
            "ask1Price": fixed(ask, 2),
            "ask1Size": fixed(float(data["A"]), 3),
            "preOpenPrice": "",
            "preQty": "",
            "curPreListingPhase": "",
        }
        if published:
            changed = {k: v for k, v in ticker.items() if published[k] != v}
            if not changed:
                continue
            frame = {"topic": "tickers.BTCUSDT", "type": "delta", "data": {"symbol": "BTCUSDT", **changed}}
        else:
            frame = {"topic": "tickers.BTCUSDT", "type": "snapshot", "data": ticker}
        published = ticker
        tape.add(at, frame | {"cs": data["u"], "ts": ms})
    return tape


def bybit(recorded: Path) -> dict[str, str]:
    """The Bybit tapes, by file name."""
    frames = read_source(recorded, "btcusdt")
    spot = Source(frames, *WINDOWS["bybit/spot"][1:])
    linear = Source(frames, *WINDOWS["bybit/linear"][1:])
    linear_eth = Source(read_source(recorded, "ethusd_perp"), *WINDOWS["bybit/linear/eth"][1:])
    return (
        bybit_trades([spot], "spot").files("spot_trades")
        | bybit_spot_book(spot).files("spot_book")
        | bybit_spot_tickers(spot).files("spot_tickers")
        | bybit_trades([linear, linear_eth], "linear").files("linear_trades")
        | bybit_linear_tickers(linear).files("linear_tickers")
    )


# ---- Coinbase Advanced Trade --------------------------------------------------------------------


def rfc3339(ns: int, digits: int = 9) -> str:
    """Go's RFC3339Nano, as Coinbase prints times (trailing zeros dropped)."""
    seconds, fraction = divmod(ns, _NS)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    kept = f"{fraction:09d}"[:digits].rstrip("0")
    return f"{stamp}.{kept}Z" if kept else f"{stamp}Z"


def coinbase(recorded: Path) -> dict[str, str]:
    """The Coinbase tapes (``btc_usd``, ``eth_usd``), by file name."""
    files: dict[str, str] = {}
    for name, product, day_figures, year in (
        ("btc_usd", "BTC-USD", BTC_DAY, BTC_52W),
        ("eth_usd", "ETH-USD", ETH_DAY, ETH_52W),
    ):
        source_name, start, end = WINDOWS[f"coinbase/{name}"]
        source = Source(read_source(recorded, source_name), start, end)
        files |= coinbase_tape(source, product, day_figures, year).files(name)
    return files


def coinbase_tape(source: Source, product: str, figures: dict[str, float], year: tuple[str, str]) -> Tape:
    """A product's market_trades and ticker frames: the two snapshots (the last 100 trades before
    the window; the ticker), then 250 ms trade batches (at the receive time of their last trade)
    and, between batches, a ticker update for a changed best quote, at most every 250 ms (the
    simulator builds the tickers it sends from its own state; the tape's supply the quotes)."""
    size = source.size

    def trade(data: dict[str, Any]) -> dict[str, str]:
        price = float(data["p"])
        return {
            "product_id": product,
            "trade_id": str(data["t"]),
            "price": strip(data["p"]),
            "size": plain(size(data, "q", price), 8),
            "time": rfc3339(data["T"] * _MS, 6),
            "side": "BUY" if data["m"] else "SELL",  # Coinbase's side is the maker's
        }

    tape = Tape()
    sequence = iter(range(1_000_000))
    day = Day(figures, float(source.before[-1]["p"]))
    quote = source.first_quote

    def ticker(at: int, kind: str) -> None:
        bid, ask = float(quote["b"]), float(quote["a"])
        data = {
            "type": "ticker",
            "product_id": product,
            "price": plain(day.last, 2),
            "volume_24_h": plain(day.volume, 8),
            "low_24_h": plain(day.low, 2),
            "high_24_h": plain(day.high, 2),
            "low_52_w": year[0],
            "high_52_w": year[1],
            "price_percent_chg_24_h": f"{(day.last - day.prev) / day.prev * 100:.14f}",
            "best_bid": strip(quote["b"]),
            "best_ask": strip(quote["a"]),
            "best_bid_quantity": plain(size(quote, "B", bid), 8),
            "best_ask_quantity": plain(size(quote, "A", ask), 8),
        }
        envelope = {
            "channel": "ticker",
            "timestamp": rfc3339(source.venue_ns(at)),
            "sequence_num": next(sequence),
        }
        tape.add(at, envelope | {"events": [{"type": kind, "tickers": [data]}]})

    def trades(at: int, kind: str, batch: list[dict[str, Any]]) -> None:
        made = [trade(data) for data in reversed(batch)]  # newest first
        envelope = {
            "channel": "market_trades",
            "timestamp": rfc3339(source.venue_ns(at)),
            "sequence_num": next(sequence),
        }
        tape.add(at, envelope | {"events": [{"type": kind, "trades": made}]})

    first_at = source.events[0][0]
    trades(first_at, "snapshot", source.before[-100:])
    ticker(first_at, "snapshot")
    batch: list[dict[str, Any]] = []
    batch_at = last_at = quoted_at = first_at
    quote_changed = False
    for at, kind, data in source.events:
        if batch and at - batch_at >= COINBASE_BATCH_NS:
            trades(last_at, "update", batch)
            batch = []
        if kind == "trade":
            if not batch:
                batch_at = at
            batch.append(data)
            day.trade(float(data["p"]), size(data, "q", float(data["p"])))
            last_at = at
            continue
        if tuple(data[k] for k in "bBaA") != tuple(quote[k] for k in "bBaA"):
            quote_changed = True
        quote = data
        if quote_changed and not batch and at - quoted_at >= COINBASE_QUOTE_EVERY_NS:
            ticker(at, "update")
            quoted_at, quote_changed = at, False
    return tape


#: (folder, file name) of every file :func:`generate` makes
OUTPUTS = tuple(
    (venue, f"{tape}.{ext}")
    for venue, tapes in (
        ("bybit", ("spot_trades", "spot_book", "spot_tickers", "linear_trades", "linear_tickers")),
        ("coinbase", ("btc_usd", "eth_usd")),
    )
    for tape in tapes
    for ext in ("ndjson", "recv_ts")
)


def source_files(recorded: Path = RECORDED) -> list[Path]:
    """The recordings :func:`generate` reads."""
    return [recorded / f"{stem}.{ext}.gz" for stem in SOURCES.values() for ext in ("ndjson", "recv_ts")]


def generate(recorded: Path = RECORDED) -> dict[str, str]:
    """Every generated file, by its path under ``feedd/sim/data``."""
    return {f"bybit/{name}": text for name, text in bybit(recorded).items()} | {
        f"coinbase/{name}": text for name, text in coinbase(recorded).items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recorded", type=Path, default=RECORDED, help="the shared recordings folder")
    parser.add_argument("--out", type=Path, default=OUT, help="the package's data folder")
    args = parser.parse_args()
    for name, text in generate(args.recorded).items():
        path = args.out / name
        path.write_text(text, encoding="utf-8")
        print(f"{path}: {text.count(chr(10))} lines, {len(text.encode())} bytes")


if __name__ == "__main__":
    main()
