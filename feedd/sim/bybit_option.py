"""A local Bybit v5 options endpoint (``/v5/public/option``) and its instruments-info, on
:mod:`feedd.sim.bybit`.

What options do differently (protocols §7, checked against Bybit's ``/v5/ws/connect``, trade,
ticker and instruments pages): the subscribe reply is ``COMMAND_RESP`` naming
``successTopics`` and ``failTopics`` (a bad topic fails alone; that it lands in ``failTopics``
is [unverified]); the pong is ``{"args": ["<ms>"], "op": "pong"}``; ``publicTrade`` is by base
coin (``publicTrade.BTC`` carries every BTC option's trades); ``tickers.<option>`` are snapshots
only, every 100 ms; at most 2000 args per connection; instruments-info lists one ``baseCoin``
per query (BTC by default), paged by ``cursor``. The rest (paths, the 21,000-character args
budget, the 10-minute idle cut, pings, faults) is :class:`~feedd.sim.bybit.BybitProtocol`'s.

The tape is Bybit's recorded linear trades (:mod:`feedd.sim.bybit_market`): each option plays
the trades of its underlying's linear contract as premium moves (a 1 % move in the underlying
is a 1 % move in the premium, well enough for a test feed), sizes in coins to 0.01, trade ids
counting one by one per option.
"""

from __future__ import annotations

import calendar
import time
import zlib
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, Final

import orjson
import trio

from feedd.sim.bybit import BybitConnection, BybitProtocol, BybitSimulator
from feedd.sim.bybit_market import tapes
from feedd.sim.market import Market
from feedd.sim.protocol import Answer
from feedd.sim.replay import play
from feedd.sim.rest import HttpRequest, HttpResponse
from feedd.sim.spec import SimSpec

DEFAULT_SYMBOLS: Final = (
    "BTC-25DEC26-100000-C", "BTC-25DEC26-90000-P", "BTC-25DEC26-110000-C-USDT", "ETH-25DEC26-3500-C",
    "SOL-25DEC26-150-C",
)
#: [connect] "Options can input up to 2000 args for a single connection"
MAX_ARGS: Final = 2000
TICKER_INTERVAL: Final = 0.1  # [ticker] "Push frequency: 100ms"
_MONTHS: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _expiry_ms(symbol: str) -> int:
    """08:00 UTC of the symbol's expiry (``25DEC26``), Bybit's delivery hour."""
    day = symbol.split("-")[1]
    parsed = time.strptime(f"{day[:-5]} {_MONTHS.index(day[-5:-2]) + 1} {day[-2:]}", "%d %m %y")
    return (calendar.timegm(parsed) + 8 * 3600) * 1000


class OptionMarket(Market):
    """One option: its premium level, trades and ticker, priced off its underlying's tape."""

    def __init__(self, symbol: str, index: int) -> None:
        self.coin, _, strike, kind, *settle = symbol.split("-")
        self.underlying = f"{self.coin}USDT"
        self.settle = settle[0] if settle else "USDC"
        self.strike = float(strike)
        self.ref = tapes("linear").trade_refs.get(self.underlying, 60_000.0)
        spot = 60_000.0 if self.coin == "BTC" else 3_000.0
        intrinsic = max(0.0, spot - self.strike) if kind == "C" else max(0.0, self.strike - spot)
        super().__init__(symbol, index, round(intrinsic + spot * 0.04, 0))
        self.price_decimals, self.qty_decimals = (0, 2)
        self.trade_id = 10**9 * (1 + zlib.crc32(symbol.encode()) % 1000)
        self.volume = 120.0  # coins traded in 24 h
        self.quote_volume = self.volume * spot

    def trades(self, frame: Mapping[str, Any], now: int) -> list[dict[str, Any]]:
        rows = []
        for rec in frame["data"]:
            price = max(5.0, round(self.open_price * float(rec["p"]) / self.ref / 5) * 5)
            size = max(0.01, round(float(rec["v"]), 2))
            self.on_trade(price, size)
            self.trade_id += 1
            rows.append({
                "T": now - max(0, int(frame["ts"]) - int(rec["T"])), "s": self.symbol, "S": rec["S"],
                "v": f"{size:.2f}", "p": f"{price:.0f}", "i": str(self.trade_id), "BT": False,
                "RPI": False, "seq": self.trade_id, "mP": f"{price:.2f}", "iP": f"{self.ref:.2f}",
                "mIv": "0.45", "iv": "0.46",
            })
        return rows

    def ticker(self, now: int) -> str:
        last = self.last_price
        data = {
            "symbol": self.symbol, "bidPrice": f"{last - 5:.0f}", "bidSize": "12.5", "bidIv": "0.44",
            "askPrice": f"{last + 5:.0f}", "askSize": "9.1", "askIv": "0.47", "lastPrice": f"{last:.0f}",
            "highPrice24h": f"{self.high:.0f}", "lowPrice24h": f"{self.low:.0f}",
            "markPrice": f"{last:.8f}", "indexPrice": f"{self.ref:.2f}", "markPriceIv": "0.45",
            "underlyingPrice": f"{self.ref:.2f}", "openInterest": "49.85",
            "turnover24h": f"{self.quote_volume:.4f}", "volume24h": f"{self.volume:.2f}",
            "totalVolume": f"{self.volume * 3:.0f}", "totalTurnover": f"{self.quote_volume * 3:.0f}",
            "delta": "0.5", "gamma": "0.0002", "vega": "0.8", "theta": "-19.9",
            "predictedDeliveryPrice": "0", "change24h": f"{(last - self.open_price) / self.open_price:.8f}",
        }
        frame = {"id": f"tickers.{self.symbol}-{self.trade_id}-{now}", "topic": f"tickers.{self.symbol}",
                 "ts": now, "data": data, "type": "snapshot"}
        return orjson.dumps(frame).decode()


class OptionProtocol(BybitProtocol):
    """BybitProtocol with the option replies: COMMAND_RESP, the option pong, per-topic failures."""

    def __init__(self, symbols: Iterable[str], **options: Any) -> None:
        names = tuple(symbols)
        super().__init__(symbols={"option": names}, default_category="option", **options)
        self.coins = frozenset(s.partition("-")[0] for s in names)

    def receive(self, conn: BybitConnection, text: str) -> Answer:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            request = None
        op = request.get("op") if isinstance(request, dict) else None
        if op == "ping":
            pong = orjson.dumps({"args": [str(_now_ms())], "op": "pong"}).decode()
            return Answer(ping=True) if self.silent_pongs else Answer(frames=(pong,), ping=True)
        args = request.get("args") if isinstance(request, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            # [unverified] the wording; the shape is the other markets' refusal
            return self._fail(conn, op if isinstance(op, str) else "", "error:invalid request", None)
        topics = [str(arg) for arg in dict.fromkeys(args)]
        if op == "unsubscribe":
            held = [t for t in topics if t in conn.topics]
            for topic in held:
                del conn.topics[topic]
            return Answer(frames=(self._command(conn, topics, []),), stop=tuple(held))
        if self.swallow_subscribes:
            return Answer()
        ok: list[str] = []
        failed: list[str] = []
        budget = conn.args_chars
        for topic in topics:
            budget += len(topic)
            fits = len(conn.topics) + len(ok) < MAX_ARGS and budget <= self.max_args_chars
            (ok if fits and topic not in conn.topics and self._valid(topic) else failed).append(topic)
        for topic in ok:
            conn.topics[topic] = None
        streamed = tuple(t for t in ok if not t.startswith("orderbook."))
        return Answer(frames=(self._command(conn, ok, failed),), start=streamed)

    def _valid(self, topic: str) -> bool:
        kind, _, name = topic.partition(".")
        if kind == "publicTrade":  # refusing an option refuses its coin's trade topic
            return name in self.coins and all(s.partition("-")[0] != name for s in self.refused)
        if kind == "orderbook":  # [ob]: depths 25 and 100 for options, acked and silent here
            depth, _, name = name.partition(".")
            return depth in ("25", "100") and name in self._symbols["option"]
        return kind == "tickers" and name in self._symbols["option"] and name not in self.refused

    def _command(self, conn: BybitConnection, ok: list[str], failed: list[str]) -> str:
        body = {"success": not failed, "conn_id": conn.conn_id,
                "data": {"failTopics": failed, "successTopics": ok}, "type": "COMMAND_RESP"}
        return orjson.dumps(body).decode()


class BybitOptionSimulator(BybitSimulator):
    """Bybit's option stream and instruments-info on localhost; every symbol carries data."""

    def __init__(self, *, symbols: Iterable[str] = DEFAULT_SYMBOLS, speed: float = 1.0,
                 instruments_page_size: int = 500, **options: Any) -> None:
        super().__init__(speed=speed, instruments_page_size=instruments_page_size)
        self.option_symbols = tuple(dict.fromkeys(s.upper() for s in symbols))
        self.protocol = self._protocol = OptionProtocol(self.option_symbols, **options)
        self._options = {s: OptionMarket(s, i) for i, s in enumerate(self.option_symbols)}
        self.symbols = {"option": self.option_symbols}
        self._page_coin = "BTC"

    @property
    def ws_url(self) -> str:
        return self.endpoint("option")

    def _run_feeds(self, nursery: trio.Nursery) -> None:
        trades = tapes("linear").trades
        for market in self._options.values():
            start = market.index * len(trades) // max(1, len(self._options))
            emit = partial(self._on_option_trades, market)
            run = partial(play, trades, emit, demand=market.demand, speed=self.speed, start=start)
            nursery.start_soon(run)
        nursery.start_soon(self._tick)

    def _on_start(self, conn: BybitConnection, channel: str) -> None:
        for market in self._markets_of(channel):
            market.demand.add(1)

    def _on_stop(self, conn: BybitConnection, channel: str) -> None:
        for market in self._markets_of(channel):
            market.demand.add(-1)

    def _markets_of(self, channel: str) -> list[OptionMarket]:
        kind, _, name = channel.partition(".")
        if kind == "publicTrade":
            return [m for m in self._options.values() if m.coin == name]
        return [self._options[name]] if name in self._options else []

    def _on_option_trades(self, market: OptionMarket, frame: Mapping[str, Any]) -> None:
        # the linear tape holds several contracts: an option plays its underlying's rows only
        if frame["data"][0]["s"] != market.underlying and market.underlying in tapes("linear").trade_refs:
            return
        now = _now_ms()
        rows = market.trades(frame, now)
        channel = f"publicTrade.{market.coin}"
        if self.has_subscribers(channel):
            body = {"id": f"{channel}-{market.trade_id}-{now}", "topic": channel, "ts": now,
                    "data": rows, "type": "snapshot"}
            self.publish(channel, orjson.dumps(body).decode())

    async def _tick(self) -> None:
        deadline = trio.current_time()
        while True:
            deadline += TICKER_INTERVAL
            await trio.sleep_until(deadline)
            now = _now_ms()
            for market in self._options.values():
                channel = f"tickers.{market.symbol}"
                if self.has_subscribers(channel):
                    self.publish(channel, market.ticker(now))

    # ---- REST ----------------------------------------------------------------------------

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        # [instr] one base coin per query: "option: returns BTC by default"
        self._page_coin = request.query.get("baseCoin", ["BTC"])[-1]
        return super()._answer_rest(request)

    def instruments(self, category: str) -> list[dict[str, Any]]:
        """The options of the base coin asked for, all ``Trading``."""
        return [_instrument(m) for m in self._options.values() if m.coin == self._page_coin]


def _instrument(market: OptionMarket) -> dict[str, Any]:
    """An instruments-info row (samples/bybit_option/instruments_info_option_response.json)."""
    symbol, usdt = market.symbol, market.settle == "USDT"
    return {
        "symbol": symbol, "status": "Trading", "baseCoin": market.coin,
        "quoteCoin": market.settle, "settleCoin": market.settle,
        "optionsType": "Call" if symbol.split("-")[3] == "C" else "Put",
        "launchTime": "1743669649256", "deliveryTime": str(_expiry_ms(symbol)), "deliveryFeeRate": "0.00015",
        "priceFilter": {"minPrice": "5", "maxPrice": "1110000", "tickSize": "5"},
        "lotSizeFilter": {"maxOrderQty": "500", "minOrderQty": "0.01", "qtyStep": "0.01"},
        "displayName": symbol.removesuffix("-USDT").replace("-", "USDT-", 1) if usdt else symbol,
    }


#: what the tools need to run this simulator (found by :func:`feedd.sim.registry`)
SIMULATOR: Final = SimSpec(
    name="bybit-option",
    help="Bybit v5 public options stream",
    groups=(("bybit-option",),),
    make=lambda venue_ids, speed: BybitOptionSimulator(speed=speed),
    # of different coins, as a refused symbol refuses its coin's publicTrade topic in the faults
    symbols={"bybit-option": ("BTC-25DEC26-100000-C", "ETH-25DEC26-3500-C")},
    spare="SOL-25DEC26-150-C",
    speed=5.0,  # the recorded tape is sparse
)

__all__ = ["SIMULATOR", "BybitOptionSimulator", "OptionProtocol"]
