"""Coinbase Advanced Trade market data (``coinbase``), public channels without a JWT, sans-IO.

Protocol (protocols §3a; Coinbase's Advanced Trade WebSocket docs):

- One subscribe message per channel, ``{"type": "subscribe", "product_ids": [...], "channel": c}``,
  sent within 5 s of connecting or the server disconnects. Unauthenticated clients may send
  8 messages per second per IP. Unsubscribe has the same shape.
- ``heartbeats`` (no products) is subscribed once per connection: it is the liveness signal, and
  without it channels that get no updates for 60-90 s are closed, and the connection with them.
- Every data message is ``{"channel", "timestamp", "sequence_num", "events": [...]}``. Coinbase's
  AsyncAPI notes the production feed has no ``client_id`` and integer counters, unlike the prose
  examples; this parser requires neither. ``sequence_num`` counts every message of a connection
  from 0 (the recording shows one counter across all channels), so a jump is a lost message.
- Each subscribe or unsubscribe is answered by a ``subscriptions`` message listing everything the
  connection holds, ``{"market_trades": ["BTC-USD"], "heartbeats": ["heartbeats"], ...}``, not
  what the request asked; a refused request is answered by ``{"type": "error", "message": ...}``
  instead (one bad product fails the request, and nothing of it is subscribed).
- ``market_trades``: the first event after subscribing is a ``snapshot`` of past trades, then
  ``update`` events batch the last 250 ms of trades. A trade's ``side`` is the maker's side (§4).

Topics are ``<channel>:<product>``, e.g. ``market_trades:BTC-USD``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

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

MARKET_TRADES = "market_trades"
TICKER_CHANNEL = "ticker"
HEARTBEATS = "heartbeats"

_IGNORED = Ignored()
_HEARTBEAT = Heartbeat()
#: Coinbase's side is the maker's; the record carries the taker's, the opposite (§4)
_TAKER_SIDE: dict[Any, Side] = {"BUY": "sell", "SELL": "buy", "buy": "sell", "sell": "buy"}

_Handler = Callable[[dict[str, Any], datetime, list[Event]], None]
#: the words of an error's text that may be product ids (``BTC-USD``), whole, not prefixes
_PRODUCT_WORDS = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")


class RecentTradeIds:
    """The last ``capacity`` trade ids seen per product, so no trade is published twice.

    Shared by the sessions of one venue: the updates that follow a resubscription may repeat
    trades the previous connection already published. Memory is bounded per product; ids older
    than the last ``capacity`` are forgotten (Coinbase batches 250 ms of trades per update, so
    an overlap is a handful of trades, far inside the bound).
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: dict[str, tuple[set[str], deque[str]]] = {}

    def add(self, product: str, trade_id: str) -> bool:
        """Remember ``trade_id``; False if it was already remembered (a duplicate)."""
        known = self._ids.get(product)
        if known is None:
            known = self._ids[product] = (set(), deque())
        ids, order = known
        if trade_id in ids:
            return False
        if len(order) >= self.capacity:
            ids.discard(order.popleft())
        order.append(trade_id)
        ids.add(trade_id)
        return True

    def seen(self, product: str, trade_id: str) -> bool:
        known = self._ids.get(product)
        return known is not None and trade_id in known[0]

    def count(self, product: str) -> int:
        known = self._ids.get(product)
        return 0 if known is None else len(known[1])


@attrs.define(slots=True)
class _Request:
    """A subscribe/unsubscribe sent on this connection and not yet settled by a reply."""

    request_id: int
    op: Op
    channel: str
    #: topics of the request still awaiting their ack or error
    pending: list[str]


def split_topic(topic: str) -> tuple[str, str]:
    """``"market_trades:BTC-USD"`` → ``("market_trades", "BTC-USD")``; ValueError if malformed."""
    channel, sep, product = topic.partition(":")
    if not sep or not channel or not product:
        raise ValueError(f"not a coinbase topic (<channel>:<product>): {topic!r}")
    return channel, product


def _by_channel(topics: Iterable[str]) -> dict[str, list[str]]:
    """Products per channel, in first-seen order, without repeats."""
    grouped: dict[str, dict[str, None]] = {}
    for topic in topics:
        channel, product = split_topic(topic)
        grouped.setdefault(channel, {})[product] = None
    return {channel: list(products) for channel, products in grouped.items()}


def _events(msg: dict[str, Any]) -> list[Any]:
    events = msg["events"]
    if type(events) is not list:
        raise TypeError(f"'events' is not a list: {events!r:.50}")
    return events


class CoinbaseSession:
    """Protocol state of one Advanced Trade connection: pending requests and the message sequence.

    Coinbase answers every request, in the order the requests were sent, with the connection's
    whole subscription list or, when it refuses the request, with an ``error`` alone. Either
    reply settles the oldest pending request. A list acknowledges its topics in the list and
    refuses the missing ones by name; topics of later requests already in it are acknowledged at
    once. An error refuses the products its text names and asks for the request's other topics
    again (:class:`Retry`), since one bad product fails the whole request; so every request is
    eventually acknowledged or refused.
    """

    def __init__(self, venue_id: str, trade_ids: RecentTradeIds, quotes: QuoteCache | None = None) -> None:
        self._venue_id = venue_id
        self._trade_ids = trade_ids
        #: which products' ticker messages give quote records (``streamed``) and ticker records
        #: (``ticked``; while neither set says anything, as for a session made alone in tests,
        #: every product's)
        self._cache = QuoteCache() if quotes is None else quotes
        self._quoted = self._cache.streamed
        self._next_id = 1
        self._requests: deque[_Request] = deque()
        self._heartbeats_asked = False
        #: the last ``sequence_num`` seen; the first message of a connection is number 0
        self._sequence = -1
        #: the frame being decoded, for the excerpt of an error found deep inside it
        self._frame: Message = ""
        self._handlers: dict[str, _Handler] = {
            MARKET_TRADES: self._market_trades,
            TICKER_CHANNEL: self._ticker,
            HEARTBEATS: self._heartbeats,
            "subscriptions": self._subscriptions,
        }

    # ---- outgoing ------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str]) -> list[Message]:
        """One subscribe message per channel; the first call ends with one for ``heartbeats``.

        All of them go out in the connection's first second, well inside the 5 s rule.
        """
        frames = [self._request("subscribe", ch, products) for ch, products in _by_channel(topics).items()]
        if frames and not self._heartbeats_asked:
            self._heartbeats_asked = True
            frames.append(self._request("subscribe", HEARTBEATS, []))
        return frames

    def unsubscribe(self, topics: Sequence[str]) -> list[Message]:
        """One unsubscribe message per channel; ``heartbeats`` stays for the connection's life."""
        return [self._request("unsubscribe", ch, products) for ch, products in _by_channel(topics).items()]

    def ping(self) -> Message | None:
        """None: there is no client ping; the ``heartbeats`` channel proves the feed alive."""
        return None

    def connection_lost(self) -> None:
        """Nothing to forget: the trade ids must outlive the connection to dedupe across it."""

    def _request(self, op: Op, channel: str, products: list[str]) -> Message:
        request_id = self._next_id
        self._next_id += 1
        self._requests.append(_Request(request_id, op, channel, [f"{channel}:{p}" for p in products]))
        if not products:
            return orjson.dumps({"type": op, "channel": channel}).decode()
        return orjson.dumps({"type": op, "product_ids": products, "channel": channel}).decode()

    # ---- incoming ------------------------------------------------------------------------

    def decode(self, frame: Message, received_at: datetime) -> list[Event]:
        """Every event in one received frame; bad input becomes a :class:`DecodeError`.

        A ``sequence_num`` jump comes first, as a :class:`SequenceGap`. One bad trade or ticker
        is an error of its own and the rest of the frame is still decoded. Channels feedd does
        not subscribe (``l2_data``, ``candles``, ...) are :class:`Ignored`, as Coinbase asks
        clients to ignore message types they do not support.
        """
        msg = load_object(frame)
        if isinstance(msg, DecodeError):
            return [msg]
        self._frame = frame
        events: list[Event] = []
        sequence = msg.get("sequence_num")
        if sequence is not None:
            self._check_sequence(sequence, events)
        if msg.get("type") == "error":
            self._error(msg, events)
            return events or [_IGNORED]
        channel = msg.get("channel")
        if type(channel) is not str:
            events.append(self._error_in_frame("neither a channel message nor an error"))
            return events
        handler = self._handlers.get(channel)
        if handler is None:
            return events or [_IGNORED]
        try:
            handler(msg, received_at, events)
        except PAYLOAD_ERRORS as exc:
            events.append(self._error_in_frame(f"bad {channel!r} message: {problem(exc)}"))
        return events or [_IGNORED]

    def _error_in_frame(self, reason: str) -> DecodeError:
        return DecodeError(reason, excerpt(self._frame))

    def _check_sequence(self, sequence: Any, events: list[Event]) -> None:
        if type(sequence) is not int:
            # the prose docs' examples quote counters as strings; accept those too
            if type(sequence) is str and sequence.isdigit() and sequence.isascii():
                sequence = int(sequence)
            else:
                events.append(self._error_in_frame(f"'sequence_num' is not an integer: {sequence!r:.50}"))
                return
        last = self._sequence
        if sequence <= last:
            # out of order (§3a: may be ignored); its content is still decoded, and trade ids
            # keep a repeated trade from being published twice
            return
        self._sequence = sequence
        if sequence > last + 1:
            detail = (f"sequence_num {sequence} after {last}" if last >= 0
                      else f"first sequence_num is {sequence}, not 0")
            events.append(SequenceGap(sequence - last - 1, detail))

    def _market_trades(self, msg: dict[str, Any], received_at: datetime, events: list[Event]) -> None:
        venue_id = self._venue_id
        remember = self._trade_ids.add
        for event in _events(msg):
            kind = event["type"]
            trades = event["trades"]
            if type(trades) is not list:
                raise TypeError(f"'trades' is not a list: {trades!r:.50}")
            if kind == "snapshot":
                # past trades, sent on every subscribe: never published, but remembered so an
                # update repeating one is not published either
                for trade in trades:
                    try:
                        remember(text(trade, "product_id"), _trade_id(trade))
                    except PAYLOAD_ERRORS as exc:
                        events.append(self._error_in_frame(f"bad trade: {problem(exc)}"))
                continue
            if kind != "update":
                raise ValueError(f"unknown market_trades event type {kind!r:.50}")
            # a batch lists the newest trade first (as recorded); publish in trade order
            for trade in reversed(trades):
                try:
                    product = text(trade, "product_id")
                    trade_id = _trade_id(trade)
                    side = _TAKER_SIDE.get(trade["side"])
                    if side is None:
                        raise ValueError(f"'side' is not BUY or SELL: {trade['side']!r:.50}")
                    record = trade_record(
                        venue_id,
                        product,
                        float(trade["price"]),
                        float(trade["size"]),
                        parse_rfc3339(trade["time"]),
                        received_at,
                        side,
                        trade_id,
                    )
                except PAYLOAD_ERRORS as exc:
                    events.append(self._error_in_frame(f"bad trade: {problem(exc)}"))
                    continue
                if remember(product, trade_id):
                    events.append(record)

    def _ticker(self, msg: dict[str, Any], received_at: datetime, events: list[Event]) -> None:
        """Ticker records, and quote records (best bid/ask with their quantities) for products
        subscribed to ``quotes``: one wire stream carries both."""
        # a ticker has no time of its own: the message's is when Coinbase sent it
        timestamp = parse_rfc3339(msg["timestamp"])
        venue_id = self._venue_id
        quoted = self._quoted
        gives_ticker = self._cache.gives_ticker
        for event in _events(msg):
            tickers = event["tickers"]
            if type(tickers) is not list:
                raise TypeError(f"'tickers' is not a list: {tickers!r:.50}")
            for ticker in tickers:
                try:
                    product = text(ticker, "product_id")
                    bid = optional_number(ticker.get("best_bid"))
                    ask = optional_number(ticker.get("best_ask"))
                    bid_size = optional_number(ticker.get("best_bid_quantity"))
                    ask_size = optional_number(ticker.get("best_ask_quantity"))
                    if gives_ticker(product):
                        events.append(MarketData(
                            venue_id,
                            product,
                            TICKER,
                            float(ticker["price"]),
                            float(ticker["volume_24_h"]),
                            timestamp,
                            received_at,
                            bid=bid,
                            ask=ask,
                            high_24h=optional_number(ticker.get("high_24_h")),
                            low_24h=optional_number(ticker.get("low_24_h")),
                            change_24h=optional_number(ticker.get("price_percent_chg_24_h")),
                            bid_size=bid_size,
                            ask_size=ask_size,
                        ))
                    if product in quoted:
                        if bid is None or ask is None or bid_size is None or ask_size is None:
                            raise ValueError("a quote needs best_bid, best_ask and their quantities")
                        events.append(quote_record(
                            venue_id, product, bid, bid_size, ask, ask_size, timestamp, received_at
                        ))
                except PAYLOAD_ERRORS as exc:
                    events.append(self._error_in_frame(f"bad ticker: {problem(exc)}"))

    def _heartbeats(self, msg: dict[str, Any], received_at: datetime, events: list[Event]) -> None:
        # current_time is Go's time.String(), not RFC 3339, and no record: not parsed
        events.append(_HEARTBEAT)

    def _subscriptions(self, msg: dict[str, Any], received_at: datetime, events: list[Event]) -> None:
        held: set[str] = set()
        channels: set[str] = set()
        for event in _events(msg):
            listed = event["subscriptions"]
            if type(listed) is not dict:
                raise TypeError(f"'subscriptions' is not an object: {listed!r:.50}")
            for channel, products in listed.items():
                if type(products) is not list:
                    raise TypeError(f"products of {channel!r:.30} are not a list: {products!r:.50}")
                channels.add(channel)
                held.update(f"{channel}:{product}" for product in products)
        if not self._requests:
            return
        self._settle(self._requests.popleft(), held, channels, events)
        for request in self._requests:
            if request.op == "subscribe" and request.pending:
                early = [topic for topic in request.pending if topic in held]
                if early:
                    events.append(SubscribeAck(request.request_id, tuple(early), "subscribe"))
                    request.pending = [topic for topic in request.pending if topic not in held]

    @staticmethod
    def _settle(request: _Request, held: set[str], channels: set[str], events: list[Event]) -> None:
        """Judge the request this reply answers against the subscriptions it lists."""
        if request.channel == HEARTBEATS:
            if request.op == "subscribe" and HEARTBEATS not in channels:
                events.append(SubscribeRejected(
                    request.request_id, (HEARTBEATS,),
                    "heartbeats missing from the subscriptions reply: quiet channels may be closed",
                ))
            return
        subscribing = request.op == "subscribe"
        done = tuple(topic for topic in request.pending if (topic in held) is subscribing)
        refused = tuple(topic for topic in request.pending if (topic in held) is not subscribing)
        if done:
            events.append(SubscribeAck(request.request_id, done, request.op))
        if refused:
            reason = ("not in the subscriptions reply" if subscribing
                      else "still in the subscriptions reply after unsubscribe")
            events.append(SubscribeRejected(request.request_id, refused, reason))

    def _error(self, msg: dict[str, Any], events: list[Event]) -> None:
        """Settle the oldest pending request, which the error answers (replies come in order).

        The products its text names are refused; the request's other topics are requested again,
        without them. An error that names none of them refuses them all (asking again would earn
        the same error). With no request pending, it is unattributed: logged and shown.
        """
        parts = [str(part) for part in (msg.get("message"), msg.get("reason")) if part not in (None, "")]
        full = ": ".join(parts)
        reason = excerpt(full) or "error without a message"
        if not self._requests:
            events.append(SubscribeRejected(None, (), reason))
            return
        request = self._requests.popleft()
        if request.channel == HEARTBEATS:
            if request.op == "subscribe":
                events.append(SubscribeRejected(request.request_id, (HEARTBEATS,), reason))
            return
        named = set(_PRODUCT_WORDS.findall(full))
        refused = tuple(topic for topic in request.pending if split_topic(topic)[1] in named)
        if not refused:
            # nothing pending (all listed early) is still an error to show, if not a topic's
            events.append(SubscribeRejected(request.request_id, tuple(request.pending), reason))
            return
        events.append(SubscribeRejected(request.request_id, refused, reason))
        again = tuple(topic for topic in request.pending if topic not in refused)
        if again:
            events.append(Retry(request.op, again, reason))


def _trade_id(trade: dict[str, Any]) -> str:
    trade_id = trade["trade_id"]
    if type(trade_id) is str and trade_id:
        return trade_id
    if type(trade_id) is int:  # documented as a string; accept a number as the same id
        return str(trade_id)
    raise TypeError(f"'trade_id' is not a string: {trade_id!r:.50}")


class Coinbase(QuotedVenue):
    """Coinbase Advanced Trade market data: ``market_trades`` and ``ticker`` per product."""

    venue_id = "coinbase"
    default_url = "wss://advanced-trade-ws.coinbase.com"
    default_rest_url = "https://api.coinbase.com"
    #: no per-connection limit is documented; this keeps shards (and so connections and their
    #: subscribe messages, both limited per IP) few while bounding one connection's load
    max_streams_per_connection = 200
    max_chars_per_connection: int | None = None
    #: "unauthenticated messages are rate-limited at 8 per second per IP address" (rate-limits
    #: page): one budget for all connections to the host, not 8 each
    max_messages_per_second = 8.0
    message_limit_scope: MessageLimitScope = "address"
    #: "WebSocket connections are rate-limited at 8 per second per IP address" (the Advanced
    #: Trade rate-limits page, docs.cdp.coinbase.com); older copies of the page say 750: the
    #: stricter current figure is kept
    connect_limit: ConnectLimit | None = ConnectLimit(8, 1.0)
    #: no client ping exists; the heartbeats channel (one message a second) keeps the stale
    #: watchdog fed and the connection open
    ping_interval: float | None = None
    ping_mode: PingMode = "idle"
    pong_timeout: float | None = None
    uppercase_symbols = True
    #: no connection lifetime is documented
    rotate_after: float | None = None
    #: product list, public, no JWT (List Public Products)
    products_path = "/api/v3/brokerage/market/products"

    def __init__(self) -> None:
        super().__init__()  # the quote cache is unused (tickers carry their own best bid/ask),
        # but its ``streamed``/``ticked`` sets say which records the ``ticker`` stream gives
        self.trade_ids = RecentTradeIds()
        #: the offset of the product-list page last asked for (see parse_instruments)
        self._page_offset = 0

    def topics(self, subscription: Subscription) -> list[Topic]:
        if subscription.channel == "trades":
            return [Topic("", f"{MARKET_TRADES}:{subscription.symbol}")]
        if subscription.channel in ("ticker", "quotes"):
            # one wire stream for both: its messages carry the best bid/ask with quantities
            return [Topic("", f"{TICKER_CHANNEL}:{subscription.symbol}")]
        raise ValueError(f"unknown channel {subscription.channel!r}")

    def url(self, route: str, base_url: str) -> str:
        return single_route(self.venue_id, route, base_url)

    def symbol_problem(self, symbol: str) -> str | None:
        """A ``-USDC`` product is refused, naming the ``-USD`` product to subscribe instead.

        Advanced Trade WebSocket docs, "Channels" (websocket-channels): "Subscribing to "-USDC"
        based products are only available on the user channel. Other channels will return the
        same data as the corresponding "-USD" based products. USDT-USDC and EURC-USDC are
        available on all channels." (websocket-endpoints says the same of the public host). The
        product list still lists them (with ``alias`` naming the -USD product), so the instrument
        check lets them through; their data would come labelled as the -USD product, which is
        another subscription's (or, unsubscribed, dropped as an unknown symbol).
        """
        base, sep, quote_currency = symbol.rpartition("-")
        if not sep or not base or quote_currency != "USDC" or symbol in _USDC_STREAMED:
            return None
        usd = f"{base}-USD"
        return (f"{symbol} does not stream as itself: Coinbase's market-data channels send the data "
                f"of {usd} for it (Advanced Trade WebSocket channels docs); subscribe {usd} instead")

    def new_session(self) -> Session:
        return CoinbaseSession(self.venue_id, self.trade_ids, self.quotes)

    # ---- the latest trades, to recover a break by time (feedd.feed.backfill) ----------------

    #: Get Public Market Trades (``/market/products/{id}/ticker``, no JWT): ``limit`` is
    #: required, its maximum not documented [unverified]: 1000 asked at most
    recent_page = 1000
    #: public REST endpoints: 10 requests a second per IP (rate-limits page): feedd asks 3
    recent_rate = 3.0

    def recent_path(self, symbol: str, limit: int) -> str:
        """The public market-trades snapshot: the product's latest ``limit`` trades."""
        return f"/api/v3/brokerage/market/products/{symbol}/ticker?limit={limit}"

    def parse_recent(self, symbol: str, body: Any, received_at: datetime) -> list[MarketData]:
        """Trades of a market-trades answer (``trades`` of ``trade_id``, ``price``, ``size``,
        ``time``, ``side`` as on the stream, newest first), oldest first."""
        trades = body.get("trades") if isinstance(body, dict) else None
        if not isinstance(trades, list):
            raise ValueError(f"market trades without a 'trades' list: {excerpt(repr(body), 100)}")
        out: list[MarketData] = []
        for trade in reversed(trades):
            try:
                side = _TAKER_SIDE.get(trade["side"])
                if side is None:
                    raise ValueError(f"'side' is not BUY or SELL: {trade['side']!r:.50}")
                out.append(trade_record(
                    self.venue_id, symbol, float(trade["price"]), float(trade["size"]),
                    parse_rfc3339(trade["time"]), received_at, side, _trade_id(trade),
                ))
            except PAYLOAD_ERRORS as exc:
                raise ValueError(f"bad trade in market trades: {problem(exc)}: "
                                 f"{excerpt(repr(trade), 100)}") from None
        return out

    def instruments_path(self, cursor: str | None = None) -> str:
        """The product list; a cursor is the docs' ``pagination.next_cursor`` or the next ``offset``.

        Without ``limit`` the endpoint answers every product in one page (clients rely on it);
        the offset is remembered for :meth:`parse_instruments`, which the instrument fetch calls
        on this page's answer before asking for the next.
        """
        if cursor is not None and cursor.startswith(_CURSOR):
            self._page_offset = 0
            return f"{self.products_path}?cursor={quote(cursor[len(_CURSOR):], safe='')}"
        offset = 0 if cursor is None else int(cursor)
        self._page_offset = offset
        return self.products_path if offset == 0 else f"{self.products_path}?offset={offset}"

    def parse_instruments(self, body: Any) -> InstrumentPage:
        """The products of one page that stream, and the next page's offset if there is more.

        Skipped: ``is_disabled`` products and those whose ``status`` is not ``online``. There
        is another page only when ``num_products`` counts more products than this page and the
        ones before it hold (the docs leave open whether it counts the page or all products;
        both readings end the walk correctly).
        """
        if not isinstance(body, dict):
            raise ValueError(f"product list is not a JSON object: {excerpt(repr(body), 100)}")
        products = body.get("products")
        if not isinstance(products, list):
            raise ValueError("product list has no 'products' list")
        listed: set[str] = set()
        for product in products:
            if not isinstance(product, dict) or not isinstance(product.get("product_id"), str):
                raise ValueError(f"product list entry without a 'product_id' string: "
                                 f"{excerpt(repr(product), 100)}")
            if product.get("is_disabled") is True:
                continue
            status = product.get("status")
            if isinstance(status, str) and status and status.lower() != "online":
                continue
            listed.add(product["product_id"])
        pagination = body.get("pagination")
        if isinstance(pagination, dict) and pagination.get("has_next") is True:
            next_cursor = pagination.get("next_cursor")
            if isinstance(next_cursor, str) and next_cursor:
                return InstrumentPage(frozenset(listed), _CURSOR + next_cursor)
        total = body.get("num_products")
        seen = self._page_offset + len(products)
        more = bool(products) and type(total) is int and total > seen
        return InstrumentPage(frozenset(listed), str(seen) if more else None)


#: marks a page cursor that is Coinbase's own ``next_cursor`` (not an offset of ours)
_CURSOR = "cursor:"
#: the -USDC products the market-data channels carry as themselves (websocket-channels)
_USDC_STREAMED = frozenset({"USDT-USDC", "EURC-USDC"})

VENUES: dict[str, Callable[[], Venue]] = {"coinbase": Coinbase}
