"""Coinbase Advanced Trade market state and payloads for the simulator: trades and tickers.

Each product replays one bundled tape (``feedd/sim/data/coinbase/README.md``): BTC-USD and
ETH-USD their own recording, other products alternate between the two, scaled to their own
price level. A tape's ``market_trades`` frames become batches of new trades with fresh ids and
times; its ``ticker`` frames supply the best bid and ask. Tickers are built from the product's
own state, so a new subscriber's snapshot is the ticker every earlier subscriber saw last.

The wire's time formats are Go's: RFC 3339 with up to nine fractional digits and trailing
zeros dropped (``2026-08-09T21:05:52.85643877Z``), trade times to the microsecond, and the
heartbeat's ``current_time`` as ``time.Time.String()`` prints it, monotonic reading included.
"""

from __future__ import annotations

import calendar
import itertools
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Final

import attrs
import orjson

from feedd.sim.market import Market, price_factor
from feedd.sim.replay import Recording, load_recording

#: the products the bundled recording holds, each a tape of its own
RECORDED: Final = ("BTC-USD", "ETH-USD")
#: trades in a market_trades snapshot (recorded)
SNAPSHOT_TRADES: Final = 100
#: the base increment of every simulated product (Coinbase's for BTC-USD and ETH-USD)
SIZE_DECIMALS: Final = 8
_NS: Final = 1_000_000_000


# ---- time formats --------------------------------------------------------------------------------


def rfc3339(ns: int, digits: int = 9) -> str:
    """Go's RFC3339Nano: ``digits`` fractional digits at most, trailing zeros (and a bare dot)
    dropped, always UTC ``Z``."""
    seconds, fraction = divmod(ns, _NS)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    kept = f"{fraction:09d}"[:digits].rstrip("0")
    return f"{stamp}.{kept}Z" if kept else f"{stamp}Z"


def go_time(ns: int, monotonic: float) -> str:
    """``time.Time.String()`` of a wall time with a monotonic reading
    (``2026-08-09 21:05:48.854840045 +0000 UTC m=+41691.260485341``)."""
    seconds, fraction = divmod(ns, _NS)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    kept = f"{fraction:09d}".rstrip("0")
    wall = f"{stamp}.{kept}" if kept else stamp
    return f"{wall} +0000 UTC m=+{monotonic:.9f}"


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 UTC time as Coinbase prints them."""
    whole, _, fraction = text.removesuffix("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * _NS + int(fraction.ljust(9, "0")[:9] or "0")


def _plain(value: float, places: int) -> str:
    """Coinbase prints decimals without trailing zeros ("65083.67", "1925", "0.0000052")."""
    text = f"{value:.{places}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


# ---- tapes ---------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Tape:
    """One recorded product: its two snapshots, and its update frames with their pacing."""

    product: str
    #: the recorded market_trades snapshot's trades, newest first
    snapshot_trades: tuple[Mapping[str, Any], ...]
    #: when that snapshot was sent (ns), which the trades' ages are measured from
    snapshot_at: int
    #: the recorded ticker snapshot
    ticker: Mapping[str, str]
    #: market_trades and ticker update frames, as received
    updates: Recording

    @property
    def reference(self) -> float:
        """The price recorded moves are relative to: the ticker snapshot's."""
        return float(self.ticker["price"])


def keep_only(recording: Recording, keep: Callable[[Mapping[str, Any]], bool]) -> Recording:
    """The payloads ``keep`` selects, each still preceded by the time that passed since the
    previous selected one (the wrap-around gap is their mean gap)."""
    payloads: list[Mapping[str, Any]] = []
    stamps: list[float] = []
    clock = 0.0
    for index, (payload, gap) in enumerate(zip(recording.payloads, recording.gaps, strict=True)):
        if index:
            clock += gap
        if keep(payload):
            payloads.append(payload)
            stamps.append(clock)
    if len(payloads) < 2:
        raise ValueError(f"recording {recording.name!r} keeps {len(payloads)} payloads, needs 2")
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    wrap = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return Recording(name=recording.name, payloads=tuple(payloads), gaps=(wrap, *gaps))


def _kind(payload: Mapping[str, Any]) -> str:
    return str(payload["events"][0]["type"])


@cache
def tape(product: str) -> Tape:
    """The bundled tape of a recorded product (see :data:`RECORDED`), loaded once."""
    recording = load_recording("coinbase", product.lower().replace("-", "_"))
    snapshots = {p["channel"]: p for p in recording.payloads if _kind(p) == "snapshot"}
    trades = snapshots["market_trades"]
    return Tape(
        product=product,
        snapshot_trades=tuple(trades["events"][0]["trades"]),
        snapshot_at=parse_rfc3339(trades["timestamp"]),
        ticker=snapshots["ticker"]["events"][0]["tickers"][0],
        updates=keep_only(recording, lambda p: _kind(p) == "update"),
    )


def source_of(product: str, index: int) -> str:
    """The recorded product whose tape ``product`` plays."""
    return product if product in RECORDED else RECORDED[index % len(RECORDED)]


# ---- one product ---------------------------------------------------------------------------------


class CoinbaseMarket(Market):
    """One product: its recent trades, 24 h statistics, best bid and ask, and their payloads.

    ``source`` is the recorded product whose tape it plays; ``now_ns`` dates the seeded trades.
    """

    def __init__(self, product: str, index: int, source: str, now_ns: int) -> None:
        self.tape = tape(source)
        if product == source:
            level = self.tape.reference
        else:
            base = product.partition("-")[0]
            level = tape(RECORDED[0]).reference * price_factor(base + "USDT")
        super().__init__(product, index, level)
        self.qty_decimals = SIZE_DECIMALS
        self.product = product
        #: recorded price x scale = this product's price; recorded size / scale = its size
        self.scale = level / self.tape.reference
        recorded = self.tape.ticker
        self.last_price = self._price(recorded["price"])
        self.open_price = self.last_price / (1 + float(recorded["price_percent_chg_24_h"]) / 100)
        self.low, self.high = self._price(recorded["low_24_h"]), self._price(recorded["high_24_h"])
        self.low_52w = self._price(recorded["low_52_w"])
        self.high_52w = self._price(recorded["high_52_w"])
        self.volume = float(recorded["volume_24_h"]) / self.scale
        self.bid = self.ask = self.last_price
        self.bid_size = self.ask_size = 0.0
        self.apply_quote(recorded)
        crc = zlib.crc32(product.encode())
        self.next_trade_id = 100_000_000 + crc % 900_000_000
        #: the last trades, oldest first: what a market_trades snapshot holds
        self.recent: deque[dict[str, str]] = deque(maxlen=SNAPSHOT_TRADES)
        for rec in reversed(self.tape.snapshot_trades):
            age = self.tape.snapshot_at - parse_rfc3339(rec["time"])
            self.recent.append(self._trade(rec, now_ns - age))
        #: the ticker as last pushed: what a ticker snapshot holds
        self.published = self.ticker_data()

    def channel(self, name: str) -> str:
        """The simulator's delivery key (and topic) of this product on channel ``name``."""
        return f"{name}:{self.product}"

    # ---- numbers ---------------------------------------------------------------------------

    def _price(self, recorded: str) -> float:
        return round(float(recorded) * self.scale, self.price_decimals)

    def price(self, value: float) -> str:
        return _plain(value, self.price_decimals)

    def size(self, value: float) -> str:
        step = 10.0**-self.qty_decimals
        return _plain(max(step, round(value, self.qty_decimals)), self.qty_decimals)

    # ---- trades ----------------------------------------------------------------------------

    def _trade(self, rec: Mapping[str, Any], at_ns: int) -> dict[str, str]:
        """A recorded trade as this product's next one (fresh id, time ``at_ns``)."""
        price = self._price(rec["price"])
        size = self.size(float(rec["size"]) / self.scale)
        trade_id = self.next_trade_id
        self.next_trade_id += 1
        return {
            "product_id": self.product,
            "trade_id": str(trade_id),
            "price": self.price(price),
            "size": size,
            "time": rfc3339(at_ns, 6),
            "side": rec["side"],
        }

    def trades(self, frame: Mapping[str, Any], now_ns: int) -> list[dict[str, str]]:
        """A recorded update frame's batch as new trades, newest first as recorded; each keeps
        its recorded delay behind the frame. Updates the last price and 24 h statistics."""
        sent = parse_rfc3339(frame["timestamp"])
        made: list[dict[str, str]] = []
        for rec in reversed(frame["events"][0]["trades"]):
            age = max(0, sent - parse_rfc3339(rec["time"]))
            trade = self._trade(rec, now_ns - age)
            self.on_trade(float(trade["price"]), float(trade["size"]))
            self.recent.append(trade)
            made.append(trade)
        made.reverse()
        return made

    def snapshot_trades(self) -> list[dict[str, str]]:
        """The last :data:`SNAPSHOT_TRADES` trades, newest first."""
        return list(reversed(self.recent))

    @staticmethod
    def trade_events(kind: str, trades: list[dict[str, str]]) -> str:
        """The ``events`` of a market_trades message of ``kind`` (snapshot or update)."""
        return orjson.dumps([{"type": kind, "trades": trades}]).decode()

    # ---- tickers ---------------------------------------------------------------------------

    def apply_quote(self, recorded: Mapping[str, Any]) -> None:
        """The best bid and ask of a recorded ticker, at this product's level."""
        self.bid = self._price(recorded["best_bid"])
        self.ask = self._price(recorded["best_ask"])
        self.bid_size = float(recorded["best_bid_quantity"]) / self.scale
        self.ask_size = float(recorded["best_ask_quantity"]) / self.scale
        # Scaling can shrink the spread below the tick; keep the book uncrossed and unlocked.
        tick = 10.0**-self.price_decimals
        self.ask = max(self.ask, round(self.bid + tick, self.price_decimals))

    def ticker_data(self) -> dict[str, str]:
        """The ticker of the current state, in the recorded field order."""
        change = (self.last_price - self.open_price) / self.open_price * 100
        return {
            "type": "ticker",
            "product_id": self.product,
            "price": self.price(self.last_price),
            "volume_24_h": _plain(self.volume, self.qty_decimals),
            "low_24_h": self.price(self.low),
            "high_24_h": self.price(self.high),
            "low_52_w": self.price(min(self.low_52w, self.low)),
            "high_52_w": self.price(max(self.high_52w, self.high)),
            "price_percent_chg_24_h": f"{change:.14f}",
            "best_bid": self.price(self.bid),
            "best_ask": self.price(self.ask),
            "best_bid_quantity": self.size(self.bid_size),
            "best_ask_quantity": self.size(self.ask_size),
        }

    def ticker_changes(self) -> dict[str, str] | None:
        """The current ticker when it differs from the one last pushed (which it becomes), else
        None. Called after every state change, subscribed or not, so :attr:`published` is
        always what subscribers saw last."""
        data = self.ticker_data()
        if data == self.published:
            return None
        self.published = data
        return data

    @staticmethod
    def ticker_events(kind: str, ticker: Mapping[str, str]) -> str:
        """The ``events`` of a ticker message of ``kind`` (snapshot or update)."""
        return orjson.dumps([{"type": kind, "tickers": [ticker]}]).decode()
