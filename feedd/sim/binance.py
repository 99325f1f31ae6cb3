"""A local Binance exchange: spot or USD-M futures market streams, replayed from recordings.

Speaks the real wire protocol (protocols/README.md §2): combined and raw stream paths, the
``SUBSCRIBE`` family of control requests with Binance's ack and error replies, server-sent ping
frames with a pong deadline, the per-connection message rate limit, and the futures route split.
:class:`BinanceProtocol` is that protocol as a pure object; :class:`BinanceSimulator` serves it
through :mod:`feedd.sim.server` and feeds it the bundled recording of BTCUSDT trades, aggregate
trades and book tickers (:mod:`feedd.sim.replay`), replayed at the recorded pace with fresh ids
and timestamps, and with prices scaled per symbol (:mod:`feedd.sim.market`).
"""

from __future__ import annotations

import argparse
import re
import ssl
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qsl

import attrs
import orjson
import trio

from feedd.sim.market import Market, price_factor, quote_asset
from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection, status_phrase
from feedd.sim.replay import Demands, Recording, load_recording, play
from feedd.sim.rest import HttpRequest, HttpResponse
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec, symbol_list

DEFAULT_SYMBOLS: Final = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")
#: listed in exchangeInfo with status "BREAK" (not trading), so clients can test rejecting it
BREAK_SYMBOL: Final = "BCHSVUSDT"
#: trades per symbol the REST history keeps (the real one keeps far more; tests need a window)
HISTORY: Final = 20_000
#: §2.5: "At most 1024 streams per connection."
MAX_STREAMS_PER_CONNECTION: Final = 1024

# §2.6: since the 2026-03-06 announcement, /public carries the high-frequency book streams and
# /market the regular ones; a stream asked for on the other route is acked and never pushed.
_FUTURES_KIND_ROUTE: Final = {
    "bookTicker": "public",
    "trade": "market",
    "aggTrade": "market",
    "ticker": "market",
}
#: the tapes each kind of stream is made of: the 24 h ticker sums up all three
_TAPES_OF_KIND: Final = {
    "trade": ("trade",),
    "aggTrade": ("aggTrade",),
    "bookTicker": ("bookTicker",),
    "ticker": ("trade", "aggTrade", "bookTicker"),
}
#: spot serves every kind of stream the tapes make (so a stream taken always has its tapes)
_SPOT_KINDS: Final = frozenset(_TAPES_OF_KIND)
_TRADE_KINDS: Final = frozenset(("trade", "aggTrade"))
_SPOT_ENDPOINTS: Final = {"/stream": ("", True), "/ws": ("", False)}
_FUTURES_ENDPOINTS: Final = {
    "/market/stream": ("market", True),
    "/market/ws": ("market", False),
    "/public/stream": ("public", True),
    "/public/ws": ("public", False),
    # §2.6: a connection without a routed path gets only /public streams.
    "/stream": ("public", True),
    "/ws": ("public", False),
}

# Syntactically a stream name: "<symbol>@<kind>[@<option>]" or "!<name>[@arr]". Anything else is
# refused with "invalid stream" (observed reply, e.g. ccxt/ccxt#19833); a well-formed name for a
# symbol that does not exist is acked and silent (§2.2).
_STREAM_NAME = re.compile(r"^!?[A-Za-z0-9_]+@[A-Za-z0-9_@]+$|^![A-Za-z0-9_]+$")

_METHODS: Final = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_ID_STRING = re.compile(r"^[A-Za-z0-9-]{1,36}$")

_MALFORMED_FRAME: Final = '{"stream":"btcusdt@trade","data":{"e":"trade","E":17231612'


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _error(code: int, msg: str, request_id: Any = None, *, with_id: bool = False) -> dict[str, Any]:
    reply: dict[str, Any] = {"code": code, "msg": msg}
    if with_id:
        reply["id"] = request_id
    return reply


def _position(text: str, index: int) -> tuple[int, int]:
    """serde_json's 1-based (line, column) of the character at ``index``."""
    index = max(0, min(index, len(text) - 1))
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _valid_id(value: Any) -> bool:
    # §2.2: a signed 64-bit integer, an alphanumeric string of up to 36 characters, or null.
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and _ID_STRING.match(value) is not None


@attrs.frozen(slots=True)
class ControlRequest:
    """A well-formed control request (``params`` as sent, still unchecked)."""

    method: str
    params: list[Any]
    id: Any


def parse_control(text: str) -> ControlRequest | dict[str, Any]:
    """One client text frame as a request, or the error reply Binance gives for it (§2.2 table)."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        line, column = _position(text, exc.pos)
        return _error(3, f"Invalid JSON: expected value at line {line} column {column}")
    if not isinstance(obj, dict):
        line, column = _position(text, len(text.rstrip()) - 1)
        return _error(2, f"Invalid request: invalid type: expected struct at line {line} column {column}")
    if "method" not in obj:
        line, column = _position(text, len(text.rstrip()) - 1)
        return _error(2, f"Invalid request: missing field `method` at line {line} column {column}")
    method = obj["method"]
    if method not in _METHODS:
        shown = orjson.dumps(method).decode()
        at = text.find(shown)
        line, column = _position(text, at + len(shown) - 1 if at >= 0 else len(text) - 1)
        variant = f"`{method}`" if isinstance(method, str) else shown
        return _error(
            2,
            f"Invalid request: unknown variant {variant}, expected one of "
            f"{', '.join(_METHODS)} at line {line} column {column}",
        )
    if "id" not in obj or not _valid_id(obj["id"]):
        return _error(2, "Invalid request: request ID must be an unsigned integer")
    params = obj.get("params", [])
    if not isinstance(params, list):
        return _error(2, "Invalid request: property name must be a string")
    return ControlRequest(method=method, params=params, id=obj["id"])


def _check_streams(new: list[str], held: int) -> str | None:
    """Why Binance refuses subscribing ``new`` on a connection holding ``held`` streams, if it does."""
    if any(_STREAM_NAME.match(name) is None for name in new):
        return "Invalid request: invalid stream"
    if held + len(set(new)) > MAX_STREAMS_PER_CONNECTION:
        # §2.5 caps streams per connection; the exact reply is undocumented.
        return "Invalid request: too many parameters"
    return None


class BinanceConnection(SimConnection):
    """A Binance connection: its route, its envelope, and the streams it subscribed."""

    def __init__(self, path: str, route: str, combined: bool) -> None:
        super().__init__(path)
        #: "" on spot; "market" or "public" on futures
        self.route = route
        #: events wrapped as {"stream", "data"} (the /stream paths, or SET_PROPERTY combined)
        self.combined = combined

    @property
    def streams(self) -> frozenset[str]:
        """Every stream the connection subscribed (acked), deliverable or not."""
        return frozenset(self.topics)

    @property
    def subscriptions(self) -> list[str]:
        """The same, in subscription order (what LIST_SUBSCRIPTIONS answers)."""
        return list(self.topics)

    def frame(self, channel: str, payload: str) -> str:
        return f'{{"stream":"{channel}","data":{payload}}}' if self.combined else payload


class BinanceProtocol:
    """Binance's stream protocol, pure: paths, control requests and replies, routes, limits.

    A channel is a stream name; a subscribed stream is delivered only when ``symbols`` (lower
    case) has its symbol and the connection's route carries its kind.
    """

    def __init__(
        self, *, futures: bool, symbols: Iterable[str], liveness: Liveness, routed: bool | None = None
    ) -> None:
        self.futures = futures
        #: futures streams split over /public and /market (USD-M; COIN-M's dstream has no routes)
        self.routed = futures if routed is None else routed
        self.liveness = liveness
        self.default_path = "/market/stream" if self.routed else "/stream"
        self.malformed_frame = _MALFORMED_FRAME
        #: faults: symbols whose SUBSCRIBE gets an error reply; SUBSCRIBEs dropped unanswered
        self.refused: frozenset[str] = frozenset()
        self.swallow_subscribes = False
        self._symbols = frozenset(symbols)
        self._endpoints = _FUTURES_ENDPOINTS if self.routed else _SPOT_ENDPOINTS

    def open(self, path: str, query: str) -> Accept[BinanceConnection] | Reject:
        resolved = self._resolve(path)
        if resolved is None:
            return Reject(404, {"code": -1, "msg": f"Not found: {path}"})
        route, combined, names = resolved
        if combined:
            for key, value in parse_qsl(query):
                if key == "streams":
                    names.extend(name for name in value.split("/") if name)
        problem = _check_streams(names, 0)
        if problem is not None:
            return Reject(400, {"code": 2, "msg": problem})
        conn = BinanceConnection(path + (f"?{query}" if query else ""), route, combined)
        return Accept(conn, self._subscribe(conn, names))

    def _resolve(self, path: str) -> tuple[str, bool, list[str]] | None:
        found = self._endpoints.get(path)
        if found is not None:
            return found[0], found[1], []
        # Raw streams named in the path: /ws/<stream>[/<stream>...] (§2.1).
        for base, (route, combined) in self._endpoints.items():
            if not combined and path.startswith(base + "/"):
                names = [n for n in path[len(base) + 1 :].split("/") if n]
                return route, False, names
        return None

    def receive(self, conn: BinanceConnection, text: str) -> Answer:
        request = parse_control(text)
        if not isinstance(request, ControlRequest):
            return Answer(frames=(_dumps(request),))
        method, params, rid = request.method, request.params, request.id
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) for p in params):
                return Answer(frames=(_dumps(_error(2, "Invalid request: property name must be a string")),))
            ok = _dumps({"result": None, "id": rid})
            if method == "UNSUBSCRIBE":
                held = [name for name in params if name in conn.topics]
                for name in held:
                    del conn.topics[name]
                return Answer(frames=(ok,), stop=tuple(held))
            if self.swallow_subscribes:
                return Answer()
            new = [name for name in dict.fromkeys(params) if name not in conn.topics]
            problem = _check_streams(new, len(conn.topics))
            if problem is None and any(name.partition("@")[0].upper() in self.refused for name in new):
                problem = "Invalid request: invalid stream"  # the observed wording (see _STREAM_NAME)
            if problem is not None:
                return Answer(frames=(_dumps(_error(2, problem, rid, with_id=True)),))
            return Answer(frames=(ok,), start=self._subscribe(conn, new))
        return Answer(frames=(_dumps(self._property(conn, request)),))

    def _subscribe(self, conn: BinanceConnection, names: Iterable[str]) -> tuple[str, ...]:
        """Record ``names`` on ``conn``; the deliverable ones among them."""
        for name in names:
            conn.topics[name] = None
        return tuple(name for name in names if self._deliverable(conn, name))

    def _deliverable(self, conn: BinanceConnection, name: str) -> bool:
        symbol, _, kind = name.partition("@")
        # Stream names must be lower case (§2.1): "BTCUSDT@trade" matches no market.
        if symbol not in self._symbols:
            return False
        if self.routed:
            return _FUTURES_KIND_ROUTE.get(kind) == conn.route
        return kind in _SPOT_KINDS

    def _property(self, conn: BinanceConnection, request: ControlRequest) -> dict[str, Any]:
        method, params, rid = request.method, request.params, request.id
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": conn.subscriptions, "id": rid}
        # SET_PROPERTY / GET_PROPERTY: only "combined" exists (§2.1, §2.2).
        if not params or not isinstance(params[0], str):
            return _error(2, "Invalid request: property name must be a string")
        expected = 2 if method == "SET_PROPERTY" else 1
        if len(params) > expected:
            return _error(2, "Invalid request: too many parameters")
        if params[0] != "combined":
            return _error(0, "Unknown property", rid, with_id=True)
        if method == "GET_PROPERTY":
            return {"result": conn.combined, "id": rid}
        if len(params) < 2 or not isinstance(params[1], bool):
            return _error(1, "Invalid value type: expected Boolean")
        conn.combined = params[1]
        return {"result": None, "id": rid}


class _Market(Market):
    """One symbol's Binance state: id counters, last trade, best quote, number formats."""

    def __init__(self, symbol: str, index: int, futures: bool, trades: Recording) -> None:
        first = trades.payloads[0]
        super().__init__(symbol, index, float(first["p"]) * price_factor(symbol))
        self.lower = symbol.lower()
        self.futures = futures
        #: what plays each of the symbol's tapes: the streams of it subscribed
        self.demands = Demands(_TAPES_OF_KIND)
        self.next_trade_id = int(first["t"])
        self.next_agg_id = 665_076_760
        # The aggTrade tape is a different recording from the trade tape, so its first/last trade
        # ids count separately; this keeps @trade ids consecutive (one trade, one id).
        self.next_agg_fill_id = self.next_trade_id
        self.book_update_id = 50_093_239_212
        self.last_qty = self.qty(float(first["q"]))
        self.first_trade_id = self.next_trade_id - 1_200_000
        self.bid = self.bid_qty = self.ask = self.ask_qty = ""
        #: every trade made, streamed or not, in the REST history's shapes (historicalTrades for
        #: spot's @trade ids, aggTrades for futures' @aggTrade ids): what a backfill fetches
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.agg_history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        #: trades still to leave out of the stream (made and kept in the history all the same)
        self.skip = 0
        self.flood_rows: dict[str, list[tuple[str, str, str]]] = {}
        #: fields a venue adds to every bookTicker and 24hrTicker payload (COIN-M's pair, "ps")
        self.extra: dict[str, Any] = {}

    def price(self, value: float) -> str:
        # Spot prints 8 decimals whatever the tick ("61837.63000000"); futures prints the tick's.
        rounded = round(value, self.price_decimals)
        return f"{rounded:.8f}" if not self.futures else f"{rounded:.{self.price_decimals}f}"

    def qty(self, value: float) -> str:
        step = 10.0**-self.qty_decimals
        rounded = max(step, round(value / self.factor, self.qty_decimals))
        return f"{rounded:.8f}" if not self.futures else f"{rounded:.{self.qty_decimals}f}"

    def trade(self, price: float, qty: str) -> None:
        self.last_qty = qty
        self.on_trade(price, float(qty))

    def ticker(self, now: int) -> dict[str, Any]:
        """A ``24hrTicker`` with the documented field set (samples/binance/ticker.json, §2.3)."""
        change = self.last_price - self.open_price
        last_id = self.next_trade_id - 1
        payload: dict[str, Any] = {
            "e": "24hrTicker",
            "E": now,
            "s": self.symbol,
            "p": self.price(change),
            "P": f"{change / self.open_price * 100:.3f}",
            "w": self.price(self.quote_volume / self.volume),
            "x": self.price(self.open_price * 0.9999),
            "c": self.price(self.last_price),
            "Q": self.last_qty,
            "b": self.bid,
            "B": self.bid_qty,
            "a": self.ask,
            "A": self.ask_qty,
            "o": self.price(self.open_price),
            "h": self.price(self.high),
            "l": self.price(self.low),
            "v": f"{self.volume:.8f}",
            "q": f"{self.quote_volume:.8f}",
            "O": now - 86_400_000,
            "C": now,
            "F": self.first_trade_id,
            "L": last_id,
            "n": last_id - self.first_trade_id + 1,
        }
        if self.futures:
            # §2.6: the futures ticker has no best bid/ask (use @bookTicker), and no "x"
            # [unverified, 3p type definitions].
            for key in ("x", "b", "B", "a", "A"):
                del payload[key]
        payload.update(self.extra)
        return payload


class BinanceSimulator(SimServer[BinanceConnection]):
    """Binance spot (or USD-M futures with ``futures=True``) market streams and REST on localhost.

    Run it with ``await nursery.start(sim.serve)``; then point a client at :attr:`ws_url` and
    :attr:`rest_url`. Only symbols in ``symbols`` carry data; any other well-formed stream is
    acked and stays silent, as the real exchange does (§2.2).
    """

    #: futures streams take the /public and /market routes (USD-M); a subclass may say not
    _routed = True

    def __init__(
        self,
        *,
        futures: bool = False,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        ping_interval: float | None = None,
        pong_timeout: float | None = None,
        max_incoming_per_second: int | None = None,
        speed: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
        flood: bool = False,
        frames_per_write: int | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.futures = futures
        # §2.4 (spot): a ping frame every 20 s, disconnect after 1 min without a pong.
        # §2.6 (futures): every 3 min, disconnect after 10 min; 10 messages/s instead of 5 (§2.5).
        self.ping_interval = ping_interval if ping_interval is not None else (180.0 if futures else 20.0)
        self.pong_timeout = pong_timeout if pong_timeout is not None else (600.0 if futures else 60.0)
        self.max_incoming_per_second = (
            max_incoming_per_second if max_incoming_per_second is not None else (10 if futures else 5)
        )
        self.speed = speed
        self.break_symbol = BREAK_SYMBOL
        self.symbols: tuple[str, ...] = tuple(dict.fromkeys(s.upper() for s in symbols))
        liveness = Liveness(
            ping_interval=self.ping_interval,
            pong_timeout=self.pong_timeout,
            max_incoming_per_second=self.max_incoming_per_second,
        )
        lower = (s.lower() for s in self.symbols)
        protocol = BinanceProtocol(
            futures=futures, symbols=lower, liveness=liveness, routed=futures and self._routed
        )
        extra = {} if frames_per_write is None else {"frames_per_write": frames_per_write}
        super().__init__(protocol, ssl_context=ssl_context, flood=flood, **extra)

        self._trades = load_recording("binance", "trade")
        self._agg_trades = load_recording("binance", "aggTrade")
        self._book_tickers = load_recording("binance", "bookTicker")
        # The aggTrade tape is from another day (2021); rescale it onto the trade tape's level so
        # a symbol's @trade, @aggTrade and @ticker prices agree.
        self._agg_scale = float(self._trades.payloads[0]["p"]) / float(self._agg_trades.payloads[0]["p"])
        self._markets = {s.lower(): self._new_market(s, i) for i, s in enumerate(self.symbols)}

    def _new_market(self, symbol: str, index: int) -> _Market:
        """One symbol's state (a subclass's venue may keep more of it)."""
        return _Market(symbol, index, self.futures, self._trades)

    def last_trade_id(self, symbol: str) -> int:
        """The id of ``symbol``'s latest @trade trade, paced or flooded (one id per trade, no
        holes): what a client that has everything last received."""
        return self._markets[symbol.lower()].next_trade_id - 1

    # ---- faults --------------------------------------------------------------------------

    def send_server_shutdown(self, close_after: float = 1.0) -> None:
        """§2.3: announce ``serverShutdown`` on every connection, then close them (code 1001)
        ``close_after`` seconds later. New connections are accepted meanwhile, as a client
        reconnecting make-before-break would reach another server."""
        raw = _dumps({"e": "serverShutdown", "E": _now_ms()})
        nursery = self.nursery
        for conn in self._live:
            conn.offer(conn.frame("!serverShutdown", raw))
            nursery.start_soon(self._close_later, conn, close_after)

    async def _close_later(self, conn: BinanceConnection, delay: float) -> None:
        await trio.sleep(delay)
        conn.close(1001, "Server shutdown")

    def _refusal(self, status: int) -> Reject:
        # -1003 is Binance's "too many requests" code; a ban (418) names the same breach
        code = -1003 if status in (418, 429) else -1
        return Reject(status, {"code": code, "msg": status_phrase(status)})

    # ---- market data ---------------------------------------------------------------------

    def _run_feeds(self, nursery: trio.Nursery) -> None:
        count = len(self._markets)
        for market in self._markets.values():
            for name, tape, emit in (
                ("trade", self._trades, self._emit_trade),
                ("aggTrade", self._agg_trades, self._emit_agg_trade),
                ("bookTicker", self._book_tickers, self._emit_book_ticker),
            ):
                # Symbols start at different points of the tape, so they do not move in lockstep.
                start = market.index * len(tape) // max(1, count)
                emit_for = partial(emit, market)
                nursery.start_soon(
                    partial(play, tape, emit_for, demand=market.demands[name], speed=self.speed, start=start)
                )
        nursery.start_soon(self._tick)

    def _on_start(self, conn: BinanceConnection, channel: str) -> None:
        symbol, _, kind = channel.partition("@")
        self._markets[symbol].demands.add(kind, 1)

    def _on_stop(self, conn: BinanceConnection, channel: str) -> None:
        symbol, _, kind = channel.partition("@")
        self._markets[symbol].demands.add(kind, -1)

    def _emit_trade(self, market: _Market, rec: Mapping[str, Any]) -> None:
        trade_id = market.next_trade_id
        market.next_trade_id += 1
        price = float(rec["p"]) * market.factor
        qty = market.qty(float(rec["q"]))
        market.trade(price, qty)
        now = _now_ms()
        at = now - max(0, int(rec["E"]) - int(rec["T"]))
        market.history.append({
            "id": trade_id, "price": market.price(price), "qty": qty,
            "quoteQty": market.price(price * float(qty)), "time": at, "isBuyerMaker": rec["m"],
            "isBestMatch": True,
        })
        name = market.lower + "@trade"
        if not self.has_subscribers(name) or self._skipped(market):
            return
        payload: dict[str, Any] = {
            "e": "trade",
            "E": now,
            "s": market.symbol,
            "t": trade_id,
            "p": market.price(price),
            "q": qty,
            "T": at,
            "m": rec["m"],
            "M": True,
        }
        if market.futures:
            del payload["M"]  # [unverified] futures trade events carry no "ignore" field
        self.publish(name, _dumps(payload))

    def _emit_agg_trade(self, market: _Market, rec: Mapping[str, Any]) -> None:
        fills = max(1, int(rec["l"]) - int(rec["f"]) + 1)
        first = market.next_agg_fill_id
        market.next_agg_fill_id += fills
        agg_id = market.next_agg_id
        market.next_agg_id += 1
        price = float(rec["p"]) * self._agg_scale * market.factor
        qty = market.qty(float(rec["q"]))
        market.trade(price, qty)
        now = _now_ms()
        at = now - max(0, int(rec["E"]) - int(rec["T"]))
        market.agg_history.append({
            "a": agg_id, "p": market.price(price), "q": qty, "f": first, "l": first + fills - 1,
            "T": at, "m": rec["m"],
        })
        name = market.lower + "@aggTrade"
        if not self.has_subscribers(name) or self._skipped(market):
            return
        payload: dict[str, Any] = {
            "e": "aggTrade",
            "E": now,
            "s": market.symbol,
            "a": agg_id,
            "p": market.price(price),
            "q": qty,
            "f": first,
            "l": first + fills - 1,
            "T": at,
            "m": rec["m"],
            "M": True,
        }
        if market.futures:
            del payload["M"]  # §2.6: futures aggTrade has no "M"
        self.publish(name, _dumps(payload))

    @staticmethod
    def _skipped(market: _Market) -> bool:
        if market.skip <= 0:
            return False
        market.skip -= 1
        return True

    # ---- what a test makes happen to the trades ---------------------------------------------

    def keep_trading(self) -> None:
        """Every symbol's tapes play from now on whether anybody subscribes or not, so trades
        are made (and kept in the REST history) while no connection is up."""
        for market in self._markets.values():
            market.demands.add_all(1)

    def skip_trades(self, symbol: str, count: int) -> None:
        """Leave the next ``count`` trades of ``symbol`` out of the stream (as a lossy path
        would); they are made, and the REST history has them."""
        self._markets[symbol.lower()].skip += count

    def _emit_book_ticker(self, market: _Market, rec: Mapping[str, Any]) -> None:
        market.book_update_id += 1
        bid = round(float(rec["b"]) * market.factor, market.price_decimals)
        ask = round(float(rec["a"]) * market.factor, market.price_decimals)
        # Scaling shrinks the spread below the tick; keep the book uncrossed and unlocked.
        ask = max(ask, bid + 10.0**-market.price_decimals)
        market.bid = market.price(bid)
        market.ask = market.price(ask)
        market.bid_qty = market.qty(float(rec["B"]))
        market.ask_qty = market.qty(float(rec["A"]))
        name = market.lower + "@bookTicker"
        if not self.has_subscribers(name):
            return
        quote = {
            "u": market.book_update_id,
            "s": market.symbol,
            "b": market.bid,
            "B": market.bid_qty,
            "a": market.ask,
            "A": market.ask_qty,
        }
        if market.futures:
            # §2.6: futures bookTicker adds the event type, event time and transaction time.
            now = _now_ms()
            quote = {"e": "bookTicker", "u": quote["u"], "E": now, "T": now - 1, **quote, **market.extra}
        # §2.3: spot bookTicker has no "e"/"E"; only the stream name identifies it.
        self.publish(name, _dumps(quote))

    async def _tick(self) -> None:
        """§2.3: one 24hrTicker per subscribed symbol every 1000 ms."""
        deadline = trio.current_time()
        while True:
            deadline += 1.0
            await trio.sleep_until(deadline)
            now = _now_ms()
            for market in self._markets.values():
                name = market.lower + "@ticker"
                if self.has_subscribers(name):
                    self.publish(name, _dumps(market.ticker(now)))

    # ---- flood ---------------------------------------------------------------------------

    def _floodable(self, channel: str) -> bool:
        return channel.partition("@")[2] in _TRADE_KINDS

    def _flood_rows(self, market: _Market, kind: str) -> list[tuple[str, str, str]]:
        """(price, qty, m) strings of the tape, scaled for ``market``, built once."""
        rows = market.flood_rows.get(kind)
        if rows is None:
            tape, scale = (self._trades, 1.0) if kind == "trade" else (self._agg_trades, self._agg_scale)
            rows = [
                (
                    market.price(float(p["p"]) * scale * market.factor),
                    market.qty(float(p["q"])),
                    "true" if p["m"] else "false",
                )
                for p in tape.payloads
            ]
            market.flood_rows[kind] = rows
        return rows

    def _flood_payloads(
        self, conn: BinanceConnection, channels: Sequence[str], per_channel: int
    ) -> list[bytes]:
        """Trades of the connection's trade streams with fresh ids and the current time, built
        per write, which costs far less than the client spends reading them."""
        now = _now_ms()
        tail = "" if self.futures else ',"M":true'
        bodies: list[bytes] = []
        for name in channels:
            symbol, _, kind = name.partition("@")
            market = self._markets[symbol]
            head = f'{{"stream":"{name}","data":' if conn.combined else ""
            close = "}" if conn.combined else ""
            rows = self._flood_rows(market, kind)
            if kind == "trade":
                start = market.next_trade_id
                market.next_trade_id += per_channel
                template = (
                    f'{head}{{"e":"trade","E":{now},"s":"{market.symbol}","t":%d,"p":"%s",'
                    f'"q":"%s","T":{now},"m":%s{tail}}}{close}'
                )
                for offset in range(per_channel):
                    p, q, m = rows[(start + offset) % len(rows)]
                    bodies.append((template % (start + offset, p, q, m)).encode())
            else:
                start = market.next_agg_fill_id
                market.next_agg_fill_id += per_channel
                agg = market.next_agg_id
                market.next_agg_id += per_channel
                template = (
                    f'{head}{{"e":"aggTrade","E":{now},"s":"{market.symbol}","a":%d,"p":"%s",'
                    f'"q":"%s","f":%d,"l":%d,"T":{now},"m":%s{tail}}}{close}'
                )
                for offset in range(per_channel):
                    p, q, m = rows[(start + offset) % len(rows)]
                    tid = start + offset
                    bodies.append((template % (agg + offset, p, q, tid, tid, m)).encode())
            p, q, _ = rows[(start + per_channel - 1) % len(rows)]
            market.last_price = float(p)
            market.last_qty = q
        return bodies

    # ---- REST ----------------------------------------------------------------------------

    def _rest_outage(self) -> HttpResponse:
        return HttpResponse(503, {"code": -1001, "msg": "Service unavailable (simulated outage)"})

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        info_path = "/fapi/v1/exchangeInfo" if self.futures else "/api/v3/exchangeInfo"
        history_path = "/fapi/v1/aggTrades" if self.futures else "/api/v3/historicalTrades"
        if request.method == "GET" and request.path == info_path:
            return HttpResponse(200, self.exchange_info())
        if request.method == "GET" and request.path == history_path:
            return self._history(request)
        return HttpResponse(404, {"code": -1, "msg": f"Not found: {request.method} {request.path}"})

    def _history(self, request: HttpRequest) -> HttpResponse:
        """historicalTrades (spot) or aggTrades (futures): the trades from ``fromId`` on, oldest
        first, at most ``limit`` (default 500, max 1000); without ``fromId`` the latest."""
        query = {k: v[-1] for k, v in request.query.items()}
        symbol = query.get("symbol", "")
        if not symbol:
            return HttpResponse(400, {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, "
                                      "was empty/null, or malformed."})
        market = self._markets.get(symbol.lower())
        if market is None or symbol != symbol.upper():
            return HttpResponse(400, {"code": -1121, "msg": "Invalid symbol."})
        try:
            limit = int(query.get("limit", "500"))
            from_id = int(query["fromId"]) if "fromId" in query else None
        except ValueError:
            return HttpResponse(400, {"code": -1100, "msg": "Illegal characters found in a parameter."})
        if not 1 <= limit <= 1000:
            return HttpResponse(400, {"code": -1130, "msg": "Invalid data sent for a parameter."})
        history, key = (market.agg_history, "a") if self.futures else (market.history, "id")
        if from_id is None:
            return HttpResponse(200, list(history)[-limit:])
        return HttpResponse(200, [t for t in history if t[key] >= from_id][:limit])

    def exchange_info(self) -> dict[str, Any]:
        """The exchangeInfo body: the simulated symbols TRADING, plus :data:`BREAK_SYMBOL`."""
        entries = [(s, "TRADING") for s in self.symbols]
        entries.append((self.break_symbol, "BREAK"))
        symbols = []
        for symbol, status in entries:
            quote = quote_asset(symbol)
            entry: dict[str, Any] = {
                "symbol": symbol,
                "status": status,
                "baseAsset": symbol[: -len(quote)],
                "quoteAsset": quote,
            }
            if self.futures:
                entry["contractType"] = "PERPETUAL"
            symbols.append(entry)
        return {"timezone": "UTC", "serverTime": _now_ms(), "symbols": symbols}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--futures", action="store_true", help="serve USD-M futures routes")
    parser.add_argument(
        "--symbols", default=",".join(DEFAULT_SYMBOLS), help="comma-separated symbols with data"
    )
    parser.add_argument("--flood", action="store_true", help="send trades as fast as possible")


def _from_args(args: argparse.Namespace) -> BinanceSimulator:
    return BinanceSimulator(
        futures=args.futures, symbols=symbol_list(args.symbols), speed=args.speed, flood=args.flood
    )


#: what the tools need to run this simulator (found by :func:`feedd.sim.registry`)
def _tape_of(venue_id: str, frame: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """A combined-stream frame's tape: ``<symbol>@trade`` frames are the trade tape (one
    symbol's: the tapes move every simulated symbol alike), and so on."""
    del venue_id  # spot and USD-M share their tapes
    stream = frame.get("stream")
    if not isinstance(stream, str) or not isinstance(frame.get("data"), Mapping):
        return None
    symbol, _, kind = stream.partition("@")
    return ("binance", kind, symbol) if kind in ("trade", "aggTrade", "bookTicker") else None


SIMULATOR: Final = SimSpec(
    name="binance",
    help="Binance spot, or USD-M futures with --futures",
    groups=(("binance",), ("binance-usdm",)),
    make=lambda venue_ids, speed: BinanceSimulator(futures=venue_ids == ("binance-usdm",), speed=speed),
    symbols={"binance": ("BTCUSDT", "ETHUSDT"), "binance-usdm": ("BTCUSDT",)},
    spare="SOLUSDT",
    speed=0.1,  # the recorded tape is dense
    add_arguments=_add_arguments,
    from_args=_from_args,
    tape_of=_tape_of,
)

__all__ = [
    "BREAK_SYMBOL",
    "SIMULATOR",
    "BinanceConnection",
    "BinanceSimulator",
    "ControlRequest",
    "parse_control",
]
