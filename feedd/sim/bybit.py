"""A local Bybit v5: the public spot, linear and inverse streams and the instruments REST call.

Speaks the wire protocol of protocols/README.md §1 as checked against Bybit's v5 docs
(``/v5/ws/connect``): ``{"op": "subscribe" | "unsubscribe", "args": [...], "req_id": ...}``
answered in each market's own shape, with ``conn_id`` and the ``req_id`` echoed; the client's
JSON ``ping`` answered with the market's pong; the connection cut after 10 minutes without a
ping or a data frame; at most 10 args per spot request and 21,000 characters of args per
connection. :class:`BybitProtocol` is that protocol as a pure object; :class:`BybitSimulator`
serves it through :mod:`feedd.sim.server` with market data from :mod:`feedd.sim.bybit_market`.

Failure replies are undocumented; their wording is the one client code and live probes record
(``[3p]``): an unknown topic, or a derivatives symbol that does not exist, is
``error:handler not found,topic:<topic>``; a spot symbol that does not exist is
``Invalid symbol :[<topic>]``; a topic the connection holds is
``error:already subscribed,topic:<topic>``; an 11th spot arg is ``args size >10``. One bad
topic fails the whole request, and nothing in it is subscribed.
"""

from __future__ import annotations

import argparse
import secrets
import ssl
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

import orjson
import trio

from feedd.sim.bybit_market import BybitMarket
from feedd.sim.market import quote_asset
from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection, status_phrase
from feedd.sim.replay import Recording, play
from feedd.sim.rest import HttpRequest, HttpResponse
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec, symbol_list

CATEGORIES: Final = ("spot", "linear", "inverse")
DEFAULT_SYMBOLS: Final = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT")
DEFAULT_INVERSE_SYMBOLS: Final = ("BTCUSD", "ETHUSD")
#: [connect]: "if there is no ping-pong and no stream data sent from server end, the connection
#: will be cut off after 10 minutes"
IDLE_TIMEOUT: Final = 600.0
#: [connect] "Public channel - Args limits"
MAX_SPOT_ARGS: Final = 10
MAX_ARGS_CHARS: Final = 21_000
#: [ob]: depths per market; only level 1 carries data here, deeper books are acked and silent
ORDERBOOK_DEPTHS: Final = frozenset(("1", "50", "200", "1000"))
#: [ob] (the current orderbook page): "Linear, inverse, spot level 1 data: if 3 seconds have
#: elapsed without a change in the orderbook, a snapshot message will be pushed again, and the
#: field u will be the same as that in the previous message." (Older copies said "Linear &
#: inverse", leaving spot out.)
BOOK_RESEND_AFTER: Final = 3.0
#: the topics whose data the simulator produces
STREAMED: Final = ("publicTrade", "tickers", "orderbook.1")
INSTRUMENTS_PATH: Final = "/v5/market/instruments-info"
RECENT_TRADE_PATH: Final = "/v5/market/recent-trade"

_PATH_PREFIX: Final = "/v5/public/"
_MALFORMED_FRAME: Final = '{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":17231613'
_CONN_ID_HEAD: Final = string.digits + "abcdefghijklmnopqrstuv"
_CONN_ID_TAIL: Final = string.digits + string.ascii_lowercase


def _now_ms() -> int:
    return int(time.time() * 1000)


def _new_conn_id() -> str:
    """Shaped like Bybit's: 20 characters, a dash, 5 more."""
    head = "".join(secrets.choice(_CONN_ID_HEAD) for _ in range(20))
    return head + "-" + "".join(secrets.choice(_CONN_ID_TAIL) for _ in range(5))


class BybitConnection(SimConnection):
    """A connection to one of the public endpoints: its market and its ``conn_id``."""

    def __init__(self, path: str, category: str, conn_id: str) -> None:
        super().__init__(path)
        self.category = category
        self.conn_id = conn_id

    @property
    def streams(self) -> frozenset[str]:
        """The topics the connection holds (as on BinanceConnection)."""
        return frozenset(self.topics)

    @property
    def subscriptions(self) -> list[str]:
        """The same, in subscription order."""
        return list(self.topics)

    @property
    def args_chars(self) -> int:
        """The length of the connection's args, the quantity the 21,000 limit bounds."""
        return sum(len(topic) for topic in self.topics)


class BybitProtocol:
    """Bybit's public v5 stream protocol, pure: endpoints, ops, replies, limits.

    A channel is ``<category>:<topic>``. ``symbols`` names each category's instruments; a topic
    for another symbol is refused. ``silent_pongs`` makes pings go unanswered (a fault).
    """

    def __init__(
        self,
        *,
        symbols: Mapping[str, Iterable[str]],
        default_category: str = "spot",
        idle_timeout: float = IDLE_TIMEOUT,
        max_args_chars: int = MAX_ARGS_CHARS,
    ) -> None:
        self.liveness = Liveness(idle_timeout=idle_timeout)
        self.default_path = _PATH_PREFIX + default_category
        self.malformed_frame = _MALFORMED_FRAME
        self.max_args_chars = max_args_chars
        self.silent_pongs = False
        #: faults: symbols whose subscribe is refused; subscribes dropped unanswered
        self.refused: frozenset[str] = frozenset()
        self.swallow_subscribes = False
        self._symbols = {category: frozenset(names) for category, names in symbols.items()}

    def open(self, path: str, query: str) -> Accept[BybitConnection] | Reject:
        category = path.removeprefix(_PATH_PREFIX)
        if not path.startswith(_PATH_PREFIX) or category not in self._symbols:
            return Reject(404, {"retCode": 404, "retMsg": f"Not found: {path}"})
        return Accept(BybitConnection(path, category, _new_conn_id()))

    def receive(self, conn: BybitConnection, text: str) -> Answer:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            # [3p, unverified] the gateway's decoder error, the socket stays open
            return self._fail(conn, "", f"Failed to decode incoming data:{exc}", None)
        if not isinstance(request, dict):
            return self._fail(conn, "", "Failed to decode incoming data:expected an object", None)
        raw_id = request.get("req_id")
        req_id = raw_id if isinstance(raw_id, str) or raw_id is None else orjson.dumps(raw_id).decode()
        op = request.get("op")
        if op == "ping":
            if self.silent_pongs:
                return Answer(ping=True)
            return Answer(frames=(self._reply(conn, "ping", True, "pong", req_id),), ping=True)
        if op not in ("subscribe", "unsubscribe"):
            shown = op if isinstance(op, str) else ""
            return self._fail(conn, shown, "error:invalid op", req_id)  # [3p, unverified]
        args = request.get("args")
        if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
            return self._fail(conn, op, "error:args must be an array of strings", req_id)  # [unverified]
        topics = list(dict.fromkeys(args))
        if op == "unsubscribe":
            held = [topic for topic in topics if topic in conn.topics]
            for topic in held:
                del conn.topics[topic]
            ok = self._reply(conn, op, True, self._ok_message(conn, op), req_id)
            return Answer(frames=(ok,), stop=self._channels(conn, held))
        if self.swallow_subscribes:
            return Answer()
        problem = self._check(conn, args, topics)
        if problem is not None:
            return self._fail(conn, op, problem, req_id)
        for topic in topics:
            conn.topics[topic] = None
        ok = self._reply(conn, op, True, self._ok_message(conn, op), req_id)
        return Answer(frames=(ok,), start=self._channels(conn, topics))

    def _check(self, conn: BybitConnection, args: list[str], topics: list[str]) -> str | None:
        """Why the subscribe request is refused, if it is (the first reason found)."""
        if conn.category == "spot" and len(args) > MAX_SPOT_ARGS:
            return f"args size >{MAX_SPOT_ARGS}"
        for topic in topics:
            if topic in conn.topics:
                return f"error:already subscribed,topic:{topic}"
            problem = self._topic_problem(conn.category, topic)
            if problem is not None:
                return problem
        if conn.args_chars + sum(len(topic) for topic in topics) > self.max_args_chars:
            return f"args length >{self.max_args_chars}"  # the wording is [unverified]
        return None

    def _topic_problem(self, category: str, topic: str) -> str | None:
        parts = topic.split(".")
        if parts[0] in ("publicTrade", "tickers") and len(parts) == 2:
            symbol = parts[1]
        elif parts[0] == "orderbook" and len(parts) == 3 and parts[1] in ORDERBOOK_DEPTHS:
            symbol = parts[2]
        else:
            return f"error:handler not found,topic:{topic}"
        if symbol in self._symbols[category] and symbol not in self.refused:
            return None
        if category == "spot":
            return f"Invalid symbol :[{topic}]"
        return f"error:handler not found,topic:{topic}"

    def _channels(self, conn: BybitConnection, topics: Sequence[str]) -> tuple[str, ...]:
        return tuple(f"{conn.category}:{t}" for t in topics if t.rpartition(".")[0] in STREAMED)

    def _ok_message(self, conn: BybitConnection, op: str) -> str:
        # [connect] "Understanding the Subscription Response": spot says "subscribe", linear
        # and inverse say "" (spot's unsubscribe wording is [unverified]).
        return op if conn.category == "spot" else ""

    def _reply(self, conn: BybitConnection, op: str, success: bool, message: str, req_id: str | None) -> str:
        body: dict[str, Any] = {"success": success, "ret_msg": message, "conn_id": conn.conn_id}
        # Spot echoes req_id only when one was sent (recorded acks have none); linear and
        # inverse always carry it, "" when none was sent (samples/bybit/subscribe_ok_linear.json).
        if req_id is not None or conn.category != "spot":
            body["req_id"] = req_id if req_id is not None else ""
        body["op"] = op
        return orjson.dumps(body).decode()

    def _fail(self, conn: BybitConnection, op: str, message: str, req_id: str | None) -> Answer:
        return Answer(frames=(self._reply(conn, op, False, message, req_id),))


class BybitSimulator(SimServer[BybitConnection]):
    """Bybit's public v5 streams (spot, linear and inverse, on one port) and REST on localhost.

    Run it with ``await nursery.start(sim.serve)``; :attr:`ws_url` is the endpoint of
    ``category`` and :meth:`endpoint` any of the three. ``symbols`` are the spot and linear
    instruments, ``inverse_symbols`` the inverse ones; every one of them carries data.
    """

    def __init__(
        self,
        *,
        category: str = "spot",
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        inverse_symbols: Iterable[str] = DEFAULT_INVERSE_SYMBOLS,
        speed: float = 1.0,
        idle_timeout: float = IDLE_TIMEOUT,
        max_args_chars: int = MAX_ARGS_CHARS,
        instruments_page_size: int = 500,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        if not 1 <= instruments_page_size <= 1000:
            raise ValueError(f"instruments_page_size must be within [1, 1000], got {instruments_page_size}")
        self.category = category
        self.speed = speed
        self.instruments_page_size = instruments_page_size
        usdt = tuple(dict.fromkeys(s.upper() for s in symbols))
        #: the instruments of each category
        self.symbols: dict[str, tuple[str, ...]] = {
            "spot": usdt,
            "linear": usdt,
            "inverse": tuple(dict.fromkeys(s.upper() for s in inverse_symbols)),
        }
        protocol = BybitProtocol(
            symbols=self.symbols,
            default_category=category,
            idle_timeout=idle_timeout,
            max_args_chars=max_args_chars,
        )
        super().__init__(protocol, ssl_context=ssl_context)
        self._protocol = protocol
        now = _now_ms()
        self._markets: dict[tuple[str, str], BybitMarket] = {
            (cat, symbol): BybitMarket(cat, symbol, index, now)
            for cat, names in self.symbols.items()
            for index, symbol in enumerate(names)
        }
        self._by_channel = {
            market.channel(topic): (market, topic) for market in self._markets.values() for topic in STREAMED
        }

    def endpoint(self, category: str) -> str:
        """The WebSocket URL of ``category``'s public endpoint."""
        return self.url(_PATH_PREFIX + category)

    def market(self, category: str, symbol: str) -> BybitMarket:
        """The state of ``symbol`` in ``category`` (its ``history`` is every trade it made)."""
        return self._markets[(category, symbol)]

    def ticker(self, category: str, symbol: str) -> dict[str, str]:
        """The full ticker of ``symbol`` as last pushed (what a snapshot would hold now)."""
        return dict(self._markets[(category, symbol)].published)

    # ---- faults --------------------------------------------------------------------------

    def set_pong_silent(self, silent: bool) -> None:
        """Stop (or resume) answering pings, while everything else goes on (data, acks)."""
        self._protocol.silent_pongs = silent

    def _refusal(self, status: int) -> Reject:
        # 10006: Bybit's "too many visits"; 10016: its service error
        code = 10006 if status in (418, 429) else 10016
        return Reject(status, {"retCode": code, "retMsg": status_phrase(status)})

    # ---- market data ---------------------------------------------------------------------

    def _run_feeds(self, nursery: trio.Nursery) -> None:
        counts = {category: len(names) for category, names in self.symbols.items()}
        for market in self._markets.values():
            tapes = market.tapes
            feeds: list[tuple[str, Recording, Callable[[BybitMarket, Mapping[str, Any]], None]]] = [
                ("trades", tapes.trades, self._on_trades),
                ("quotes", tapes.quotes, self._on_quote),
            ]
            if tapes.index is not None:
                feeds.append(("index", tapes.index, self._on_index))
            for name, tape, handler in feeds:
                # Symbols start at different points of the tape, so they do not move in lockstep.
                start = market.index * len(tape) // max(1, counts[market.category])
                emit = partial(handler, market)
                demand = market.demands[name]
                nursery.start_soon(partial(play, tape, emit, demand=demand, speed=self.speed, start=start))
            nursery.start_soon(self._resend_book, market)

    def _on_start(self, conn: BybitConnection, channel: str) -> None:
        market, topic = self._by_channel[channel]
        market.demands.add(topic, 1)
        # [ticker], [ob]: the first message after subscribing is a snapshot.
        if topic == "tickers":
            self.deliver(conn, market.ticker_frame(market.published, _now_ms(), snapshot=True))
        elif topic == "orderbook.1":
            self.deliver(conn, market.book_frame(_now_ms()))

    def _on_stop(self, conn: BybitConnection, channel: str) -> None:
        market, topic = self._by_channel[channel]
        market.demands.add(topic, -1)

    def _on_trades(self, market: BybitMarket, frame: Mapping[str, Any]) -> None:
        now = _now_ms()
        trades = market.trades(frame, now)
        channel = market.channel("publicTrade")
        if self.has_subscribers(channel):
            self.publish(channel, market.trade_frame(trades, now))
        self._push_ticker(market, now)

    def _on_quote(self, market: BybitMarket, payload: Mapping[str, Any]) -> None:
        now = _now_ms()
        if market.apply_quote(payload):
            self._push_book(market, now)
        self._push_ticker(market, now)

    def _on_index(self, market: BybitMarket, payload: Mapping[str, Any]) -> None:
        market.apply_index(payload)
        self._push_ticker(market, _now_ms())

    def _push_ticker(self, market: BybitMarket, now: int) -> None:
        changed = market.ticker_changes()
        channel = market.channel("tickers")
        if changed is not None and self.has_subscribers(channel):
            self.publish(channel, market.ticker_frame(changed, now, snapshot=False))

    def _push_book(self, market: BybitMarket, now: int) -> None:
        market.book_sent_at = trio.current_time()
        channel = market.channel("orderbook.1")
        if self.has_subscribers(channel):
            self.publish(channel, market.book_frame(now))

    async def _resend_book(self, market: BybitMarket) -> None:
        """An unchanged level-1 book is sent again every 3 s, same ``u`` (every category)."""
        while True:
            quotes = market.demands["quotes"]
            if not quotes.wanted.is_set():
                await quotes.wanted.wait()
                # A subscriber just got its snapshot; the 3 s count from now.
                market.book_sent_at = max(market.book_sent_at, trio.current_time())
            deadline = market.book_sent_at + BOOK_RESEND_AFTER
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            self._push_book(market, _now_ms())

    # ---- REST ----------------------------------------------------------------------------

    def _rest_outage(self) -> HttpResponse:
        return HttpResponse(503, self._envelope(10016, "Service unavailable (simulated outage)", {}))

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        query = {key: values[-1] for key, values in request.query.items()}
        if request.method == "GET" and request.path == RECENT_TRADE_PATH:
            return self._recent_trades(query)
        if request.method != "GET" or request.path != INSTRUMENTS_PATH:
            return HttpResponse(404, self._envelope(10404, f"Not found: {request.method} {request.path}", {}))
        result = self._instruments_page(query)
        if isinstance(result, str):
            return HttpResponse(200, self._envelope(10001, result, {}))
        return HttpResponse(200, self._envelope(0, "OK", result))

    def _recent_trades(self, query: Mapping[str, str]) -> HttpResponse:
        """``recent-trade``: a symbol's latest trades, newest first, ``limit`` of [1, 60] on spot
        (default 60) and of [1, 1000] elsewhere (default 500), streamed or not."""
        category, symbol = query.get("category", ""), query.get("symbol", "")
        market = self._markets.get((category, symbol))
        if market is None:
            return HttpResponse(200, self._envelope(10001, "Illegal category or symbol", {}))
        most, default = (60, 60) if category == "spot" else (1000, 500)
        try:
            limit = int(query.get("limit", default))
        except ValueError:
            return HttpResponse(200, self._envelope(10001, "limit is not an integer", {}))
        if not 1 <= limit <= most:
            return HttpResponse(200, self._envelope(10001, f"limit must be within [1, {most}]", {}))
        latest = list(market.history)[-limit:]
        rows = [{"execId": t["i"], "symbol": symbol, "price": t["p"], "size": t["v"], "side": t["S"],
                 "time": str(t["T"]), "isBlockTrade": t["BT"], "isRPITrade": t["RPI"]}
                for t in reversed(latest)]
        return HttpResponse(200, self._envelope(0, "OK", {"category": category, "list": rows}))

    def keep_trading(self) -> None:
        """Every symbol's tapes play from now on whether anybody subscribes or not, so trades
        are made (and kept for ``recent-trade``) while no connection is up."""
        for market in self._markets.values():
            market.demands.add_all(1)

    def _envelope(self, code: int, message: str, result: Mapping[str, Any]) -> dict[str, Any]:
        return {"retCode": code, "retMsg": message, "result": result, "retExtInfo": {}, "time": _now_ms()}

    def _instruments_page(self, query: Mapping[str, str]) -> dict[str, Any] | str:
        """One page of ``GET /v5/market/instruments-info``, or why the parameters are refused
        (error wording [unverified])."""
        category = query.get("category")
        if category is None:
            return "params error: category is required"
        if category not in self.symbols:
            return f"params error: category {category} is not supported"
        entries = self.instruments(category)
        if "symbol" in query:
            entries = [e for e in entries if e["symbol"] == query["symbol"]]
        if query.get("status", "Trading") != "Trading":
            entries = []
        if category == "spot":
            # [instruments-info] "Spot does not support pagination, so limit, cursor are invalid."
            return {"category": category, "list": entries}
        try:
            limit = int(query.get("limit", self.instruments_page_size))
        except ValueError:
            return "params error: limit must be an integer"
        if not 1 <= limit <= 1000:
            return "params error: limit must be within [1, 1000]"
        start = 0
        if query.get("cursor"):
            # The cursor is "first%3D<symbol>%26last%3D<symbol>" as documented; a client may send
            # it back encoded once more, or not at all.
            fields = dict(parse_qsl(unquote(query["cursor"])))
            names = [e["symbol"] for e in entries]
            if fields.get("last") not in names:
                return "params error: cursor is invalid"
            start = names.index(fields["last"]) + 1
        page = entries[start : start + limit]
        more = start + limit < len(entries)
        cursor = f"first%3D{page[0]['symbol']}%26last%3D{page[-1]['symbol']}" if more else ""
        return {"category": category, "list": page, "nextPageCursor": cursor}

    def instruments(self, category: str) -> list[dict[str, Any]]:
        """Every instrument of ``category`` as instruments-info lists it, all ``Trading``."""
        entries = []
        for symbol in self.symbols[category]:
            market = self._markets[(category, symbol)]
            quote = "USD" if category == "inverse" else quote_asset(symbol)
            base = symbol[: -len(quote)]
            tick = f"{10.0**-market.price_decimals:.{market.price_decimals}f}"
            step = "1" if category == "inverse" else f"{10.0**-market.qty_decimals:.{market.qty_decimals}f}"
            if category == "spot":
                entries.append(_spot_instrument(symbol, base, quote, tick, step))
            else:
                entries.append(_contract_instrument(category, symbol, base, quote, tick, step, market))
        return entries


def _spot_instrument(symbol: str, base: str, quote: str, tick: str, step: str) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "baseCoin": base,
        "quoteCoin": quote,
        "innovation": "0",
        "status": "Trading",
        "marginTrading": "utaOnly",
        "stTag": "0",
        "lotSizeFilter": {
            "basePrecision": step,
            "quotePrecision": "0.00000001",
            "minOrderQty": step,
            "maxOrderQty": "10000",
            "minOrderAmt": "5",
            "maxOrderAmt": "8000000",
        },
        "priceFilter": {"tickSize": tick},
        "symbolType": "",
    }


def _contract_instrument(
    category: str, symbol: str, base: str, quote: str, tick: str, step: str, market: BybitMarket
) -> dict[str, Any]:
    inverse = category == "inverse"
    return {
        "symbol": symbol,
        "contractType": "InversePerpetual" if inverse else "LinearPerpetual",
        "status": "Trading",
        "baseCoin": base,
        "quoteCoin": quote,
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(market.price_decimals),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {
            "minPrice": tick,
            "maxPrice": f"{market.level * 30:.{market.price_decimals}f}",
            "tickSize": tick,
        },
        "lotSizeFilter": {
            "maxOrderQty": "1000000" if inverse else "1190",
            "minOrderQty": step,
            "qtyStep": step,
            "postOnlyMaxOrderQty": "1000000" if inverse else "1190",
            "maxMktOrderQty": "500000" if inverse else "500",
            "minNotionalValue": "5",
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": base if inverse else quote,
        "copyTrading": "both",
        "upperFundingRate": "0.00375",
        "lowerFundingRate": "-0.00375",
        "isPreListing": False,
        "preListingInfo": None,
        "symbolType": "",
    }


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", choices=CATEGORIES, default="spot", help="market of ws_url")
    parser.add_argument(
        "--symbols", default=",".join(DEFAULT_SYMBOLS), help="comma-separated spot and linear symbols"
    )
    parser.add_argument(
        "--inverse-symbols", default=",".join(DEFAULT_INVERSE_SYMBOLS), help="comma-separated inverse symbols"
    )


def _from_args(args: argparse.Namespace) -> BybitSimulator:
    return BybitSimulator(
        category=args.category,
        symbols=symbol_list(args.symbols),
        inverse_symbols=symbol_list(args.inverse_symbols),
        speed=args.speed,
    )


#: the category of each venue id (one simulator serves the three endpoints)
_CATEGORY_OF: Final = {"bybit": "spot", "bybit-linear": "linear", "bybit-inverse": "inverse"}

#: what the tools need to run this simulator (found by :func:`feedd.sim.registry`)
#: a recorded topic's prefix -> its tape, per category (inverse plays linear's tapes)
_TAPES: Final = {
    "spot": {"publicTrade": "spot_trades", "tickers": "spot_tickers", "orderbook": "spot_book"},
    "linear": {"publicTrade": "linear_trades", "tickers": "linear_tickers"},
}


def _tape_of(venue_id: str, frame: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """A data frame's tape, by its topic (``publicTrade.BTCUSDT`` on spot: ``spot_trades``);
    a tape holds every symbol's frames."""
    topic = frame.get("topic")
    if not isinstance(topic, str) or "data" not in frame:
        return None
    name = _TAPES.get(_CATEGORY_OF.get(venue_id, ""), {}).get(topic.partition(".")[0])
    if name == "spot_book" and not topic.startswith("orderbook.1."):
        return None
    return None if name is None else ("bybit", name, "")


SIMULATOR: Final = SimSpec(
    name="bybit",
    help="Bybit v5 public spot, linear and inverse streams",
    groups=(tuple(_CATEGORY_OF),),
    make=lambda venue_ids, speed: BybitSimulator(speed=speed),
    symbols={
        "bybit": ("BTCUSDT", "ETHUSDT"),
        "bybit-linear": ("BTCUSDT", "ETHUSDT"),
        "bybit-inverse": ("BTCUSD",),
    },
    spare="SOLUSDT",
    speed=5.0,  # the recorded tape is sparse
    url=lambda sim, venue_id: sim.endpoint(_CATEGORY_OF[venue_id]),
    add_arguments=_add_arguments,
    from_args=_from_args,
    tape_of=_tape_of,
)

__all__ = ["SIMULATOR", "BybitConnection", "BybitProtocol", "BybitSimulator"]
