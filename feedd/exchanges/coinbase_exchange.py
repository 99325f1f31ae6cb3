"""Coinbase Exchange market data (``coinbase-exchange``, the feed of Coinbase Pro), public, sans-IO.

Protocol (protocols §3b and §10; Coinbase's Exchange WebSocket docs: overview, channels, errors,
rate limits):

- ``wss://ws-feed.exchange.coinbase.com``; a connection that has not subscribed within 5 s is cut.
  Requests are ``{"type": "subscribe" | "unsubscribe", "channels": [{"name": c, "product_ids":
  [...]}, ...]}``: one message may name several channels, each with its own products (feedd
  always says each channel's products; root-level ``product_ids`` are no longer honoured for
  channel objects, as clients found in 2023 [3p]).
- Every request is answered by a ``subscriptions`` message listing *everything* the connection
  holds, ``{"type": "subscriptions", "channels": [{"name": ..., "product_ids": [...]}, ...]}``
  (in no fixed order, recorded), or refused by ``{"type": "error", "message": "Failed to
  subscribe", "reason": "BAD-USD is not a valid product"}``, which subscribes nothing of the
  request [3p]. Messages are flat, each with a ``type``; unknown types are to be ignored.
- ``matches``: the first message per product after subscribing is a ``last_match`` (the product's
  latest trade, a repeat), then one ``match`` per trade. ``side`` is the *maker's* side (docs:
  "sell" is an up-tick), so the taker's is the opposite. ``trade_id`` counts a product's trades one
  by one; ``sequence`` counts every message of the product's full feed, of which ``matches`` sees
  a part, so its jumps are no loss (recorded: +2 to +2152 between consecutive trades).
- ``ticker``: one message per match (batched in a cascade) with the last price, 24 h open, high,
  low and volume, best bid and ask, the exchange ``time``; its ``side`` is the taker's.
- ``heartbeat``: per product, one message a second with the product's ``sequence`` and
  ``last_trade_id``: the liveness signal (there is no client ping), and the check of ``matches``.
- Limits (websocket rate-limits page): 8 connection requests a second per IP (bursts to 20), 100
  client messages a second per IP, at most 10 subscriptions per product and channel per account.

Backfill (:class:`~feedd.exchanges.base.TradeHistory`): ``GET /products/{id}/trades`` lists a
product's trades newest first, paged by cursors (the pagination page: ``after`` asks for older
ones than the id, ``before`` for newer ones, ``limit`` at most 1000, the default); the cursor of
this endpoint is the ``trade_id``, so ``?after=<from_id + limit>&limit=<limit>`` answers the ids
``from_id`` .. ``from_id + limit - 1`` that the REST still keeps. Public endpoints allow 10
requests a second per IP (bursts to 15): feedd asks at most 3 a second.

Gaps: a ``match`` whose ``trade_id`` is more than one past the product's last, or a heartbeat
whose ``last_trade_id`` is past it (and whose ``sequence`` is not older than that last match), is a
:class:`SequenceGap` of the trades missed. Topics are ``<channel>:<product>``, e.g.
``matches:BTC-USD``; the heartbeat of a product is subscribed with its first topic on a
connection and unsubscribed with its last, and is no topic of the runner's.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import attrs
import orjson

from feedd.errors import excerpt
from feedd.exchanges.base import (
    ConnectLimit,
    DecodeError,
    Event,
    Heartbeat,
    Ignored,
    InstrumentPage,
    MessageLimitScope,
    Op,
    PingMode,
    Retry,
    SequenceGap,
    Session,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
    Venue,
)
from feedd.exchanges.fields import (
    PAYLOAD_ERRORS,
    QuoteCache,
    QuotedVenue,
    load_object,
    optional_number,
    parse_rfc3339,
    problem,
    single_route,
    text,
)
from feedd.model import TICKER, MarketData, Message, Side, quote_record, trade_record

MATCHES = "matches"
TICKER_CHANNEL = "ticker"
HEARTBEAT = "heartbeat"
#: topics in one request at most: none is documented; this bounds what one refusal fails
MAX_TOPICS_PER_REQUEST = 100

_IGNORED = Ignored()
_HEARTBEAT = Heartbeat()
#: the maker's side (Coinbase's) to the taker's (the record's)
_TAKER_SIDE: dict[Any, Side] = {"buy": "sell", "sell": "buy"}
#: the words of an error's text that may be product ids (``BTC-USD``), whole, not prefixes
_PRODUCT_WORDS = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")

_Handler = Callable[[dict[str, Any], datetime, list[Event]], None]


def split_topic(topic: str) -> tuple[str, str]:
    """``"matches:BTC-USD"`` → ``("matches", "BTC-USD")``; ValueError if malformed."""
    channel, sep, product = topic.partition(":")
    if not sep or not channel or not product:
        raise ValueError(f"not a coinbase-exchange topic (<channel>:<product>): {topic!r}")
    return channel, product


def _integer(data: dict[str, Any], key: str) -> int:
    """A counter field (``trade_id``, ``sequence``): an integer, or a string of digits."""
    value = data[key]
    if type(value) is int:
        return value
    if type(value) is str and value.isdigit() and value.isascii():
        return int(value)
    raise TypeError(f"{key!r} is not an integer: {value!r:.50}")


@attrs.define(slots=True)
class _Request:
    """A subscribe/unsubscribe sent on this connection and not yet settled by a reply."""

    request_id: int
    op: Op
    #: topics of the request still awaiting their ack or error
    pending: list[str]
    #: products whose heartbeat the request (un)subscribes
    beats: list[str]


class CoinbaseExchangeSession:
    """Protocol state of one connection: pending requests, held products, per-product counters.

    Coinbase answers requests in order, each with the connection's whole subscription list or an
    ``error`` alone; either settles the oldest pending request. A list acknowledges the request's
    topics it names and refuses the missing ones; topics of later requests already in it are
    acknowledged at once. An error refuses the products its text names and asks for the other
    topics again (:class:`Retry`), since one bad product fails the whole request; one naming none
    of them refuses them all. An error that names no request (none pending, or a text not about
    subscribing, such as a slow-consumer notice) is reported tied to no request.
    """

    def __init__(self, venue_id: str, quotes: QuoteCache | None = None) -> None:
        self._venue_id = venue_id
        #: which products' tickers give quote records (``streamed``) and ticker records
        #: (``ticked``; while neither says anything, as for a session made alone, every product's)
        self._cache = QuoteCache() if quotes is None else quotes
        self._next_id = 1
        self._requests: deque[_Request] = deque()
        #: products → channels asked for on this connection (by request, not yet by reply)
        self._wanted: dict[str, set[str]] = {}
        #: products whose heartbeat is asked for
        self._beating: set[str] = set()
        #: per product with matches: the last trade id seen, and that match's sequence
        self._last_trade: dict[str, int] = {}
        self._last_match_sequence: dict[str, int] = {}
        #: per product: the last ticker's sequence (an older one is dropped)
        self._ticker_sequence: dict[str, int] = {}
        self._frame: Message = ""
        self._handlers: dict[str, _Handler] = {
            "match": self._match,
            "last_match": self._match,
            "ticker": self._ticker,
            "heartbeat": self._heartbeat,
            "subscriptions": self._subscriptions,
            "error": self._error,
        }

    # ---- outgoing ------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str]) -> list[Message]:
        """Requests of at most :data:`MAX_TOPICS_PER_REQUEST` topics, each with the heartbeat of
        the products new to the connection."""
        frames = []
        for chunk in _chunks(list(dict.fromkeys(topics))):
            beats = []
            for topic in chunk:
                channel, product = split_topic(topic)
                self._wanted.setdefault(product, set()).add(channel)
                if product not in self._beating:
                    self._beating.add(product)
                    beats.append(product)
            frames.append(self._request("subscribe", chunk, beats))
        return frames

    def unsubscribe(self, topics: Sequence[str]) -> list[Message]:
        """Requests of at most :data:`MAX_TOPICS_PER_REQUEST` topics, each with the heartbeat of
        the products left with no topic; a product's trade count is forgotten with its matches."""
        frames = []
        for chunk in _chunks(list(dict.fromkeys(topics))):
            beats = []
            for topic in chunk:
                channel, product = split_topic(topic)
                channels = self._wanted.get(product, set())
                channels.discard(channel)
                if channel == MATCHES:
                    self._last_trade.pop(product, None)
                    self._last_match_sequence.pop(product, None)
                if not channels and product in self._beating:
                    self._wanted.pop(product, None)
                    self._beating.discard(product)
                    beats.append(product)
            frames.append(self._request("unsubscribe", chunk, beats))
        return frames

    def ping(self) -> Message | None:
        """None: there is no client ping; the ``heartbeat`` channel proves the feed alive."""
        return None

    def connection_lost(self) -> None:
        """Nothing outlives the connection: a new one starts from its own ``last_match``."""

    def _request(self, op: Op, topics: list[str], beats: list[str]) -> Message:
        request_id = self._next_id
        self._next_id += 1
        self._requests.append(_Request(request_id, op, list(topics), beats))
        products: dict[str, list[str]] = {}
        for topic in topics:
            channel, product = split_topic(topic)
            products.setdefault(channel, []).append(product)
        if beats:
            products[HEARTBEAT] = beats
        channels = [{"name": name, "product_ids": ids} for name, ids in products.items()]
        return orjson.dumps({"type": op, "channels": channels}).decode()

    # ---- incoming ------------------------------------------------------------------------

    def decode(self, frame: Message, received_at: datetime) -> list[Event]:
        """Every event one received frame holds; bad input becomes a :class:`DecodeError`.

        Types feedd does not subscribe (``l2update``, ``status``, ...) and unknown ones are
        :class:`Ignored`, as Coinbase asks clients to ignore what they do not support.
        """
        msg = load_object(frame)
        if isinstance(msg, DecodeError):
            return [msg]
        kind = msg.get("type")
        if type(kind) is not str:
            return [DecodeError("message without a 'type' string", excerpt(frame))]
        handler = self._handlers.get(kind)
        if handler is None:
            return [_IGNORED]
        self._frame = frame
        events: list[Event] = []
        try:
            handler(msg, received_at, events)
        except PAYLOAD_ERRORS as exc:
            events.append(DecodeError(f"bad {kind!r} message: {problem(exc)}", excerpt(frame)))
        return events or [_IGNORED]

    def _match(self, msg: dict[str, Any], received_at: datetime, events: list[Event]) -> None:
        product = text(msg, "product_id")
        trade_id = _integer(msg, "trade_id")
        sequence = None if msg.get("sequence") is None else _integer(msg, "sequence")
        if msg["type"] == "last_match":
            # a past trade, sent on every subscribe: the start of the count, never published
            if MATCHES in self._wanted.get(product, ()) and trade_id > self._last_trade.get(product, -1):
                self._last_trade[product] = trade_id
                if sequence is not None:
                    self._last_match_sequence[product] = sequence
            return
        side = _TAKER_SIDE.get(msg["side"])
        if side is None:
            raise ValueError(f"'side' is not buy or sell: {msg['side']!r:.50}")
        record = trade_record(
            self._venue_id, product, float(msg["price"]), float(msg["size"]),
            parse_rfc3339(msg["time"]), received_at, side, str(trade_id),
        )
        if MATCHES not in self._wanted.get(product, ()):
            events.append(record)  # in flight past its unsubscribe: not counted
            return
        last = self._last_trade.get(product)
        if last is not None:
            if trade_id <= last:
                return  # a repeat, or later than its successor (the docs: may be ignored)
            if trade_id > last + 1:
                events.append(SequenceGap(trade_id - last - 1, f"{product} trade_id {trade_id} after {last}"))
        self._last_trade[product] = trade_id
        if sequence is not None:
            self._last_match_sequence[product] = sequence
        events.append(record)

    def _ticker(self, msg: dict[str, Any], received_at: datetime, events: list[Event]) -> None:
        product = text(msg, "product_id")
        if msg.get("sequence") is not None:
            sequence = _integer(msg, "sequence")
            if sequence <= self._ticker_sequence.get(product, -1):
                return  # older than the ticker already published
            self._ticker_sequence[product] = sequence
        price = float(msg["price"])
        opened = optional_number(msg.get("open_24h"))
        timestamp = parse_rfc3339(msg["time"])
        bid, ask = optional_number(msg.get("best_bid")), optional_number(msg.get("best_ask"))
        bid_size = optional_number(msg.get("best_bid_size"))
        ask_size = optional_number(msg.get("best_ask_size"))
        cache = self._cache
        if cache.gives_ticker(product):
            events.append(MarketData(
                self._venue_id, product, TICKER, price, float(msg["volume_24h"]),
                timestamp, received_at,
                bid=bid,
                ask=ask,
                high_24h=optional_number(msg.get("high_24h")),
                low_24h=optional_number(msg.get("low_24h")),
                change_24h=(price - opened) / opened * 100 if opened else None,
                bid_size=bid_size,
                ask_size=ask_size,
            ))
        if product in cache.streamed:  # the quotes channel rides the ticker stream
            if bid is None or ask is None or bid_size is None or ask_size is None:
                raise ValueError("a quote needs best_bid, best_ask and their sizes")
            events.append(quote_record(
                self._venue_id, product, bid, bid_size, ask, ask_size, timestamp, received_at
            ))

    def _heartbeat(self, msg: dict[str, Any], received_at: datetime, events: list[Event]) -> None:
        product = text(msg, "product_id")
        last_trade_id = _integer(msg, "last_trade_id")
        sequence = _integer(msg, "sequence")
        events.append(_HEARTBEAT)
        last = self._last_trade.get(product)
        if last is None or last_trade_id <= last:
            return
        if sequence < self._last_match_sequence.get(product, -1):
            return  # sent before the last match read: it says nothing of what followed
        events.append(SequenceGap(
            last_trade_id - last, f"{product} heartbeat last_trade_id {last_trade_id}, last match {last}"
        ))
        self._last_trade[product] = last_trade_id

    def _subscriptions(self, msg: dict[str, Any], received_at: datetime, events: list[Event]) -> None:
        held: set[str] = set()
        listed = msg["channels"]
        if type(listed) is not list:
            raise TypeError(f"'channels' is not a list: {listed!r:.50}")
        for entry in listed:
            name, products = text(entry, "name"), entry["product_ids"]
            if type(products) is not list:
                raise TypeError(f"product_ids of {name!r:.30} are not a list: {products!r:.50}")
            held.update(f"{name}:{product}" for product in products)
        if not self._requests:
            return
        request = self._requests.popleft()
        subscribing = request.op == "subscribe"
        if subscribing:
            for product in request.beats:
                if f"{HEARTBEAT}:{product}" not in held:
                    self._beating.discard(product)  # the next request for it asks again
        done = tuple(t for t in request.pending if (t in held) is subscribing)
        refused = tuple(t for t in request.pending if (t in held) is not subscribing)
        if done:
            events.append(SubscribeAck(request.request_id, done, request.op))
        if refused:
            reason = ("not in the subscriptions reply" if subscribing
                      else "still in the subscriptions reply after unsubscribe")
            events.append(SubscribeRejected(request.request_id, refused, reason))
        for later in self._requests:
            if later.op == "subscribe" and later.pending:
                early = [topic for topic in later.pending if topic in held]
                if early:
                    events.append(SubscribeAck(later.request_id, tuple(early), "subscribe"))
                    later.pending = [topic for topic in later.pending if topic not in held]

    def _error(self, msg: dict[str, Any], received_at: datetime, events: list[Event]) -> None:
        parts = [str(part) for part in (msg.get("message"), msg.get("reason")) if part not in (None, "")]
        full = ": ".join(parts)
        reason = excerpt(full) or "error without a message"
        if not self._requests or "subscribe" not in full.lower():
            events.append(SubscribeRejected(None, (), reason))
            return
        request = self._requests.popleft()
        if request.op == "subscribe":
            self._beating.difference_update(request.beats)  # nothing of the request was taken
        named = set(_PRODUCT_WORDS.findall(full))
        refused = tuple(t for t in request.pending if split_topic(t)[1] in named)
        if not refused:
            events.append(SubscribeRejected(request.request_id, tuple(request.pending), reason))
            return
        if request.op == "subscribe":
            for topic in refused:
                channel, product = split_topic(topic)
                self._wanted.get(product, set()).discard(channel)
        events.append(SubscribeRejected(request.request_id, refused, reason))
        again = tuple(topic for topic in request.pending if topic not in refused)
        if again:
            events.append(Retry(request.op, again, reason))


def _chunks(topics: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(topics), MAX_TOPICS_PER_REQUEST):
        yield topics[start : start + MAX_TOPICS_PER_REQUEST]


class CoinbaseExchange(QuotedVenue):
    """Coinbase Exchange market data: ``matches`` and ``ticker`` per product, ``heartbeat`` each."""

    venue_id = "coinbase-exchange"
    default_url = "wss://ws-feed.exchange.coinbase.com"
    default_rest_url = "https://api.exchange.coinbase.com"
    #: no per-connection limit is documented; the best-practices page asks to spread heavy
    #: subscriptions over connections: 100 products' trades and tickers each at most
    max_streams_per_connection = 200
    max_chars_per_connection: int | None = None
    #: "Messages sent by the client every second per IP: 100" (websocket rate-limits page)
    max_messages_per_second = 100.0
    message_limit_scope: MessageLimitScope = "address"
    #: "Requests per second per IP: 8" (bursts up to 20): connection requests to the host
    connect_limit: ConnectLimit | None = ConnectLimit(8, 1.0)
    #: no client ping; the heartbeat channel, one message a second per product, feeds the watchdog
    ping_interval: float | None = None
    ping_mode: PingMode = "idle"
    pong_timeout: float | None = None
    uppercase_symbols = True
    #: no connection lifetime is documented
    rotate_after: float | None = None
    products_path = "/products"
    #: trades per history request at most (pagination: "Maximum 1000 (default 1000)")
    history_page = 1000
    #: history requests per second: public endpoints allow 10 per IP (rest rate-limits page)
    history_rate = 3.0

    def __init__(self) -> None:
        super().__init__()  # the cache is unused (tickers carry their own best bid/ask), but its
        # ``streamed``/``ticked`` sets say which records the ``ticker`` stream gives

    def topics(self, subscription: Subscription) -> list[Topic]:
        if subscription.channel == "trades":
            return [Topic("", f"{MATCHES}:{subscription.symbol}")]
        if subscription.channel in ("ticker", "quotes"):
            # one wire stream for both: a ticker carries the best bid/ask with their sizes
            return [Topic("", f"{TICKER_CHANNEL}:{subscription.symbol}")]
        raise ValueError(f"unknown channel {subscription.channel!r}")

    def url(self, route: str, base_url: str) -> str:
        return single_route(self.venue_id, route, base_url)

    def symbol_problem(self, symbol: str) -> str | None:
        """None: every listed product streams as itself."""
        del symbol
        return None

    def new_session(self) -> Session:
        return CoinbaseExchangeSession(self.venue_id, self.quotes)

    def instruments_path(self, cursor: str | None = None) -> str:
        """``GET /products``: every product in one answer (the list is not paged)."""
        del cursor
        return self.products_path

    def parse_instruments(self, body: Any) -> InstrumentPage:
        """The products that trade: ``status`` ``online`` (the others are ``offline``,
        ``internal`` or ``delisted``) and not ``trading_disabled``."""
        if not isinstance(body, list):
            raise ValueError(f"product list is not a JSON array: {excerpt(repr(body), 100)}")
        listed: set[str] = set()
        for product in body:
            if not isinstance(product, dict) or not isinstance(product.get("id"), str):
                raise ValueError(f"product list entry without an 'id' string: {excerpt(repr(product), 100)}")
            if product.get("trading_disabled") is True:
                continue
            status = product.get("status")
            if isinstance(status, str) and status.lower() != "online":
                continue
            listed.add(product["id"])
        return InstrumentPage(frozenset(listed))

    def history_path(self, symbol: str, from_id: int, limit: int) -> str:
        """The trades ``from_id`` .. ``from_id + limit - 1``: the page older than the cursor
        ``from_id + limit`` (this endpoint's cursors are trade ids)."""
        return f"/products/{symbol}/trades?after={from_id + limit}&limit={limit}"

    def parse_history(self, symbol: str, body: Any, received_at: datetime) -> list[MarketData]:
        """Trades of a ``/products/{id}/trades`` answer (``trade_id``, ``price``, ``size``,
        ``time``, ``side`` the maker's), newest first on the wire, returned in id order."""
        if not isinstance(body, list):
            raise ValueError(f"trade history is not a JSON array: {excerpt(repr(body), 100)}")
        out: list[MarketData] = []
        for entry in reversed(body):
            try:
                side = _TAKER_SIDE.get(entry["side"])
                if side is None:
                    raise ValueError(f"'side' is not buy or sell: {entry['side']!r:.50}")
                out.append(trade_record(
                    self.venue_id, symbol, float(entry["price"]), float(entry["size"]),
                    parse_rfc3339(entry["time"]), received_at, side,
                    str(_integer(entry, "trade_id")),
                ))
            except PAYLOAD_ERRORS as exc:
                raise ValueError(f"bad trade in the history: {problem(exc)}: "
                                 f"{excerpt(repr(entry), 100)}") from None
        out.sort(key=lambda record: int(record.trade_id or 0))
        return out


VENUES: dict[str, Callable[[], Venue]] = {"coinbase-exchange": CoinbaseExchange}
