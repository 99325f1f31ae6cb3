"""Bybit v5 market state and payloads for the simulator: public trades, tickers, top of book.

Each category replays bundled recordings (``feedd/sim/data/bybit/README.md``): spot its own
trades, order book (reduced to the top of book) and tickers (for ``usdIndexPrice``); linear its
trades and BTCUSDT's ticker stream (best bid/ask, mark, index, open interest). Inverse has no
recording: it plays the linear tapes, with sizes turned into USD contracts (a contract is 1 USD
of notional) and volume and turnover swapped accordingly, as inverse contracts report them.

Every simulated symbol plays the whole tape of its category: a recorded price becomes the same
move relative to the symbol's own level, a recorded size the same notional at that level. The
ticker is the market's own state (its last trade, 24 h statistics, the quote tape's fields), so
a linear ``delta`` holds exactly the fields that changed since the last push, and a new
subscriber's ``snapshot`` is the state every earlier subscriber has merged to.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Mapping
from functools import cache
from typing import Any, Final

import attrs
import orjson

from feedd.sim.market import Market, price_factor
from feedd.sim.replay import Recording, load_recording

_SEQUENCE_STEP: Final = 7  # Bybit's cross sequence only has to increase
_SPOT_TRADE_ID: Final = 2_290_000_001_189_048_101  # spot trade ids are numeric strings (recorded)
_TRADE_ID_NAMESPACE: Final = uuid.UUID("9b1c3a52-7f0e-4f43-8d1e-2f5b6a0c9e11")
_FUNDING_PERIOD_MS: Final = 8 * 3_600_000


@attrs.frozen(slots=True)
class Tapes:
    """One category's recordings and the reference prices that turn them into relative moves."""

    trades: Recording
    #: the first recorded price of each symbol in ``trades``
    trade_refs: Mapping[str, float]
    #: spot: top-of-book rows {"b": [price, size], "a": [...]}; linear: BTCUSDT ticker frames
    quotes: Recording
    quote_ref: float
    #: spot only: BTCUSDT ticker frames, for usdIndexPrice
    index: Recording | None
    index_ref: float


def top_of_book(recording: Recording) -> Recording:
    """The best bid and ask after each frame of an ``orderbook.<depth>`` recording (snapshot, then
    deltas where a size of "0" deletes the level), with the frames' pacing."""
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    rows: list[Mapping[str, Any]] = []
    for frame in recording.payloads:
        data = frame["data"]
        if frame["type"] == "snapshot":
            bids.clear()
            asks.clear()
        for side, book in (("b", bids), ("a", asks)):
            for price, size in data[side]:
                if float(size) == 0:
                    book.pop(price, None)
                else:
                    book[price] = size
        bid = max(bids, key=float)
        ask = min(asks, key=float)
        rows.append({"b": [bid, bids[bid]], "a": [ask, asks[ask]]})
    return Recording(name=f"{recording.name} (top of book)", payloads=tuple(rows), gaps=recording.gaps)


def _first_prices(trades: Recording) -> dict[str, float]:
    refs: dict[str, float] = {}
    for frame in trades.payloads:
        for trade in frame["data"]:
            refs.setdefault(trade["s"], float(trade["p"]))
    return refs


@cache
def tapes(category: str) -> Tapes:
    """The recordings a category replays (inverse shares linear's), loaded once."""
    if category == "spot":
        trades = load_recording("bybit", "spot_trades")
        index = load_recording("bybit", "spot_tickers")
        return Tapes(
            trades=trades,
            trade_refs=_first_prices(trades),
            quotes=top_of_book(load_recording("bybit", "spot_book")),
            quote_ref=float(index.payloads[0]["data"]["lastPrice"]),
            index=index,
            index_ref=float(index.payloads[0]["data"]["lastPrice"]),
        )
    trades = load_recording("bybit", "linear_trades")
    quotes = load_recording("bybit", "linear_tickers")
    reference = float(quotes.payloads[0]["data"]["lastPrice"])
    return Tapes(trades, _first_prices(trades), quotes, reference, None, reference)


def _fixed(value: float, places: int) -> str:
    return f"{value:.{places}f}"


def _plain(value: float, places: int) -> str:
    """Spot prints numbers without trailing zeros ("65140.5", "20575")."""
    text = f"{value:.{places}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


class BybitMarket(Market):
    """One symbol of one category: its trades, ticker state, best quote and their payloads."""

    def __init__(self, category: str, symbol: str, index: int, now_ms: int) -> None:
        self.category = category
        self.tapes = tapes(category)
        self.inverse = category == "inverse"
        recorded = symbol + "T" if self.inverse else symbol  # BTCUSD plays BTCUSDT's tape
        refs = self.tapes.trade_refs
        self.level = refs.get(recorded) or refs["BTCUSDT"] * price_factor(recorded)
        super().__init__(symbol, index, self.level)
        if category == "spot":
            self.qty_decimals += 1
            self._price_text = _plain
        else:
            self.qty_decimals = max(0, self.qty_decimals - 2)
            self._price_text = _fixed
        crc = zlib.crc32(f"{category}:{symbol}".encode())
        self.sequence = 100_000_000_000 + crc % 10**11
        self.trades_made = 0
        self.tick_direction = "ZeroPlusTick"
        self.bid = self.ask = self.level
        self.bid_size = self.ask_size = 0.0
        self.book_update = 1
        self.book_sequence = self.sequence
        #: trio time of the last orderbook.1 push (re-sent after 3 s unchanged)
        self.book_sent_at = 0.0
        self.mark = self.index_price = self.prev_hour = self.level
        self.open_interest = 4e9 / self.level
        self.funding_rate = "0.0001"
        self.next_funding = str((now_ms // _FUNDING_PERIOD_MS + 1) * _FUNDING_PERIOD_MS)
        self.apply_quote(self.tapes.quotes.payloads[0])
        if self.tapes.index is not None:
            self.apply_index(self.tapes.index.payloads[0])
        #: the ticker as last pushed, and its cross sequence: what a new subscriber's snapshot holds
        self.published = self.ticker_data()
        self.published_cs = self.sequence

    def channel(self, topic: str) -> str:
        """The simulator's delivery key of ``<topic>.<symbol>`` in this category."""
        return f"{self.category}:{topic}.{self.symbol}"

    # ---- numbers -------------------------------------------------------------------------

    def price(self, value: float) -> str:
        return self._price_text(value, self.price_decimals)

    def size(self, base: float, price: float) -> str:
        """A size in base units, or in USD contracts on inverse."""
        if self.inverse:
            return str(max(1, round(base * price)))
        step = 10.0**-self.qty_decimals
        return self._price_text(max(step, round(base, self.qty_decimals)), self.qty_decimals)

    def _scaled(self, recorded: str, reference: float) -> float:
        return round(self.level * float(recorded) / reference, self.price_decimals)

    # ---- trades --------------------------------------------------------------------------

    def trades(self, frame: Mapping[str, Any], now: int) -> list[dict[str, Any]]:
        """The recorded batch as this symbol's trades, with fresh ids and times; updates state."""
        self.sequence += _SEQUENCE_STEP
        made: list[dict[str, Any]] = []
        for rec in frame["data"]:
            price = self._scaled(rec["p"], self.tapes.trade_refs[rec["s"]])
            notional = float(rec["p"]) * float(rec["v"])
            if self.inverse:
                size = str(max(1, round(notional)))
                base = int(size) / price
            else:
                size = self.size(notional / price, price)
                base = float(size)
            self._tick(price)
            self.on_trade(price, base)
            self.trades_made += 1
            trade_time = now - max(0, int(frame["ts"]) - int(rec["T"]))
            if self.category == "spot":
                made.append(
                    {
                        "i": str(_SPOT_TRADE_ID + self.index * 10**15 + self.trades_made),
                        "T": trade_time,
                        "p": self.price(price),
                        "v": size,
                        "S": rec["S"],
                        "seq": self.sequence,
                        "s": self.symbol,
                        "BT": False,
                        "RPI": False,
                    }
                )
            else:
                trade_id = uuid.uuid5(
                    _TRADE_ID_NAMESPACE, f"{self.category}:{self.symbol}:{self.trades_made}"
                )
                made.append(
                    {
                        "T": trade_time,
                        "s": self.symbol,
                        "S": rec["S"],
                        "v": size,
                        "p": self.price(price),
                        "L": self.tick_direction,
                        "i": str(trade_id),
                        "BT": False,
                        "RPI": False,
                        "seq": self.sequence,
                    }
                )
        return made

    def _tick(self, price: float) -> None:
        if price > self.last_price:
            self.tick_direction = "PlusTick"
        elif price < self.last_price:
            self.tick_direction = "MinusTick"
        elif self.tick_direction in ("PlusTick", "ZeroPlusTick"):
            self.tick_direction = "ZeroPlusTick"
        else:
            self.tick_direction = "ZeroMinusTick"

    def trade_frame(self, trades: list[dict[str, Any]], now: int) -> str:
        topic = f"publicTrade.{self.symbol}"
        if self.category == "spot":
            frame = {"topic": topic, "ts": now, "type": "snapshot", "data": trades}
        else:
            frame = {"topic": topic, "type": "snapshot", "ts": now, "data": trades}
        return orjson.dumps(frame).decode()

    # ---- quotes --------------------------------------------------------------------------

    def apply_quote(self, payload: Mapping[str, Any]) -> bool:
        """Apply one quote-tape payload; whether the best bid or ask changed."""
        before = (self.bid, self.bid_size, self.ask, self.ask_size)
        reference = self.tapes.quote_ref
        size_scale = reference / self.level  # the same notional at this symbol's level
        if self.category == "spot":
            (bid, bid_size), (ask, ask_size) = payload["b"], payload["a"]
            self.bid, self.bid_size = self._scaled(bid, reference), float(bid_size) * size_scale
            self.ask, self.ask_size = self._scaled(ask, reference), float(ask_size) * size_scale
        else:
            data = payload["data"]
            if "bid1Price" in data:
                self.bid, self.bid_size = (
                    self._scaled(data["bid1Price"], reference),
                    float(data["bid1Size"]) * size_scale,
                )
            if "ask1Price" in data:
                self.ask, self.ask_size = (
                    self._scaled(data["ask1Price"], reference),
                    float(data["ask1Size"]) * size_scale,
                )
            if "markPrice" in data:
                self.mark = self._scaled(data["markPrice"], reference)
            if "indexPrice" in data:
                self.index_price = self._scaled(data["indexPrice"], reference)
            if "prevPrice1h" in data:
                self.prev_hour = self._scaled(data["prevPrice1h"], reference)
            if "openInterest" in data:
                self.open_interest = float(data["openInterest"]) * size_scale
            self.funding_rate = data.get("fundingRate", self.funding_rate)
        tick = 10.0**-self.price_decimals
        # Scaling can shrink the spread below the tick; keep the book uncrossed and unlocked.
        self.ask = max(self.ask, round(self.bid + tick, self.price_decimals))
        if (self.bid, self.bid_size, self.ask, self.ask_size) == before:
            return False
        self.book_update += 1
        self.book_sequence = self.sequence
        return True

    def apply_index(self, payload: Mapping[str, Any]) -> None:
        """Spot: the USD index price from a recorded ticker frame (some carry "" instead)."""
        recorded = payload["data"].get("usdIndexPrice")
        if recorded:
            self.index_price = self.level * float(recorded) / self.tapes.index_ref

    def book_frame(self, now: int) -> str:
        """An ``orderbook.1`` message: level 1 is always a snapshot of one level per side."""
        data = {
            "s": self.symbol,
            "b": [[self.price(self.bid), self.size(self.bid_size, self.bid)]],
            "a": [[self.price(self.ask), self.size(self.ask_size, self.ask)]],
            "u": self.book_update,
            "seq": self.book_sequence,
        }
        topic = f"orderbook.1.{self.symbol}"
        if self.category == "spot":
            frame = {"topic": topic, "ts": now, "type": "snapshot", "data": data, "cts": now - 1}
        else:
            frame = {"topic": topic, "type": "snapshot", "ts": now, "data": data, "cts": now - 1}
        return orjson.dumps(frame).decode()

    # ---- ticker --------------------------------------------------------------------------

    def ticker_data(self) -> dict[str, str]:
        """The full ticker of the current state, in the recorded field order."""
        change = (self.last_price - self.open_price) / self.open_price
        if self.category == "spot":
            return {
                "symbol": self.symbol,
                "lastPrice": self.price(self.last_price),
                "highPrice24h": self.price(self.high),
                "lowPrice24h": self.price(self.low),
                "prevPrice24h": self.price(self.open_price),
                "volume24h": _fixed(self.volume, 6),
                "turnover24h": _fixed(self.quote_volume, 8),
                "price24hPcnt": _fixed(change, 4),
                "usdIndexPrice": _fixed(self.index_price, 6),
            }
        if self.inverse:
            # Inverse contracts count volume and open interest in USD contracts, turnover and
            # open-interest value in the base coin.
            volume, turnover = _fixed(self.quote_volume, 0), _fixed(self.volume, 4)
            interest, value = self.open_interest * self.mark, self.open_interest
            interest_text = _fixed(interest, 0)
        else:
            volume, turnover = _fixed(self.volume, 4), _fixed(self.quote_volume, 4)
            interest, value = self.open_interest, self.open_interest * self.mark
            interest_text = _fixed(interest, self.qty_decimals)
        return {
            "symbol": self.symbol,
            "tickDirection": self.tick_direction,
            "price24hPcnt": _fixed(change, 6),
            "lastPrice": self.price(self.last_price),
            "prevPrice24h": self.price(self.open_price),
            "highPrice24h": self.price(self.high),
            "lowPrice24h": self.price(self.low),
            "prevPrice1h": self.price(self.prev_hour),
            "markPrice": self.price(self.mark),
            "indexPrice": self.price(self.index_price),
            "openInterest": interest_text,
            "openInterestValue": _fixed(value, 2),
            "turnover24h": turnover,
            "volume24h": volume,
            "fundingIntervalHour": "8",
            "fundingCap": "0.005",
            "singleOpenInterest": _fixed(interest / 2, 0 if self.inverse else self.qty_decimals),
            "singleOpenInterestValue": _fixed(value / 2, 2),
            "nextFundingTime": self.next_funding,
            "fundingRate": self.funding_rate,
            "bid1Price": self.price(self.bid),
            "bid1Size": self.size(self.bid_size, self.bid),
            "ask1Price": self.price(self.ask),
            "ask1Size": self.size(self.ask_size, self.ask),
            "preOpenPrice": "",
            "preQty": "",
            "curPreListingPhase": "",
        }

    def ticker_changes(self) -> dict[str, str] | None:
        """Record the current ticker as pushed; the fields that changed since the last push
        (None when nothing did). Called after every state change, subscribed or not, so
        :attr:`published` is always the state clients have merged to."""
        data = self.ticker_data()
        changed = {key: value for key, value in data.items() if self.published.get(key) != value}
        if not changed:
            return None
        self.published = data
        self.sequence += _SEQUENCE_STEP
        self.published_cs = self.sequence
        return changed

    def ticker_frame(self, data: Mapping[str, str], now: int, *, snapshot: bool) -> str:
        """A ``tickers`` message: spot always a full snapshot; linear/inverse a snapshot or a
        delta of ``data`` (the changed fields)."""
        topic = f"tickers.{self.symbol}"
        if self.category == "spot":
            frame: dict[str, Any] = {
                "topic": topic,
                "ts": now,
                "type": "snapshot",
                "cs": self.published_cs,
                "data": self.published,
            }
        else:
            body = dict(data) if snapshot else {"symbol": self.symbol, **data}
            kind = "snapshot" if snapshot else "delta"
            frame = {"topic": topic, "type": kind, "data": body, "cs": self.published_cs, "ts": now}
        return orjson.dumps(frame).decode()
