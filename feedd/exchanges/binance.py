"""Binance spot (``binance``) and USD-M futures (``binance-usdm``) market streams, sans-IO.

Both venues speak the same combined-stream protocol (protocols §2): JSON ``SUBSCRIBE`` /
``UNSUBSCRIBE`` requests answered by ``{"result": null, "id": n}``, and every event wrapped as
``{"stream": name, "data": payload}``. They differ in endpoints, limits and in how a ticker is
built: a USD-M ``@ticker`` carries no best bid/ask (§2.6), so feedd also subscribes
``@bookTicker`` on the ``/public`` route and merges the last quote into the ticker.

Liveness is WebSocket ping frames sent by the server (§2.4), which the transport answers; there is
no JSON ping, so :meth:`BinanceSession.ping` probes an idle feed with ``LIST_SUBSCRIPTIONS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

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
    Rotate,
    Session,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
    Venue,
)
from feedd.exchanges.fields import PAYLOAD_ERRORS, QuoteCache, QuotedVenue, load_object, single_route, text
from feedd.model import TICKER, MarketData, Message, quote_record, trade_record

_Handler = Callable[[dict[str, Any], datetime], Event]

_IGNORED = Ignored()
_SHUTDOWN = Rotate("serverShutdown")
_HEARTBEAT = Heartbeat()
# inlined rather than fields.from_ms: one call less per trade frame (see fields.py on exactness)
_fromtimestamp = datetime.fromtimestamp


class BinanceSession:
    """Protocol state of one Binance connection: request ids and the requests awaiting a reply.

    Request ids are small positive integers from 1: the docs allow more, but one documented error
    says "request ID must be an unsigned integer" (§2.2). Quotes go to the venue-wide ``quotes``
    cache because on USD-M the ``@bookTicker`` and the ``@ticker`` arrive on different connections;
    the session remembers whose quotes it feeds, to drop them when its connection is lost.
    """

    #: streams per SUBSCRIBE/UNSUBSCRIBE request; Binance answers "too many parameters" past its
    #: (undocumented) limit, and 200 is USD-M's whole per-connection budget.
    MAX_PARAMS_PER_REQUEST = 200
    #: the ticker field holding the 24 h volume in base units (COIN-M: ``q``; its ``v`` counts contracts)
    _volume_key = "v"

    def __init__(self, venue_id: str, quotes: QuoteCache) -> None:
        self._venue_id = venue_id
        self._quotes = quotes
        #: symbols whose ``@bookTicker`` this connection carries
        self._quoted: set[str] = set()
        self._next_id = 1
        self._pending: dict[int, tuple[Op, tuple[str, ...]]] = {}
        #: the last trade time (ms) and its datetime (see _trade_record)
        self._last_ms: object = None
        self._last_time = datetime.fromtimestamp(0, UTC)
        # keyed by the part of the stream name after its last "@" ("!serverShutdown" has none)
        self._handlers: dict[str, _Handler] = {
            "trade": self._trade,
            "aggTrade": self._agg_trade,
            "ticker": self._ticker,
            "bookTicker": self._book_ticker,
            "!serverShutdown": self._server_shutdown,
        }

    # ---- outgoing ------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str]) -> list[Message]:
        """``SUBSCRIBE`` text frames, at most :attr:`MAX_PARAMS_PER_REQUEST` streams each.

        Subscribing a ``@bookTicker`` forgets its cached quote, so a ticker never carries a
        quote older than the subscription (e.g. from before a reconnect).
        """
        quoted = self._quote_symbols(topics)
        self._quotes.forget(quoted)
        self._quoted.update(quoted)
        return self._requests("SUBSCRIBE", "subscribe", topics)

    def unsubscribe(self, topics: Sequence[str]) -> list[Message]:
        """``UNSUBSCRIBE`` text frames; an unsubscribed ``@bookTicker`` drops its cached quote."""
        quoted = self._quote_symbols(topics)
        self._quotes.forget(quoted)
        self._quoted.difference_update(quoted)
        return self._requests("UNSUBSCRIBE", "unsubscribe", topics)

    def connection_lost(self) -> None:
        """The quotes this connection kept current stop being current."""
        self._quotes.forget(self._quoted)

    def ping(self) -> Message | None:
        """A ``LIST_SUBSCRIPTIONS`` request, sent only when the feed has been idle.

        The server's WebSocket pings (§2.4) keep the socket open but are invisible to the stale
        watchdog, and an illiquid symbol's trade stream can be silent for minutes; the reply to
        this request proves the whole path alive (its answer decodes to :class:`Heartbeat`, which
        the stale watchdog counts as a sign of the feed; pongs and acks only prove the socket).
        """
        request_id = self._next_id
        self._next_id += 1
        return orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id}).decode()

    def _requests(self, method: str, op: Op, topics: Sequence[str]) -> list[Message]:
        frames: list[Message] = []
        step = self.MAX_PARAMS_PER_REQUEST
        for start in range(0, len(topics), step):
            batch = tuple(topics[start : start + step])
            request_id = self._next_id
            self._next_id += 1
            self._pending[request_id] = (op, batch)
            body = {"method": method, "params": list(batch), "id": request_id}
            frames.append(orjson.dumps(body).decode())
        return frames

    @staticmethod
    def _quote_symbols(topics: Sequence[str]) -> list[str]:
        return [
            symbol.upper()
            for symbol, _, stream in (topic.rpartition("@") for topic in topics)
            if stream == "bookTicker"
        ]

    # ---- incoming ------------------------------------------------------------------------

    def decode(self, frame: Message, received_at: datetime) -> list[Event]:
        """The events in one received frame; any bad input becomes a :class:`DecodeError`.

        Replies: ``result: null`` for a pending id is its :class:`SubscribeAck`; any other
        list ``result`` (a ``LIST_SUBSCRIPTIONS`` answer) is a :class:`Heartbeat`; any other
        ``result`` and a ``result: null`` for an id this session never sent (nothing to
        attribute, nothing wrong) are :class:`Ignored`. ``code``/``msg``
        errors often carry no id (§2.2); those give a :class:`SubscribeRejected` with no topics.
        A raw (unwrapped) ``serverShutdown`` is honoured like the combined one.
        """
        msg = load_object(frame)
        if isinstance(msg, DecodeError):
            return [msg]
        stream = msg.get("stream")
        if stream is not None:
            if type(stream) is not str:
                return [DecodeError(f"'stream' is not a string: {stream!r:.50}", excerpt(frame))]
            try:
                handler = self._handlers.get(stream.rpartition("@")[2])
                if handler is None:
                    return [DecodeError(f"unhandled stream {stream!r}", excerpt(frame))]
                return [handler(msg["data"], received_at)]
            except KeyError as exc:
                reason = f"bad {stream!r} payload: missing field {exc}"
            except PAYLOAD_ERRORS as exc:
                reason = f"bad {stream!r} payload: {type(exc).__name__}: {exc}"
            return [DecodeError(reason, excerpt(frame))]
        if "result" in msg:
            return [self._reply(msg)]
        if "code" in msg:
            return [self._error(msg)]
        if msg.get("e") == "serverShutdown":
            return [_SHUTDOWN]
        return [DecodeError("not a combined-stream event, reply or error", excerpt(frame))]

    def _reply(self, msg: dict[str, Any]) -> Event:
        result = msg["result"]
        if type(result) is list:
            return _HEARTBEAT  # the idle probe's answer: the venue's subscription path is alive
        if result is not None:
            return _IGNORED
        request_id = msg.get("id")
        pending = self._pending.pop(request_id, None) if type(request_id) is int else None
        if pending is None:
            return _IGNORED
        op, topics = pending
        return SubscribeAck(request_id, topics, op)

    def _error(self, msg: dict[str, Any]) -> Event:
        request_id = msg.get("id")
        if type(request_id) is not int and type(request_id) is not str:
            request_id = None
        pending = self._pending.pop(request_id, None) if type(request_id) is int else None
        topics = pending[1] if pending is not None else ()
        return SubscribeRejected(request_id, topics, f"code {msg['code']}: {msg.get('msg')}")

    def _trade(self, data: dict[str, Any], received_at: datetime) -> Event:
        trade_id = data["t"]
        if type(trade_id) is not int:
            raise TypeError(f"trade id 't' is not an integer: {trade_id!r}")
        return self._trade_record(data, str(trade_id), received_at)

    def _agg_trade(self, data: dict[str, Any], received_at: datetime) -> Event:
        trade_id = data["a"]
        if type(trade_id) is not int:
            raise TypeError(f"aggregate trade id 'a' is not an integer: {trade_id!r}")
        return self._trade_record(data, str(trade_id), received_at)

    def _quantity(self, symbol: str, price: float, quantity: Any) -> float:
        """A trade's size in base units: ``q`` as sent (COIN-M's session turns contracts into coins)."""
        return float(quantity)

    def _trade_record(self, data: dict[str, Any], trade_id: str, received_at: datetime) -> Event:
        symbol = data["s"]
        if type(symbol) is not str:
            raise TypeError(f"'s' is not a string: {symbol!r}")
        # m: "is the buyer the market maker?"; true means the taker sold (§2.3, §4)
        maker_buyer = data["m"]
        if maker_buyer is True:
            side: Literal["buy", "sell"] = "sell"
        elif maker_buyer is False:
            side = "buy"
        else:
            raise TypeError(f"'m' is not a boolean: {maker_buyer!r}")
        price = float(data["p"])
        # trades come many to a millisecond (one match fills several orders; a busy symbol
        # trades thousands of times a second): the last trade time's datetime is reused
        ms = data["T"]
        if ms == self._last_ms and type(ms) is int:
            timestamp = self._last_time
        else:
            timestamp = _fromtimestamp(ms / 1000, UTC)
            self._last_ms, self._last_time = ms, timestamp
        return trade_record(
            self._venue_id,
            symbol,
            price,
            self._quantity(symbol, price, data["q"]),
            timestamp,
            received_at,
            side,
            trade_id,
        )

    def _ticker(self, data: dict[str, Any], received_at: datetime) -> Event:
        symbol = text(data, "s")
        bid_text = data.get("b")
        bid: float | None
        ask: float | None
        bid_size: float | None
        ask_size: float | None
        if bid_text is None:
            # USD-M tickers carry no best bid/ask (§2.6): use the last @bookTicker, if fresh
            bid, ask, bid_size, ask_size = self._quotes.sized(symbol, received_at)
        else:
            bid, ask = float(bid_text), float(data["a"])
            bid_size, ask_size = float(data["B"]), float(data["A"])
        return MarketData(
            self._venue_id,
            symbol,
            TICKER,
            float(data["c"]),
            float(data[self._volume_key]),
            _fromtimestamp(data["E"] / 1000, UTC),
            received_at,
            bid=bid,
            ask=ask,
            high_24h=float(data["h"]),
            low_24h=float(data["l"]),
            change_24h=float(data["P"]),
            bid_size=bid_size,
            ask_size=ask_size,
        )

    def _book_ticker(self, data: dict[str, Any], received_at: datetime) -> Event:
        """Cache the quote for tickers; a record of its own for a ``quotes`` subscriber.

        The time is the futures' transaction time ``T``; spot's bookTicker carries no time at
        all (§2.3), so its quotes are stamped with the receive time.
        """
        symbol = text(data, "s")
        bid, ask = float(data["b"]), float(data["a"])
        # sizes in base units (COIN-M's are contracts: made coins at their own side's price)
        bid_size, ask_size = self._quantity(symbol, bid, data["B"]), self._quantity(symbol, ask, data["A"])
        quotes = self._quotes
        quotes.put(symbol, bid, ask, received_at, bid_size, ask_size)
        if symbol not in quotes.streamed:
            return _IGNORED
        at = data.get("T")
        return quote_record(
            self._venue_id, symbol, bid, bid_size, ask, ask_size,
            received_at if at is None else _fromtimestamp(at / 1000, UTC), received_at,
        )

    def _server_shutdown(self, data: dict[str, Any], received_at: datetime) -> Event:
        return _SHUTDOWN


class _BinanceVenue(QuotedVenue):
    """What both Binance venues share: the session factory, the quote cache (USD-M's
    ``@bookTicker``; spot tickers carry their own), exchangeInfo."""

    venue_id: str
    default_url: str
    default_rest_url: str
    max_streams_per_connection: int
    max_chars_per_connection: int | None = None
    max_messages_per_second: float
    #: "incoming messages per second" are counted per connection, pongs included (§2.5)
    message_limit_scope: MessageLimitScope = "connection"
    #: "300 connection attempts per 5 minutes per IP" (spot, protocols §2.5); the USD-M page
    #: states no figure [unverified], so it gets spot's
    connect_limit: ConnectLimit | None = ConnectLimit(300, 300.0)
    #: idle seconds before a liveness probe (see BinanceSession.ping); well inside stale_after
    ping_interval: float | None = 10.0
    ping_mode: PingMode = "idle"
    #: the probe's reply is not awaited: the server's own WebSocket pings keep the socket honest,
    #: and the stale watchdog ends a feed that stays silent
    pong_timeout: float | None = None
    uppercase_symbols: bool = True
    #: "a connection lives at most 24 hours" (§2.4, spot and USD-M): replaced half an hour before
    rotate_after: float | None = 23.5 * 3600
    _instruments_path: str
    #: trades per history request at most (both endpoints: "limit: default 500; max 1000")
    history_page: int = 1000
    #: history requests per second: historicalTrades weighs 25 of spot's 6,000 per minute (4/s),
    #: aggTrades 20 of USD-M's 2,400 (2/s); feedd takes half, beside the instrument lists
    history_rate: float
    #: the history endpoint and the id field it is paged by (spot ``t`` ids, USD-M ``a`` ids)
    _history_endpoint: str
    _history_id: str

    def _history_quantity(self, symbol: str, price: float, quantity: float) -> float:
        """A history trade's size in base units (COIN-M: contracts made coins)."""
        return quantity

    def history_path(self, symbol: str, from_id: int, limit: int) -> str:
        return f"{self._history_endpoint}?symbol={symbol}&fromId={from_id}&limit={limit}"

    def parse_history(self, symbol: str, body: Any, received_at: datetime) -> list[MarketData]:
        """Trades of a ``historicalTrades`` answer (``id``, ``price``, ``qty``, ``time``,
        ``isBuyerMaker``) or an ``aggTrades`` one (``a``, ``p``, ``q``, ``T``, ``m``)."""
        if not isinstance(body, list):
            raise ValueError(f"trade history is not a JSON array: {excerpt(repr(body), 100)}")
        key = self._history_id
        spot = key == "id"
        out: list[MarketData] = []
        for entry in body:
            try:
                trade_id = entry[key]
                maker_buyer = entry["isBuyerMaker" if spot else "m"]
                if type(trade_id) is not int or type(maker_buyer) is not bool:
                    raise TypeError(f"{key!r} is not an integer or the maker flag not a boolean")
                price = float(entry["price" if spot else "p"])
                out.append(trade_record(
                    self.venue_id,
                    symbol,
                    price,
                    self._history_quantity(symbol, price, float(entry["qty" if spot else "q"])),
                    _fromtimestamp(entry["time" if spot else "T"] / 1000, UTC),
                    received_at,
                    "sell" if maker_buyer else "buy",
                    str(trade_id),
                ))
            except (KeyError, *PAYLOAD_ERRORS) as exc:
                raise ValueError(f"bad trade in the history: {type(exc).__name__}: {exc}: "
                                 f"{excerpt(repr(entry), 100)}") from None
        return out

    def new_session(self) -> Session:
        return BinanceSession(self.venue_id, self.quotes)

    def symbol_problem(self, symbol: str) -> str | None:
        # '@' and '/' are the separators of Binance stream names (btcusdt@trade/ethusdt@trade)
        if "@" in symbol or "/" in symbol:
            return f"not a symbol: {symbol!r:.60} ('@' and '/' separate Binance stream names)"
        return None  # every listed symbol streams as itself

    def instruments_path(self, cursor: str | None = None) -> str:
        return self._instruments_path  # exchangeInfo is one page

    def parse_instruments(self, body: Any) -> InstrumentPage:
        """The symbols of an exchangeInfo response whose ``status`` is ``TRADING``."""
        if not isinstance(body, dict):
            raise ValueError(f"exchangeInfo is not a JSON object: {excerpt(repr(body), 100)}")
        entries = body.get("symbols")
        if not isinstance(entries, list):
            raise ValueError("exchangeInfo has no 'symbols' list")
        tradable: set[str] = set()
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("symbol"), str):
                raise ValueError(f"exchangeInfo symbol entry without a 'symbol' string: "
                                 f"{excerpt(repr(entry), 100)}")
            if entry.get("status") == "TRADING":
                tradable.add(entry["symbol"])
        return InstrumentPage(frozenset(tradable))


class BinanceSpot(_BinanceVenue):
    """Binance spot: one endpoint, trades from ``@trade``, tickers from ``@ticker`` (with b/a)."""

    venue_id = "binance"
    default_url = "wss://stream.binance.com:9443/stream"
    default_rest_url = "https://api.binance.com"
    max_streams_per_connection = 1024
    max_messages_per_second = 5.0
    _instruments_path = "/api/v3/exchangeInfo"
    history_rate = 2.0
    #: "Get older market trades" (Market Data endpoints), by the ``t`` ids of ``@trade``
    _history_endpoint = "/api/v3/historicalTrades"
    _history_id = "id"

    def topics(self, subscription: Subscription) -> list[Topic]:
        symbol = subscription.symbol.lower()  # stream names want lower case (§2.1)
        if subscription.channel == "trades":
            return [Topic("", f"{symbol}@trade")]
        if subscription.channel == "ticker":
            return [Topic("", f"{symbol}@ticker")]
        if subscription.channel == "quotes":
            return [Topic("", f"{symbol}@bookTicker")]
        raise ValueError(f"unknown channel {subscription.channel!r}")

    def url(self, route: str, base_url: str) -> str:
        return single_route(self.venue_id, route, base_url)


class BinanceUsdm(_BinanceVenue):
    """Binance USD-M futures on the routed paths of §2.6.

    ``/market`` carries ``@aggTrade`` and ``@ticker``; ``/public`` carries ``@bookTicker``, which
    supplies the bid/ask the futures ticker lacks. Futures have no ``@trade`` stream for the
    public, hence ``@aggTrade``.
    """

    venue_id = "binance-usdm"
    default_url = "wss://fstream.binance.com/market/stream"
    default_rest_url = "https://fapi.binance.com"
    # the docs' copies say 1024 or 200; design for 200 (§2.6)
    max_streams_per_connection = 200
    max_messages_per_second = 10.0
    _instruments_path = "/fapi/v1/exchangeInfo"
    history_rate = 1.0
    #: "Compressed/Aggregate Trades List", by the ``a`` ids of ``@aggTrade``
    _history_endpoint = "/fapi/v1/aggTrades"
    _history_id = "a"

    def topics(self, subscription: Subscription) -> list[Topic]:
        symbol = subscription.symbol.lower()
        if subscription.channel == "trades":
            return [Topic("market", f"{symbol}@aggTrade")]
        if subscription.channel == "ticker":
            return [Topic("market", f"{symbol}@ticker"), Topic("public", f"{symbol}@bookTicker")]
        if subscription.channel == "quotes":
            return [Topic("public", f"{symbol}@bookTicker")]
        raise ValueError(f"unknown channel {subscription.channel!r}")

    def url(self, route: str, base_url: str) -> str:
        """``market`` is the configured URL; ``public`` is it with ``/market/`` made ``/public/``."""
        if route == "market":
            return base_url
        if route != "public":
            raise ValueError(f"binance-usdm has routes 'market' and 'public', not {route!r}")
        parts = urlsplit(base_url)
        segments = parts.path.split("/")
        if segments.count("market") != 1:
            raise ValueError(
                f"binance-usdm url {base_url!r} must contain exactly one '/market' path segment "
                "(e.g. wss://fstream.binance.com/market/stream), from which the /public route "
                "is derived"
            )
        segments[segments.index("market")] = "public"
        return urlunsplit(parts._replace(path="/".join(segments)))


VENUES: dict[str, Callable[[], Venue]] = {
    "binance": BinanceSpot,
    "binance-usdm": BinanceUsdm,
}
