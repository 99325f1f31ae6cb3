"""A local Coinbase Exchange: the public WebSocket feed and the ``GET /products`` REST call.

The protocol of protocols/README.md §3b and §10, checked against Coinbase's Exchange WebSocket
docs (overview, channels, errors, rate limits): flat messages with a ``type``; requests
``{"type": "subscribe" | "unsubscribe", "product_ids": [...], "channels": [name | {"name",
"product_ids"}]}`` (the root list for channels named by a string), each answered by a
``subscriptions`` listing of all the connection holds, then a ``last_match`` (the latest trade)
per new ``matches`` product; or refused whole by ``{"type": "error", "message": "Failed to
subscribe", "reason": ...}`` in the words clients record ("BAD-USD is not a valid product", "No
channels provided", "You need to specify at least one product ID for channel ..." [3p]; others
[unverified]). Each product replays a bundled tape of :mod:`feedd.sim.coinbase_market`: a trade is
a ``match`` (``side`` the maker's, ids one by one), a batch of trades one ``ticker`` (the taker's
side, its match's ``sequence``); ``sequence`` grows by 2 a trade, as the product's full feed, of
which these channels see a part, would. ``heartbeat``: a second per product, with ``sequence`` and
``last_trade_id``. REST: ``GET /products`` and ``GET /products/{id}/trades`` (the product's
trade history, newest first, paged by the ``after``/``before`` trade-id cursors, ``limit`` at
most 1000), served from the same tape, skipped trades included. Rules: subscribe within 5 s or
be cut; over 100 client messages a second from one address close the connection (1008).
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, Final

import orjson
import trio

from feedd.sim.coinbase_market import CoinbaseMarket, rfc3339, source_of
from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection
from feedd.sim.replay import play_staggered
from feedd.sim.rest import HttpRequest, HttpResponse
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec

DEFAULT_PRODUCTS: Final = ("BTC-USD", "ETH-USD")
#: [ex-ov] "you are disconnected if no subscribe has been received within 5 seconds"
SUBSCRIBE_TIMEOUT: Final = 5.0
#: [ex-rl] "Messages sent by the client every second per IP: 100"
MAX_MESSAGES_PER_SECOND: Final = 100
#: [ex-ch] heartbeat messages "for specific products every second"
HEARTBEAT_INTERVAL: Final = 1.0
HEARTBEAT: Final = "heartbeat"
DATA_CHANNELS: Final = ("matches", "ticker")
DATALESS_CHANNELS: Final = ("level2_batch", "status", "ticker_batch")
PRIVATE_CHANNELS: Final = ("full", "level2", "level3", "user", "balance")
_MALFORMED_FRAME: Final = '{"type":"match","trade_id":100000001,"maker_order_id":"ac928c66-ca53'


class CoinbaseExchangeProtocol:
    """The Exchange feed's request protocol, pure: requests, replies, limits. ``products`` exist;
    ``last_match(product)`` is the ``last_match`` message a new ``matches`` subscriber gets."""

    def __init__(
        self, *, products: Iterable[str], last_match: Callable[[str], str],
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT, max_messages_per_second: int = MAX_MESSAGES_PER_SECOND,
    ) -> None:
        self.liveness = Liveness(max_incoming_per_second=max_messages_per_second, incoming_per_address=True,
                                 subscribe_timeout=subscribe_timeout)
        self.default_path = "/"
        self.malformed_frame = _MALFORMED_FRAME
        self.refused: frozenset[str] = frozenset()
        self.swallow_subscribes = False
        #: error messages sent back
        self.errors_sent = 0
        self._products = frozenset(products)
        self._last_match = last_match

    def open(self, path: str, query: str) -> Accept[SimConnection] | Reject:
        del query
        if path not in ("", "/"):
            return Reject(404, {"message": "Not Found"})
        return Accept(SimConnection("/"))

    def receive(self, conn: SimConnection, text: str) -> Answer:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return self._fail("Failed to parse the message", "malformed JSON")
        kind = request.get("type") if isinstance(request, dict) else None
        if kind not in ("subscribe", "unsubscribe"):
            return self._fail(f"{kind!r:.40} is not a valid type", "expected subscribe or unsubscribe")
        failed = f"Failed to {kind}"
        asked = _channels(request)
        if isinstance(asked, str):
            return self._fail(failed, asked)
        for name, products in asked:
            if name in PRIVATE_CHANNELS:
                return self._fail(failed, f"{name} channel requires authentication")
            if name != HEARTBEAT and name not in DATA_CHANNELS and name not in DATALESS_CHANNELS:
                return self._fail(failed, f"{name} is not a valid channel")
            if kind == "subscribe" and not products:
                return self._fail(failed, f"You need to specify at least one product ID for channel {name}")
        if kind == "unsubscribe":
            gone = [t for name, products in asked for t in list(conn.topics)
                    if t.partition(":")[0] == name and (products is None or t.partition(":")[2] in products)]
            for topic in gone:
                del conn.topics[topic]
            return Answer(frames=(self._listing(conn),), stop=tuple(gone), queued=True)
        if self.swallow_subscribes:
            return Answer()
        for _, products in asked:
            for product in products or ():
                if product not in self._products or product in self.refused:
                    return self._fail(failed, f"{product} is not a valid product")
        new = [t for name, products in asked for t in (f"{name}:{p}" for p in products or ())
               if t not in conn.topics]
        new = list(dict.fromkeys(new))
        conn.topics.update(dict.fromkeys(new))
        frames = [self._listing(conn)]
        frames += [self._last_match(t.partition(":")[2]) for t in new if t.startswith("matches:")]
        return Answer(frames=tuple(frames), start=tuple(new), queued=True)

    @staticmethod
    def _listing(conn: SimConnection) -> str:
        held: dict[str, list[str]] = {}
        for topic in conn.topics:
            name, _, product = topic.partition(":")
            held.setdefault(name, []).append(product)
        channels = [{"name": name, "product_ids": products} for name, products in held.items()]
        return orjson.dumps({"type": "subscriptions", "channels": channels}).decode()

    def _fail(self, message: str, reason: str) -> Answer:
        self.errors_sent += 1
        text = orjson.dumps({"type": "error", "message": message, "reason": reason}).decode()
        return Answer(frames=(text,), queued=True)


def _channels(request: dict[str, Any]) -> list[tuple[str, list[str] | None]] | str:
    """The (channel, products) a request names (None: no products named), or why it is refused."""
    root = request.get("product_ids")
    channels = request.get("channels")
    if not isinstance(channels, list) or not channels:
        return "No channels provided"
    asked: list[tuple[str, list[str] | None]] = []
    for entry in channels:
        name, products = (entry, root) if isinstance(entry, str) else (
            (entry.get("name"), entry.get("product_ids", root)) if isinstance(entry, dict) else (None, None))
        if not isinstance(name, str):
            return "a channel is a name or an object with a 'name'"
        if products is not None and not (type(products) is list and all(type(p) is str for p in products)):
            return "product_ids must be an array of strings"
        asked.append((name, products))
    return asked


class CoinbaseExchangeSimulator(SimServer[SimConnection]):
    """Coinbase Exchange's WebSocket feed and ``GET /products`` on localhost.

    ``products`` trade (replayed); ``quiet_products`` exist but never trade; ``delisted_products``
    are listed by REST as delisted and refused on the WebSocket.
    """

    def __init__(
        self, *, products: Iterable[str] = DEFAULT_PRODUCTS, quiet_products: Iterable[str] = (),
        delisted_products: Iterable[str] = (), speed: float = 1.0,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT, max_messages_per_second: int = MAX_MESSAGES_PER_SECOND,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        active = tuple(dict.fromkeys(products))
        self.quiet_products = tuple(p for p in dict.fromkeys(quiet_products) if p not in active)
        self.products: tuple[str, ...] = active + self.quiet_products
        self.delisted_products = tuple(p for p in dict.fromkeys(delisted_products) if p not in self.products)
        self.speed = speed
        now = time.time_ns()
        self._markets = {p: CoinbaseMarket(p, i, source_of(p, i), now)
                         for i, p in enumerate(self.products + self.delisted_products)}
        #: per product: its feed's sequence number, and trades still to leave out (a fault)
        self.sequences = {p: 1_000_000 + m.next_trade_id % 1_000_000 for p, m in self._markets.items()}
        self._skipping: dict[str, int] = {}
        self._protocol = CoinbaseExchangeProtocol(
            products=self.products, last_match=self._last_match, subscribe_timeout=subscribe_timeout,
            max_messages_per_second=max_messages_per_second)
        super().__init__(self._protocol, ssl_context=ssl_context)

    @property
    def errors_sent(self) -> int:
        return self._protocol.errors_sent

    def last_trade_id(self, product: str) -> int:
        return self._markets[product].next_trade_id - 1

    def keep_trading(self) -> None:
        """Every product's tape plays from now on whether anybody subscribes or not, so trades
        are made (and kept in the REST history) while no connection is up."""
        for product in self.products:
            if product not in self.quiet_products:
                self._markets[product].demand.add(1)

    def skip_trades(self, count: int, product: str | None = None) -> None:
        """Leave the next ``count`` trades of ``product`` (default: each product) out of
        ``matches``, as when the feed drops messages: the trade ids jump, the heartbeat tells;
        the REST trade history has them."""
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        for each in [product] if product is not None else self.products:
            self._skipping[each] = self._skipping.get(each, 0) + count

    # ---- market data ---------------------------------------------------------------------

    def _match(self, kind: str, trade: Mapping[str, str], sequence: int) -> dict[str, Any]:
        return {"type": kind, "trade_id": int(trade["trade_id"]), "maker_order_id": str(uuid.uuid4()),
                "taker_order_id": str(uuid.uuid4()), "side": trade["side"].lower(), "size": trade["size"],
                "price": trade["price"], "product_id": trade["product_id"], "sequence": sequence,
                "time": trade["time"]}

    def _last_match(self, product: str) -> str:
        market = self._markets[product]
        return orjson.dumps(self._match("last_match", market.recent[-1], self.sequences[product])).decode()

    def _on_start(self, conn: SimConnection, channel: str, delta: int = 1) -> None:
        name, _, product = channel.partition(":")
        if name in DATA_CHANNELS:
            self._markets[product].demand.add(delta)

    def _on_stop(self, conn: SimConnection, channel: str) -> None:
        self._on_start(conn, channel, -1)

    def _heartbeat(self, channel: str) -> bool:
        return channel.startswith(HEARTBEAT + ":")

    def _run_feeds(self, nursery: trio.Nursery) -> None:
        active = [self._markets[p] for p in self.products if p not in self.quiet_products]
        feeds = [(m.tape.updates, partial(self._on_frame, m), m.demand) for m in active]
        play_staggered(nursery, feeds, speed=self.speed)
        nursery.start_soon(self._beat)

    def _on_frame(self, market: CoinbaseMarket, frame: Mapping[str, Any]) -> None:
        if self.faults.data_stalled:
            return  # the market stalls with its data: no trade the heartbeats would tell of
        if frame["channel"] != "market_trades":
            market.apply_quote(frame["events"][0]["tickers"][0])
            return
        product = market.product
        trades = market.trades(frame, time.time_ns())[::-1]  # oldest first
        sequence = self.sequences[product]
        for trade in trades:
            sequence += 2
            if self._skipping.get(product):
                self._skipping[product] -= 1
            else:
                match = self._match("match", trade, sequence)
                self.publish(f"matches:{product}", orjson.dumps(match).decode())
        self.sequences[product] = sequence
        if trades and self.has_subscribers(f"ticker:{product}"):
            ticker = self._ticker(market, trades[-1], sequence)
            self.publish(f"ticker:{product}", orjson.dumps(ticker).decode())

    def _ticker(self, market: CoinbaseMarket, trade: Mapping[str, str], sequence: int) -> dict[str, Any]:
        taker = "sell" if trade["side"] == "BUY" else "buy"
        price, size = market.price, market.size
        return {"type": "ticker", "sequence": sequence, "product_id": market.product,
                "price": price(market.last_price), "open_24h": price(market.open_price),
                "volume_24h": size(market.volume), "low_24h": price(market.low), "high_24h":
                price(market.high), "volume_30d": size(market.volume * 30), "best_bid": price(market.bid),
                "best_bid_size": size(market.bid_size), "best_ask": price(market.ask),
                "best_ask_size": size(market.ask_size), "side": taker, "time": trade["time"],
                "trade_id": int(trade["trade_id"]), "last_size": trade["size"]}

    async def _beat(self) -> None:
        """A heartbeat a second for every product some connection takes it for."""
        started = trio.current_time()
        count = 0
        while True:
            count += 1
            await trio.sleep_until(started + count * HEARTBEAT_INTERVAL)
            stamp = rfc3339(time.time_ns(), 6)
            for product in self.products:
                channel = f"{HEARTBEAT}:{product}"
                if self.has_subscribers(channel):
                    beat = {"type": HEARTBEAT, "sequence": self.sequences[product], "last_trade_id":
                            self.last_trade_id(product), "product_id": product, "time": stamp}
                    self.publish(channel, orjson.dumps(beat).decode())

    # ---- REST ----------------------------------------------------------------------------

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        if request.method == "GET" and request.path == "/products":
            return HttpResponse(200, self.product_list())
        product, _, rest = request.path.removeprefix("/products/").partition("/")
        if request.method == "GET" and rest == "trades" and request.path.startswith("/products/"):
            return self._trade_history(product, {k: v[-1] for k, v in request.query.items()})
        return HttpResponse(404, {"message": "NotFound"})

    def _rest_outage(self) -> HttpResponse:
        return HttpResponse(503, {"message": "Service Unavailable (simulated outage)"})

    def _trade_history(self, product: str, query: Mapping[str, str]) -> HttpResponse:
        """A product's trades newest first: ``after`` the ones older than that trade id,
        ``before`` the newer ones, at most ``limit`` (default and maximum 1000)."""
        market = self._markets.get(product)
        if market is None or product in self.delisted_products:
            return HttpResponse(404, {"message": "NotFound"})
        try:
            limit = int(query.get("limit", "1000"))
            after = int(query["after"]) if "after" in query else None
            before = int(query["before"]) if "before" in query else None
        except ValueError:
            return HttpResponse(400, {"message": "Invalid pagination parameter"})
        if not 1 <= limit <= 1000:
            return HttpResponse(400, {"message": "limit must be between 1 and 1000"})
        trades = [t for t in reversed(market.history)
                  if (after is None or int(t["trade_id"]) < after)
                  and (before is None or int(t["trade_id"]) > before)]
        page = trades[-limit:] if before is not None and after is None else trades[:limit]
        return HttpResponse(200, [{"time": t["time"], "trade_id": int(t["trade_id"]), "price": t["price"],
                                   "size": t["size"], "side": t["side"].lower()} for t in page])

    def product_list(self) -> list[dict[str, Any]]:
        """Every product as ``GET /products`` lists it (the documented and recorded fields)."""
        listed = []
        for product in self.products + self.delisted_products:
            market, off = self._markets[product], product in self.delisted_products
            base, _, quote = product.partition("-")
            listed.append({
                "id": product, "base_currency": base, "quote_currency": quote,
                "quote_increment": market.price(10.0**-market.price_decimals),
                "base_increment": market.size(10.0**-market.qty_decimals), "display_name": f"{base}/{quote}",
                "min_market_funds": "1", "margin_enabled": False, "post_only": False, "limit_only": False,
                "cancel_only": False, "status": "delisted" if off else "online", "status_message": "",
                "trading_disabled": off, "fx_stablecoin": False, "max_slippage_percentage": "0.03",
                "auction_mode": False, "high_bid_limit_percentage": ""})
        return listed

_SPARE: Final = "SOL-USD"

#: what the tools need to run this simulator (found by :func:`feedd.sim.registry`)
SIMULATOR: Final = SimSpec(
    name="coinbase-exchange",
    help="Coinbase Exchange (ex-Pro) WebSocket feed",
    groups=(("coinbase-exchange",),),
    make=lambda ids, speed: CoinbaseExchangeSimulator(speed=speed, products=(*DEFAULT_PRODUCTS, _SPARE)),
    symbols={"coinbase-exchange": DEFAULT_PRODUCTS},
    spare=_SPARE,
    #: ETH-USD's tape pauses up to 2.9 s between trades; at 5x none is long enough for a busy
    #: feed's stall to pass for a quiet market (the fault suite's heartbeat_only)
    speed=5.0,
)

__all__ = ["SIMULATOR", "CoinbaseExchangeProtocol", "CoinbaseExchangeSimulator"]
