"""A local Coinbase Advanced Trade: the public market-data WebSocket and the products REST call.

Speaks the protocol of protocols/README.md §3a as checked against Coinbase's Advanced Trade
docs (websocket-overview, -channels, -rate-limits, the AsyncAPI spec), in the shapes the
production recording shows: ``{"type": "subscribe" | "unsubscribe", "product_ids": [...],
"channel": "<one channel>"}`` without a JWT; every answer and data message in the envelope
``{"channel", "timestamp", "sequence_num", "events"}`` (no ``client_id``, as recorded and as the
AsyncAPI notes say; ``client_id=True`` adds the prose docs' ``"client_id": ""``), numbered per
connection across all channels from 0. A subscribe is answered with the new products'
snapshots, then a ``subscriptions`` message listing everything the connection holds, as
recorded; an unsubscribe with the same listing.

The rules: a connection that holds no subscription 5 s after opening is cut; one that was sent
no update for 60 s (the docs: "Most channels close within 60-90 seconds if no updates are
sent"; the ``heartbeats`` channel, one message a second, keeps it open) is cut; more than 8
client messages within a second from one address ("unauthenticated messages are rate-limited at
8 per second per IP address") close the connection that sent the 9th (1008). How Coinbase cuts
is undocumented; here the first two are cut without a close frame.

Failures are ``{"type": "error", "message": ...}`` and subscribe nothing. The shape is the
Exchange and Prime docs' and what clients record from Advanced Trade for a private channel
(``"authentication failure"``, [3p]); every other wording is [unverified]. ``candles``,
``level2``, ``status`` and ``ticker_batch`` are acknowledged but carry no data here.
:class:`CoinbaseProtocol` is that protocol as a pure object; :class:`CoinbaseSimulator` serves
it through :mod:`feedd.sim.server` with data from :mod:`feedd.sim.coinbase_market`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, Final

import orjson
import trio

from feedd.sim.coinbase_market import CoinbaseMarket, go_time, rfc3339, source_of
from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection
from feedd.sim.replay import play
from feedd.sim.rest import HttpRequest, HttpResponse
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec, symbol_list

DEFAULT_PRODUCTS: Final = ("BTC-USD", "ETH-USD")
#: [at-ov] "you must send a subscribe message within 5 seconds or you are disconnected"
SUBSCRIBE_TIMEOUT: Final = 5.0
#: [at-ch] "Most channels close within 60-90 seconds if no updates are sent": the early end
IDLE_TIMEOUT: Final = 60.0
#: [at-rl] "unauthenticated messages are rate-limited at 8 per second per IP address"
MAX_MESSAGES_PER_SECOND: Final = 8
#: [at-ch] "receive heartbeats messages every second"
HEARTBEAT_INTERVAL: Final = 1.0
HEARTBEATS: Final = "heartbeats"
#: channels with data here, one subscription per product
DATA_CHANNELS: Final = ("market_trades", "ticker")
#: public channels acknowledged but without data here
DATALESS_CHANNELS: Final = ("candles", "level2", "status", "ticker_batch")
#: [at-ch] the only channels that require authentication
PRIVATE_CHANNELS: Final = ("user", "futures_balance_summary")
PRODUCTS_PATH: Final = "/api/v3/brokerage/market/products"
#: Get Public Market Trades: ``{PRODUCTS_PATH}/{product_id}/ticker?limit=``
TICKER_SUFFIX: Final = "/ticker"

_PRODUCT_ID: Final = re.compile(r"[A-Z0-9]+-[A-Z0-9]+")
_MALFORMED_FRAME: Final = '{"channel":"market_trades","timestamp":"2024-08-08T23:55:15.2367421'
#: separates an unnumbered message's head from its events; raw JSON text never holds a newline
_SEQUENCE_SLOT: Final = "\n"


def message(channel: str, timestamp: str, events: str, *, client_id: bool = False) -> str:
    """An unnumbered message: :meth:`CoinbaseConnection.frame` puts its ``sequence_num`` in as
    it is queued. ``events`` is JSON text."""
    head = f'{{"channel":"{channel}","client_id":""' if client_id else f'{{"channel":"{channel}"'
    return f'{head},"timestamp":"{timestamp}"{_SEQUENCE_SLOT}"events":{events}}}'


def error(text: str) -> str:
    """A failure as Coinbase words them: flat, unnumbered, outside any channel."""
    return orjson.dumps({"type": "error", "message": text}).decode()


class CoinbaseConnection(SimConnection):
    """A market-data connection: its subscriptions and its message counter.

    :attr:`topics` holds ``"<channel>:<product>"`` (``"market_trades:BTC-USD"``) per product
    subscribed, and ``"heartbeats"``.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path)
        #: the ``sequence_num`` the next message gets
        self.next_sequence = 0

    @property
    def subscriptions(self) -> dict[str, list[str]]:
        """What a ``subscriptions`` message lists: products per channel, channels sorted (as
        recorded), products in subscription order; heartbeats as ``["heartbeats"]``."""
        held: dict[str, list[str]] = {}
        for topic in self.topics:
            channel, _, product = topic.partition(":")
            held.setdefault(channel, []).append(product or channel)
        return dict(sorted(held.items()))

    def frame(self, channel: str, payload: str) -> str:
        """Number an unnumbered message (see :func:`message`); an error passes as it is."""
        del channel
        head, slot, events = payload.partition(_SEQUENCE_SLOT)
        if not slot:
            return payload  # an error: not numbered
        number = self.next_sequence
        self.next_sequence += 1
        return f'{head},"sequence_num":{number},{events}'


class CoinbaseProtocol:
    """Coinbase Advanced Trade's market-data protocol, pure: requests, replies, limits.

    ``products`` are the ones that exist; ``snapshot(channel, product)`` gives the events of a
    new subscription's first message (None: the channel sends none); ``now_ns`` is the wall
    clock the envelopes' timestamps read.
    """

    def __init__(
        self,
        *,
        products: Iterable[str],
        snapshot: Callable[[str, str], str | None],
        now_ns: Callable[[], int] = time.time_ns,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        max_messages_per_second: int = MAX_MESSAGES_PER_SECOND,
        client_id: bool = False,
    ) -> None:
        self.liveness = Liveness(
            max_incoming_per_second=max_messages_per_second,
            incoming_per_address=True,
            idle_timeout=idle_timeout,
            subscribe_timeout=subscribe_timeout,
        )
        self.default_path = "/"
        self.malformed_frame = _MALFORMED_FRAME
        self.client_id = client_id
        #: faults: products whose subscribe is refused; subscribes dropped unanswered
        self.refused: frozenset[str] = frozenset()
        self.swallow_subscribes = False
        #: error messages sent back
        self.errors_sent = 0
        self._products = frozenset(products)
        self._snapshot = snapshot
        self._now_ns = now_ns

    def open(self, path: str, query: str) -> Accept[CoinbaseConnection] | Reject:
        del query
        if path not in ("", "/"):
            return Reject(404, {"error": "NOT_FOUND", "message": f"Not found: {path}"})
        return Accept(CoinbaseConnection(path or "/"))

    def receive(self, conn: CoinbaseConnection, text: str) -> Answer:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return self._fail("failed to parse the message as JSON")
        if not isinstance(request, dict):
            return self._fail("a message must be a JSON object")
        kind = request.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            return self._fail(f"unknown message type: {kind!r}; expected subscribe or unsubscribe")
        channel = request.get("channel")
        if not isinstance(channel, str):
            # Coinbase Exchange's "channels": [...] lands here: Advanced Trade takes one channel.
            return self._fail(f"Failed to {kind}: channel must be one channel name (a string)")
        if channel in PRIVATE_CHANNELS:
            return self._fail("authentication failure")
        if channel != HEARTBEATS and channel not in DATA_CHANNELS and channel not in DATALESS_CHANNELS:
            return self._fail(f"Failed to {kind}: unknown channel {channel}")
        products = request.get("product_ids")
        if products is not None and (
            not isinstance(products, list) or not all(isinstance(p, str) for p in products)
        ):
            return self._fail(f"Failed to {kind}: product_ids must be an array of strings")
        if kind == "unsubscribe":
            return self._unsubscribe(conn, channel, products)
        return self._subscribe(conn, channel, products)

    def _subscribe(self, conn: CoinbaseConnection, channel: str, products: list[str] | None) -> Answer:
        if self.swallow_subscribes:
            return Answer()
        if channel == HEARTBEATS:
            topics = [HEARTBEATS]  # product_ids, if any, are ignored (recorded)
        else:
            if not products:
                return self._fail(f"Failed to subscribe: {channel} needs product_ids")
            unknown = [p for p in dict.fromkeys(products) if p not in self._products or p in self.refused]
            if unknown:
                return self._fail(f"Failed to subscribe: {', '.join(unknown)} is not a valid product")
            topics = [f"{channel}:{p}" for p in dict.fromkeys(products)]
        new = [topic for topic in topics if topic not in conn.topics]
        stamp = rfc3339(self._now_ns())
        frames: list[str] = []
        for topic in new:
            conn.topics[topic] = None
            events = self._snapshot(channel, topic.partition(":")[2]) if topic != HEARTBEATS else None
            if events is not None:
                frames.append(message(channel, stamp, events, client_id=self.client_id))
        frames.append(self._listing(conn, stamp))
        start = tuple(t for t in new if channel == HEARTBEATS or channel in DATA_CHANNELS)
        return Answer(frames=tuple(frames), start=start, queued=True)

    def _unsubscribe(self, conn: CoinbaseConnection, channel: str, products: list[str] | None) -> Answer:
        # [at-ov] no product_ids: the whole channel. Products not held are ignored.
        if channel == HEARTBEATS or products is None:
            gone = [t for t in conn.topics if t.partition(":")[0] == channel]
        else:
            gone = [t for t in (f"{channel}:{p}" for p in products) if t in conn.topics]
        for topic in gone:
            del conn.topics[topic]
        stop = tuple(t for t in gone if channel == HEARTBEATS or channel in DATA_CHANNELS)
        return Answer(frames=(self._listing(conn, rfc3339(self._now_ns())),), stop=stop, queued=True)

    def _listing(self, conn: CoinbaseConnection, stamp: str) -> str:
        events = orjson.dumps([{"subscriptions": conn.subscriptions}]).decode()
        return message("subscriptions", stamp, events, client_id=self.client_id)

    def _fail(self, text: str) -> Answer:
        self.errors_sent += 1
        return Answer(frames=(error(text),), queued=True)


class CoinbaseSimulator(SimServer[CoinbaseConnection]):
    """Coinbase Advanced Trade's market-data WebSocket and public products REST on localhost.

    Run it with ``await nursery.start(sim.serve)``; :attr:`ws_url` is the endpoint (path ``/``)
    and :attr:`rest_url` serves ``GET /api/v3/brokerage/market/products``. ``products`` trade
    (replayed); ``quiet_products`` exist but never trade or quote (an illiquid pair);
    ``delisted_products`` are listed by REST as delisted and refused on the WebSocket.
    """

    def __init__(
        self,
        *,
        products: Iterable[str] = DEFAULT_PRODUCTS,
        quiet_products: Iterable[str] = (),
        delisted_products: Iterable[str] = (),
        speed: float = 1.0,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        max_messages_per_second: int = MAX_MESSAGES_PER_SECOND,
        client_id: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        active = tuple(dict.fromkeys(products))
        quiet = tuple(p for p in dict.fromkeys(quiet_products) if p not in active)
        delisted = tuple(p for p in dict.fromkeys(delisted_products) if p not in active + quiet)
        malformed = [p for p in active + quiet + delisted if not _PRODUCT_ID.fullmatch(p)]
        if malformed:
            raise ValueError(f"products are BASE-QUOTE in capitals (BTC-USD), got {', '.join(malformed)}")
        self.speed = speed
        #: every product the WebSocket accepts: the trading ones, then the quiet ones
        self.products: tuple[str, ...] = active + quiet
        self.quiet_products = quiet
        self.delisted_products = delisted
        now = time.time_ns()
        self._markets = {
            product: CoinbaseMarket(product, index, source_of(product, index), now)
            for index, product in enumerate(self.products + self.delisted_products)
        }
        protocol = CoinbaseProtocol(
            products=self.products,
            snapshot=self._snapshot,
            subscribe_timeout=subscribe_timeout,
            idle_timeout=idle_timeout,
            max_messages_per_second=max_messages_per_second,
            client_id=client_id,
        )
        super().__init__(protocol, ssl_context=ssl_context)
        self._protocol = protocol
        #: trades a new market_trades snapshot leaves out and its first update repeats (a fault)
        self._overlap = 0
        #: market_trades messages still to drop (a fault): made, kept in the REST, never sent
        self._dropping = 0
        #: ``(product, trade_id)`` of every trade the overlap fault sent again
        self.trades_repeated: list[tuple[str, str]] = []

    @property
    def errors_sent(self) -> int:
        """``{"type": "error"}`` messages sent back to clients."""
        return self._protocol.errors_sent

    @property
    def client_id(self) -> bool:
        """Whether envelopes carry the prose docs' ``"client_id": ""`` (production's do not)."""
        return self._protocol.client_id

    def market(self, product: str) -> CoinbaseMarket:
        """The state of ``product`` (its ``history`` is every trade it made)."""
        return self._markets[product]

    def ticker(self, product: str) -> dict[str, str]:
        """The ticker of ``product`` as last pushed (what a snapshot would hold now)."""
        return dict(self._markets[product].published)

    # ---- faults --------------------------------------------------------------------------

    def skip_sequence(self, count: int = 1, conn: CoinbaseConnection | None = None) -> None:
        """Make the next message on ``conn`` (default: every live connection) skip ``count``
        sequence numbers, as when Coinbase drops messages."""
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        for target in [conn] if conn is not None else self.connections:
            target.next_sequence += count

    def keep_trading(self) -> None:
        """Every product's tape plays from now on whether anybody subscribes or not, so trades
        are made (and kept for the REST's market trades) while no connection is up."""
        for product in self.products:
            if product not in self.quiet_products:
                self._markets[product].demand.add(1)

    def drop_trade_messages(self, count: int = 1) -> None:
        """Leave the next ``count`` market_trades updates out of the stream, as when Coinbase
        drops messages: their sequence numbers are skipped (the next message tells), and the
        REST has their trades."""
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        self._dropping += count

    def overlap_trades(self, count: int) -> None:
        """From now on, make a new ``market_trades`` subscription's snapshot lag ``count`` trades
        behind and its first update repeat those trades, before any new one (0: off).

        A connection that replaces a dropped one thus gets, as updates, the last trades its
        predecessor was already sent, as the updates after a resubscription may repeat trades
        (what a client's trade-id dedupe is for). The stream stays whole: snapshot, repeated
        trades and new ones follow on without a gap. :attr:`trades_repeated` lists them.
        """
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        self._overlap = count

    # ---- market data ---------------------------------------------------------------------

    def _snapshot(self, channel: str, product: str) -> str | None:
        market = self._markets[product]
        if channel == "market_trades":
            return market.trade_events("snapshot", market.snapshot_trades()[self._overlap:])
        if channel == "ticker":
            return market.ticker_events("snapshot", market.published)
        return None

    def _run_feeds(self, nursery: trio.Nursery) -> None:
        replayed = [self._markets[p] for p in self.products if p not in self.quiet_products]
        sharing: dict[str, list[CoinbaseMarket]] = {}
        for market in replayed:
            sharing.setdefault(market.tape.product, []).append(market)
        for markets in sharing.values():
            for rank, market in enumerate(markets):
                # Products on one tape start at different points of it, so they do not move in lockstep.
                tape = market.tape.updates
                start = rank * len(tape) // len(markets)
                emit = partial(self._on_frame, market)
                replay = partial(play, tape, emit, demand=market.demand, speed=self.speed, start=start)
                nursery.start_soon(replay)
        nursery.start_soon(self._beat)

    def _on_start(self, conn: CoinbaseConnection, channel: str) -> None:
        if channel == HEARTBEATS:
            return
        name, _, product = channel.partition(":")
        market = self._markets[product]
        if name == "market_trades" and self._overlap:
            # right behind the snapshot and listing just queued: the trades the snapshot left out
            repeated = market.snapshot_trades()[: self._overlap]
            text = message(name, rfc3339(time.time_ns()), market.trade_events("update", repeated),
                           client_id=self.client_id)
            self.deliver(conn, conn.frame(name, text))
            self.trades_repeated += [(t["product_id"], t["trade_id"]) for t in repeated]
        market.demand.add(1)

    def _heartbeat(self, channel: str) -> bool:
        return channel == HEARTBEATS

    def _on_stop(self, conn: CoinbaseConnection, channel: str) -> None:
        if channel != HEARTBEATS:
            self._markets[channel.partition(":")[2]].demand.add(-1)

    def _on_frame(self, market: CoinbaseMarket, frame: Mapping[str, Any]) -> None:
        now = time.time_ns()
        if frame["channel"] == "market_trades":
            trades = market.trades(frame, now)
            channel = market.channel("market_trades")
            if self._dropping and self.has_subscribers(channel):
                self._dropping -= 1
                for conn in self._subscribers.get(channel, ()):
                    conn.next_sequence += 1
            elif self.has_subscribers(channel):
                events = market.trade_events("update", trades)
                text = message("market_trades", rfc3339(now), events, client_id=self.client_id)
                self.publish(channel, text)
        else:
            market.apply_quote(frame["events"][0]["tickers"][0])
        changed = market.ticker_changes()
        channel = market.channel("ticker")
        if changed is not None and self.has_subscribers(channel):
            events = market.ticker_events("update", changed)
            self.publish(channel, message("ticker", rfc3339(now), events, client_id=self.client_id))

    async def _beat(self) -> None:
        """One heartbeats message a second to every subscriber; the counter counts the seconds
        the simulator has served, like the server uptime Coinbase's counter follows (recorded)."""
        started = trio.current_time()
        counter = 0
        while True:
            counter += 1
            await trio.sleep_until(started + counter * HEARTBEAT_INTERVAL)
            if not self.has_subscribers(HEARTBEATS):
                continue
            now = time.time_ns()
            beat = {"current_time": go_time(now, trio.current_time() - started), "heartbeat_counter": counter}
            events = orjson.dumps([beat]).decode()
            self.publish(HEARTBEATS, message(HEARTBEATS, rfc3339(now), events, client_id=self.client_id))

    # ---- REST ----------------------------------------------------------------------------

    def _rest_outage(self) -> HttpResponse:
        return HttpResponse(503, _rest_error("UNAVAILABLE", 14, "service unavailable (simulated outage)"))

    def _market_trades(self, product: str, query: Mapping[str, list[str]]) -> HttpResponse:
        """Get Public Market Trades: the product's latest ``limit`` trades (required, 1000 at
        most here [unverified maximum]), newest first, with the best bid and ask."""
        market = self._markets.get(product)
        if market is None or product in self.delisted_products:
            return HttpResponse(404, _rest_error("NOT_FOUND", 5, f"product {product} not found"))
        try:
            limit = int(query["limit"][-1])
        except (KeyError, ValueError):
            return HttpResponse(400, _rest_error("INVALID_ARGUMENT", 3, "limit is required, an integer"))
        if not 1 <= limit <= 1000:
            return HttpResponse(400, _rest_error("INVALID_ARGUMENT", 3, "limit must be within [1, 1000]"))
        trades = [{**t, "bid": "", "ask": "", "exchange": "coinbase"}
                  for t in reversed(list(market.history)[-limit:])]
        return HttpResponse(200, {"trades": trades, "best_bid": market.price(market.bid),
                                  "best_ask": market.price(market.ask)})

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        if request.method == "GET" and path.startswith(PRODUCTS_PATH + "/") and path.endswith(TICKER_SUFFIX):
            return self._market_trades(path[len(PRODUCTS_PATH) + 1 : -len(TICKER_SUFFIX)], request.query)
        if request.method != "GET" or request.path != PRODUCTS_PATH:
            missing = f"Not found: {request.method} {request.path}"
            return HttpResponse(404, _rest_error("NOT_FOUND", 5, missing))
        page = self._products_page(request.query)
        if isinstance(page, str):
            return HttpResponse(400, _rest_error("INVALID_ARGUMENT", 3, page))
        return HttpResponse(200, page)

    def _products_page(self, query: Mapping[str, list[str]]) -> dict[str, Any] | str:
        """One page of ``GET /api/v3/brokerage/market/products``, or why the query is refused.

        ``limit`` (default: everything) and ``offset`` page the list; ``cursor`` (a previous
        page's ``pagination.next_cursor``) stands for the offset; ``product_ids`` and
        ``product_type`` filter it. ``num_products`` counts the products on the page
        ([unverified]: the docs do not say whether it counts the page or the whole list).
        """
        entries = self.product_list()
        wanted = query.get("product_ids")
        if wanted:
            entries = [e for e in entries if e["product_id"] in wanted]
        product_type = query.get("product_type", ["SPOT"])[-1]
        if product_type not in ("SPOT", "FUTURE", "UNKNOWN_PRODUCT_TYPE"):
            return f"invalid product_type: {product_type}"
        if product_type != "SPOT":
            entries = []
        try:
            limit = int(query.get("limit", ["0"])[-1])
            offset = int(query.get("offset", ["0"])[-1])
        except ValueError:
            return "limit and offset must be integers"
        if limit < 0 or offset < 0:
            return "limit and offset must not be negative"
        if query.get("cursor", [""])[-1]:
            try:
                offset = int(base64.b64decode(query["cursor"][-1], validate=True).decode())
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return "invalid cursor"
        end = len(entries) if limit == 0 else offset + limit
        page = entries[offset:end]
        more = end < len(entries)
        return {
            "products": page,
            "num_products": len(page),
            "pagination": {
                "prev_cursor": _cursor(max(0, offset - limit)) if offset else "",
                "next_cursor": _cursor(end) if more else "",
                "has_next": more,
                "has_prev": offset > 0,
            },
        }

    def product_list(self) -> list[dict[str, Any]]:
        """Every product as the products endpoint lists it: the WebSocket's products
        ``online``, then the delisted ones (``trading_disabled``)."""
        listed = [_product(self._markets[p], delisted=False) for p in self.products]
        return listed + [_product(self._markets[p], delisted=True) for p in self.delisted_products]


def _cursor(offset: int) -> str:
    """The opaque page cursor (base64, as documented) that stands for ``offset``."""
    return base64.b64encode(str(offset).encode()).decode()


def _rest_error(error_name: str, code: int, text: str) -> dict[str, Any]:
    """The Advanced Trade REST error body (documented shape)."""
    return {"error": error_name, "code": code, "message": text, "details": []}


def _product(market: CoinbaseMarket, *, delisted: bool) -> dict[str, Any]:
    """One product of the products endpoint (the documented fields a spot product carries)."""
    base, _, quote = market.product.partition("-")
    tick = market.price(10.0**-market.price_decimals)
    step = market.size(10.0**-market.qty_decimals)
    ticker = market.published
    return {
        "product_id": market.product,
        "price": ticker["price"],
        "price_percentage_change_24h": ticker["price_percent_chg_24_h"],
        "volume_24h": ticker["volume_24_h"],
        "volume_percentage_change_24h": "0",
        "base_increment": step,
        "quote_increment": tick,
        "quote_min_size": "1",
        "quote_max_size": "150000000",
        "base_min_size": step,
        "base_max_size": "3400",
        "base_name": base,
        "quote_name": quote,
        "watched": False,
        "is_disabled": delisted,
        "new": False,
        "status": "delisted" if delisted else "online",
        "cancel_only": False,
        "limit_only": False,
        "post_only": False,
        "trading_disabled": delisted,
        "auction_mode": False,
        "product_type": "SPOT",
        "quote_currency_id": quote,
        "base_currency_id": base,
        "fcm_trading_session_details": None,
        "mid_market_price": "",
        "alias": "",
        "alias_to": [],
        "base_display_symbol": base,
        "quote_display_symbol": quote,
        "view_only": delisted,
        "price_increment": tick,
        "display_name": f"{base}-{quote}",
        "product_venue": "CBE",
        "approximate_quote_24h_volume": _fixed2(float(ticker["volume_24_h"]) * float(ticker["price"])),
        "new_at": "2016-05-18T00:00:00Z",
    }


def _fixed2(value: float) -> str:
    return f"{value:.2f}"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--products", default=",".join(DEFAULT_PRODUCTS), help="comma-separated products with data"
    )
    parser.add_argument(
        "--quiet-products", default="", help="comma-separated products that exist but never trade"
    )


def _from_args(args: argparse.Namespace) -> CoinbaseSimulator:
    return CoinbaseSimulator(
        products=symbol_list(args.products), quiet_products=symbol_list(args.quiet_products), speed=args.speed
    )


_SPARE: Final = "SOL-USD"

#: what the tools need to run this simulator (found by :func:`feedd.sim.registry`)
def _tape_of(venue_id: str, frame: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """A ``market_trades`` or ``ticker`` frame's tape: its product's (``btc_usd``)."""
    del venue_id
    channel = frame.get("channel")
    events = frame.get("events")
    if channel not in DATA_CHANNELS or not isinstance(events, list) or not events:
        return None
    items = events[0].get("trades" if channel == "market_trades" else "tickers") if isinstance(
        events[0], Mapping) else None
    if not isinstance(items, list) or not items or not isinstance(items[0], Mapping):
        return None
    product = str(items[0].get("product_id", ""))
    return ("coinbase", product.lower().replace("-", "_"), "") if product else None


SIMULATOR: Final = SimSpec(
    name="coinbase",
    help="Coinbase Advanced Trade market data",
    groups=(("coinbase",),),
    make=lambda venue_ids, speed: CoinbaseSimulator(speed=speed, products=(*DEFAULT_PRODUCTS, _SPARE)),
    symbols={"coinbase": DEFAULT_PRODUCTS},
    spare=_SPARE,
    add_arguments=_add_arguments,
    from_args=_from_args,
    tape_of=_tape_of,
)

__all__ = ["SIMULATOR", "CoinbaseConnection", "CoinbaseProtocol", "CoinbaseSimulator"]
