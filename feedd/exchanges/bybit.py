"""Bybit v5 public streams, sans-IO: spot (``bybit``), linear (``bybit-linear``), inverse
(``bybit-inverse``).

The three endpoints speak one protocol (protocols §1, Bybit's ``/v5/ws/connect``):
``{"op": "subscribe" | "unsubscribe", "args": [...], "req_id": ...}`` answered by
``{"success": ..., "ret_msg": ..., "req_id": ..., "op": ...}``, and data as
``{"topic": ..., "type": "snapshot" | "delta", "ts": ..., "data": ...}``. They differ in what a
ticker holds:

- spot ``tickers.<symbol>`` are full snapshots without best bid/ask, so the spot ``ticker``
  channel also subscribes ``orderbook.1.<symbol>`` and a ticker record carries its last quote;
- linear and inverse ``tickers.<symbol>`` are a snapshot, then deltas in which a missing field
  is unchanged: the session merges each delta into the symbol's state and emits a complete record.

``price24hPcnt`` is a fraction; records carry percent. Inverse contracts count sizes in USD
contracts (1 USD each) and turnover in the base coin, so inverse records give base volume as
``v / p`` for a trade and ``turnover24h`` for a ticker. Block trades (``BT``) and RPI trades are
trades printed on the public tape and pass through as ordinary trades.

Liveness is the client's JSON ping every 20 s (Bybit's recommendation); its pong (``ret_msg``
``"pong"`` with ``op`` ``"ping"`` on spot/linear/inverse, ``op`` ``"pong"`` elsewhere) is told
from a subscribe reply before anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, DecimalException
from typing import Any, Literal
from urllib.parse import quote

import orjson

from feedd.errors import excerpt
from feedd.exchanges.base import (
    ConnectLimit,
    DecodeError,
    Event,
    Ignored,
    InstrumentPage,
    MessageLimitScope,
    Op,
    PingMode,
    Pong,
    Retry,
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
    single_route,
    text,
)
from feedd.model import TICKER, MarketData, Message, quote_record, trade_record

_Handler = Callable[[dict[str, Any], str, datetime, Message], list[Event]]

_IGNORED = Ignored()
_PONG = Pong()
_SIDES: dict[str, Literal["buy", "sell"]] = {"Buy": "buy", "Sell": "sell"}
#: the words of a failure's ``ret_msg``; a topic of the request among them is the one refused.
#: Failure replies are undocumented; observed wordings [3p] are ``Invalid symbol :[<topic>]``,
#: ``error:handler not found,topic:<topic>`` and ``error:already subscribed,topic:<topic>``.
_WORDS = re.compile(r"[\w.\-]+")
# inlined rather than fields.from_ms: one call less per trade (see fields.py on exactness)
_fromtimestamp = datetime.fromtimestamp


def _percent(value: Any) -> float | None:
    """A fraction (``"-0.158315"``) in percent (-15.8315), exactly: decimal shift, one rounding."""
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise TypeError(f"'price24hPcnt' is not a string: {value!r:.50}")
    try:
        return float(Decimal(value).scaleb(2))
    except DecimalException:
        raise ValueError(f"'price24hPcnt' is not a number: {value!r:.50}") from None


def _best(levels: Any) -> tuple[float, float] | None:
    """The first (best) ``[price, size]`` level of a book side, if it has one."""
    if not levels:
        return None
    if type(levels) is not list:
        raise TypeError(f"a book side is not a list: {levels!r:.50}")
    price, size = levels[0]
    return float(price), float(size)


def _not_a_book(topic: str) -> bool:
    return not topic.startswith("orderbook.1.")


def _milliseconds(value: Any, key: str) -> datetime:
    if type(value) is not int:
        raise TypeError(f"{key!r} is not integer milliseconds: {value!r:.50}")
    return _fromtimestamp(value / 1000, UTC)


class BybitSession:
    """Protocol state of one Bybit connection: pending requests, ticker state, top of book.

    Requests carry a ``req_id`` ("1", "2", ...) that every documented reply echoes, so an ack or
    a refusal names its topics. Bybit refuses a whole request for one bad topic (and subscribes
    nothing of it): the session reports the topic the refusal names as a
    :class:`SubscribeRejected` and asks the runner, with :class:`Retry`, to request the rest again.
    A refusal that names no topic of a request of several is retried one topic per request, so
    the next refusal says which.
    """

    def __init__(
        self,
        venue_id: str,
        *,
        max_args: int,
        merge_tickers: bool,
        inverse: bool,
        quotes: QuoteCache,
    ) -> None:
        self._venue_id = venue_id
        self._max_args = max_args
        self._inverse = inverse
        self._quotes = quotes
        self._next_id = 1
        self._pending: dict[str, tuple[Op, tuple[str, ...]]] = {}
        #: topics to be sent one per request (a refusal of their batch did not say which failed)
        self._alone: set[str] = set()
        #: derivatives: symbol → the ticker as merged so far (snapshot plus deltas)
        self._tickers: dict[str, dict[str, Any]] = {}
        #: symbol → [best bid, best ask] as (price, size) from orderbook.1, kept for its deltas
        self._books: dict[str, list[tuple[float, float] | None]] = {}
        #: symbols whose quotes this connection feeds into the venue's cache
        self._quoted: set[str] = set()
        self._handlers: dict[str, _Handler] = {
            "publicTrade": self._trades,
            "tickers": self._merged_ticker if merge_tickers else self._snapshot_ticker,
            "orderbook.1": self._book,
        }

    # ---- outgoing ------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str]) -> list[Message]:
        """Subscribe requests of at most ``max_args`` topics (spot allows 10), ``orderbook.1``
        topics first: Bybit sends a book's snapshot on subscription, so asked for before the
        tickers it quotes it usually arrives first, and a spot ticker after a (re)connect or a
        new subscription has its bid/ask at once. Only the order of one batch of requests
        changes; nothing waits.

        A topic subscribed anew starts from its snapshot: its merged ticker and its quote are
        forgotten, so nothing from before (e.g. a previous subscription) leaks into a record.
        """
        self._forget(topics)
        books = self._book_symbols(topics)
        self._quoted.update(books)
        if books:
            topics = sorted(topics, key=_not_a_book)  # stable: the given order otherwise
        return self._requests("subscribe", topics)

    def unsubscribe(self, topics: Sequence[str]) -> list[Message]:
        self._forget(topics)
        self._quoted.difference_update(self._book_symbols(topics))
        return self._requests("unsubscribe", topics)

    def ping(self) -> Message | None:
        """Bybit's heartbeat, sent every 20 s whatever arrives ([connect])."""
        return '{"op":"ping"}'

    def connection_lost(self) -> None:
        """The quotes this connection kept current stop being current."""
        self._quotes.forget(self._quoted)

    def _requests(self, op: Op, topics: Sequence[str]) -> list[Message]:
        batches: list[tuple[str, ...]] = []
        alone = self._alone
        if alone:
            together = []
            for topic in topics:
                if topic in alone:
                    alone.discard(topic)
                    batches.append((topic,))
                else:
                    together.append(topic)
            topics = together
        step = self._max_args
        batches.extend(tuple(topics[start : start + step]) for start in range(0, len(topics), step))
        frames: list[Message] = []
        for batch in batches:
            req_id = str(self._next_id)
            self._next_id += 1
            self._pending[req_id] = (op, batch)
            frames.append(orjson.dumps({"op": op, "args": batch, "req_id": req_id}).decode())
        return frames

    def _forget(self, topics: Sequence[str]) -> None:
        for topic in topics:
            prefix, _, symbol = topic.rpartition(".")
            if prefix == "tickers":
                self._tickers.pop(symbol, None)
            elif prefix == "orderbook.1":
                self._books.pop(symbol, None)
                self._quotes.forget((symbol,))

    @staticmethod
    def _book_symbols(topics: Sequence[str]) -> list[str]:
        split = (topic.rpartition(".") for topic in topics)
        return [symbol for prefix, _, symbol in split if prefix == "orderbook.1"]

    # ---- incoming ------------------------------------------------------------------------

    def decode(self, frame: Message, received_at: datetime) -> list[Event]:
        """The events of one received frame; any bad input becomes a :class:`DecodeError`.

        Data (a ``topic``) first, as it is nearly all the traffic; then the pong, which looks
        like a subscribe reply (``success``, ``ret_msg``, ``op``) and must not be taken for one;
        then replies to requests.
        """
        msg = load_object(frame)
        if isinstance(msg, DecodeError):
            return [msg]
        topic = msg.get("topic")
        if topic is not None:
            if type(topic) is not str:
                return [DecodeError(f"'topic' is not a string: {topic!r:.50}", excerpt(frame))]
            prefix, _, symbol = topic.rpartition(".")
            handler = self._handlers.get(prefix)
            if handler is None:
                return [DecodeError(f"unhandled topic {topic!r}", excerpt(frame))]
            try:
                return handler(msg, symbol, received_at, frame)
            except KeyError as exc:
                reason = f"bad {topic!r} message: missing field {exc}"
            except PAYLOAD_ERRORS as exc:
                reason = f"bad {topic!r} message: {type(exc).__name__}: {exc}"
            return [DecodeError(reason, excerpt(frame))]
        if msg.get("ret_msg") == "pong" or msg.get("op") == "pong":
            return [_PONG]
        if "success" in msg:
            return self._reply(msg, frame)
        return [DecodeError("not a topic message, pong or reply", excerpt(frame))]

    def _reply(self, msg: dict[str, Any], frame: Message) -> list[Event]:
        success = msg["success"]
        req_id = msg.get("req_id")
        pending = self._pending.pop(req_id, None) if type(req_id) is str else None
        if success is True:
            if pending is None:
                return [_IGNORED]  # a request this session never sent: nothing to attribute
            op, topics = pending
            return [SubscribeAck(req_id, topics, op)]
        if success is not False:
            return [DecodeError(f"'success' is not a boolean: {success!r:.50}", excerpt(frame))]
        reason = msg.get("ret_msg")
        reason = reason if type(reason) is str and reason else f"refused: {excerpt(frame)}"
        words = set(_WORDS.findall(reason))
        if pending is None:
            # no req_id (or not ours): the request whose topic the refusal names, if any
            found = next((r for r, (_, batch) in self._pending.items() if words.intersection(batch)), None)
            if found is not None:
                req_id, pending = found, self._pending.pop(found)
        if pending is None:
            return [SubscribeRejected(req_id if type(req_id) is str and req_id else None, (), reason)]
        op, batch = pending
        named = tuple(topic for topic in batch if topic in words)
        if not named:
            if len(batch) == 1:
                return [SubscribeRejected(req_id, batch, reason)]
            self._alone.update(batch)
            return [Retry(op, batch, reason)]
        events: list[Event]
        if op == "subscribe" and "already subscribed" in reason:
            events = [SubscribeAck(req_id, named, op)]  # the topic is held: it streams
        else:
            events = [SubscribeRejected(req_id, named, reason)]
        rest = tuple(topic for topic in batch if topic not in named)
        if rest:
            events.append(Retry(op, rest, reason))
        return events

    def _trades(self, msg: dict[str, Any], symbol: str, received_at: datetime, frame: Message) -> list[Event]:
        """One record per element of ``data``; a bad element is a DecodeError of its own."""
        data = msg["data"]
        if type(data) is not list:
            raise TypeError(f"'data' is not a list: {data!r:.50}")
        venue = self._venue_id
        inverse = self._inverse
        events: list[Event] = []
        append = events.append
        # the trades of one message mostly share their millisecond: its datetime is made once
        last_ms: int | None = None
        when = received_at
        for trade in data:
            try:
                side = _SIDES.get(trade["S"])
                if side is None:
                    raise ValueError(f"'S' is not Buy or Sell: {trade['S']!r:.50}")
                price = float(trade["p"])
                size = float(trade["v"])
                ms = trade["T"]
                if type(ms) is not int:
                    raise TypeError(f"'T' is not integer milliseconds: {ms!r:.50}")
                if ms != last_ms:
                    when = _fromtimestamp(ms / 1000, UTC)
                    last_ms = ms
                append(trade_record(
                    venue, text(trade, "s"), price, size / price if inverse else size, when, received_at,
                    side, text(trade, "i"),
                ))
            except KeyError as exc:
                append(DecodeError(f"bad trade in {msg['topic']!r}: missing field {exc}", excerpt(frame)))
            except (*PAYLOAD_ERRORS, ZeroDivisionError) as exc:
                append(DecodeError(f"bad trade in {msg['topic']!r}: {type(exc).__name__}: {exc}",
                                   excerpt(frame)))
        return events

    def _snapshot_ticker(
        self, msg: dict[str, Any], symbol: str, received_at: datetime, frame: Message
    ) -> list[Event]:
        """Spot: every ticker is a full snapshot without bid/ask; the quote comes from orderbook.1."""
        data = msg["data"]
        if type(data) is not dict:
            raise TypeError(f"'data' is not an object: {data!r:.50}")
        bid, ask, bid_size, ask_size = self._quotes.sized(symbol, received_at)
        return [self._ticker(data, symbol, msg["ts"], received_at, bid, ask, bid_size, ask_size)]

    def _merged_ticker(
        self, msg: dict[str, Any], symbol: str, received_at: datetime, frame: Message
    ) -> list[Event]:
        """Linear/inverse: a snapshot replaces the symbol's state, a delta updates the fields it
        holds; the record is built from the whole state, so no field is lost to a delta."""
        data = msg["data"]
        if type(data) is not dict:
            raise TypeError(f"'data' is not an object: {data!r:.50}")
        kind = msg["type"]
        if kind == "snapshot":
            state = self._tickers[symbol] = dict(data)
        elif kind == "delta":
            found = self._tickers.get(symbol)
            if found is None:
                return [DecodeError(f"ticker delta for {symbol} before its snapshot", excerpt(frame))]
            state = found
            state.update(data)
        else:
            raise ValueError(f"'type' is neither snapshot nor delta: {kind!r:.50}")
        bid, ask = optional_number(state.get("bid1Price")), optional_number(state.get("ask1Price"))
        bid_size, ask_size = optional_number(state.get("bid1Size")), optional_number(state.get("ask1Size"))
        if self._inverse:  # USD contracts, made base units as the trades' sizes are
            bid_size = None if bid_size is None or not bid else bid_size / bid
            ask_size = None if ask_size is None or not ask else ask_size / ask
        return [self._ticker(state, symbol, msg["ts"], received_at, bid, ask, bid_size, ask_size)]

    def _ticker(
        self,
        data: dict[str, Any],
        symbol: str,
        ts: Any,
        received_at: datetime,
        bid: float | None,
        ask: float | None,
        bid_size: float | None = None,
        ask_size: float | None = None,
    ) -> MarketData:
        # inverse volume24h counts USD contracts; turnover24h is the base coin (market/tickers)
        volume = data["turnover24h" if self._inverse else "volume24h"]
        return MarketData(
            self._venue_id,
            symbol,
            TICKER,
            float(data["lastPrice"]),
            float(volume),
            _milliseconds(ts, "ts"),
            received_at,
            bid=bid,
            ask=ask,
            high_24h=optional_number(data.get("highPrice24h")),
            low_24h=optional_number(data.get("lowPrice24h")),
            change_24h=_percent(data.get("price24hPcnt")),
            bid_size=bid_size,
            ask_size=ask_size,
        )

    def _book(self, msg: dict[str, Any], symbol: str, received_at: datetime, frame: Message) -> list[Event]:
        """orderbook.1: the best bid and ask, into the venue's quote cache, and a quote record
        for a ``quotes`` subscriber.

        A snapshot sets both sides (an empty side: no quote); a delta replaces a side's level,
        and a level of size 0 deletes it ([ob]). A one-sided book has no quote. Sizes are base
        units (inverse books count USD contracts: divided by the price, as trades are); the
        time is the matching engine's ``cts`` where given, else the message's ``ts``.
        """
        data = msg["data"]
        kind = msg["type"]
        if kind == "snapshot":
            top = self._books[symbol] = [_best(data["b"]), _best(data["a"])]
        elif kind == "delta":
            found = self._books.get(symbol)
            if found is None:
                return [DecodeError(f"order book delta for {symbol} before its snapshot", excerpt(frame))]
            top = found
            for index, side in enumerate(("b", "a")):
                for price_text, size_text in data[side]:
                    price, size = float(price_text), float(size_text)
                    if size == 0:
                        level = top[index]
                        if level is not None and level[0] == price:
                            top[index] = None
                    else:
                        top[index] = (price, size)
        else:
            raise ValueError(f"'type' is neither snapshot nor delta: {kind!r:.50}")
        best_bid, best_ask = top
        if best_bid is None or best_ask is None:
            self._quotes.forget((symbol,))
            return [_IGNORED]
        (bid, bid_size), (ask, ask_size) = best_bid, best_ask
        if self._inverse:
            bid_size, ask_size = bid_size / bid, ask_size / ask
        quotes = self._quotes
        quotes.put(symbol, bid, ask, received_at, bid_size, ask_size)
        if symbol not in quotes.streamed:
            return [_IGNORED]
        return [quote_record(
            self._venue_id, symbol, bid, bid_size, ask, ask_size,
            _milliseconds(msg.get("cts", msg["ts"]), "cts"), received_at,
        )]


class _BybitVenue(QuotedVenue):
    """What the three Bybit venues share: limits, heartbeat, the session, instruments-info."""

    venue_id: str
    default_url: str
    default_rest_url = "https://api.bybit.com"
    #: no topic count is documented for spot, linear or inverse (options: 2000 args); 400 bounds
    #: what one connection carries and subscribes again after a reconnect
    max_streams_per_connection = 400
    #: [connect] "Public channel - Args limits": "for one public connection, you cannot have
    #: length of "args" array over 21,000 characters". Counted as the array's JSON text, the
    #: strictest reading (it also counts quotes and commas); 400 topics of 64-character symbols
    #: would take over 29,000, so long symbols take more connections
    max_chars_per_connection: int | None = 21_000
    #: no limit is documented for public sends [unverified]; paced like Binance USD-M
    max_messages_per_second = 10.0
    message_limit_scope: MessageLimitScope = "connection"
    #: [rl], [connect]: "no more than 500 connections within 5 minutes", counted per WebSocket
    #: domain: spot, linear and inverse share stream.bybit.com and so one budget
    connect_limit: ConnectLimit | None = ConnectLimit(500, 300.0)
    #: Bybit recommends a ping every 20 s ([connect]); it owes a pong for each
    ping_interval: float | None = 20.0
    ping_mode: PingMode = "always"
    pong_timeout: float | None = 10.0
    uppercase_symbols = True
    #: no connection lifetime is documented
    rotate_after: float | None = None
    category: str
    #: topics per subscribe request: spot allows 10 ([connect]); derivatives have no documented
    #: limit, and a small batch is little to redo when one bad topic fails it
    max_args_per_request: int
    _merge_tickers = True
    _inverse = False
    #: instruments-info pages by ``limit`` and ``cursor``, except for spot ([instruments-info]:
    #: "Spot does not support pagination, so limit, cursor are invalid.")
    _paginated = True

    def topics(self, subscription: Subscription) -> list[Topic]:
        symbol = subscription.symbol
        if subscription.channel == "trades":
            return [Topic("", f"publicTrade.{symbol}")]
        if subscription.channel == "ticker":
            return [Topic("", f"tickers.{symbol}")]
        if subscription.channel == "quotes":
            return [Topic("", f"orderbook.1.{symbol}")]
        raise ValueError(f"unknown channel {subscription.channel!r}")

    def url(self, route: str, base_url: str) -> str:
        return single_route(self.venue_id, route, base_url)

    def symbol_problem(self, symbol: str) -> str | None:
        return None  # every listed symbol streams as itself

    def new_session(self) -> Session:
        return BybitSession(
            self.venue_id,
            max_args=self.max_args_per_request,
            merge_tickers=self._merge_tickers,
            inverse=self._inverse,
            quotes=self.quotes,
        )

    def instruments_path(self, cursor: str | None = None) -> str:
        """``/v5/market/instruments-info`` of the venue's category, 1000 a page, from ``cursor``;
        spot's is one page, asked for without ``limit`` or ``cursor``.

        The cursor goes back percent-encoded once more, as an HTTP client encodes any value.
        """
        path = f"/v5/market/instruments-info?category={self.category}"
        if not self._paginated:
            if cursor is not None:
                raise ValueError(f"{self.category} instruments-info is one page: no cursor to follow")
            return path
        path += "&limit=1000"
        return path if cursor is None else f"{path}&cursor={quote(cursor, safe='')}"

    def parse_instruments(self, body: Any) -> InstrumentPage:
        """The ``Trading`` symbols of one page, and ``nextPageCursor`` (empty or absent: the last;
        spot's one page is always the last)."""
        if not isinstance(body, dict):
            raise ValueError(f"instruments-info is not a JSON object: {excerpt(repr(body), 100)}")
        code = body.get("retCode")
        if code != 0:
            raise ValueError(f"instruments-info answered retCode {code!r}: {body.get('retMsg')!r}")
        result = body.get("result")
        entries = result.get("list") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(entries, list):
            raise ValueError("instruments-info has no 'result.list'")
        tradable: set[str] = set()
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("symbol"), str):
                raise ValueError(f"instruments-info entry without a 'symbol' string: "
                                 f"{excerpt(repr(entry), 100)}")
            if entry.get("status") == "Trading":
                tradable.add(entry["symbol"])
        cursor = result.get("nextPageCursor")
        if cursor is not None and not isinstance(cursor, str):
            raise ValueError(f"instruments-info 'nextPageCursor' is not a string: {cursor!r:.50}")
        return InstrumentPage(frozenset(tradable), (cursor or None) if self._paginated else None)


class _BybitRecent(_BybitVenue):
    """Spot, linear and inverse: :class:`~feedd.exchanges.base.RecentTrades` (a break recovered
    by time from ``/v5/market/recent-trade``; options are not recovered: their recent-trade answer
    is per base coin, and the option simulator does not serve it)."""

    #: trades one recent-trade request answers at most ([recent-trade]: spot [1, 60], the
    #: others [1, 1000]); 60 is spot's, the derivatives say 1000 below
    recent_page = 60
    #: recent-trade requests per second: Bybit allows 600 per 5 s per IP to all of its REST
    recent_rate = 5.0

    def recent_path(self, symbol: str, limit: int) -> str:
        """``/v5/market/recent-trade`` of the venue's category: the latest ``limit`` trades."""
        return f"/v5/market/recent-trade?category={self.category}&symbol={symbol}&limit={limit}"

    def parse_recent(self, symbol: str, body: Any, received_at: datetime) -> list[MarketData]:
        """Trades of a recent-trade answer (``result.list`` of ``execId``, ``price``, ``size``,
        ``side``, ``time``: newest first on the wire), oldest first; inverse sizes (USD
        contracts) made base units as on the stream."""
        if not isinstance(body, dict):
            raise ValueError(f"recent-trade is not a JSON object: {excerpt(repr(body), 100)}")
        if body.get("retCode") != 0:
            raise ValueError(f"recent-trade answered retCode {body.get('retCode')!r}: {body.get('retMsg')!r}")
        result = body.get("result")
        entries = result.get("list") if isinstance(result, dict) else None
        if not isinstance(entries, list):
            raise ValueError("recent-trade has no 'result.list'")
        out: list[MarketData] = []
        for entry in reversed(entries):
            try:
                side = _SIDES.get(entry["side"])
                if side is None:
                    raise ValueError(f"'side' is not Buy or Sell: {entry['side']!r:.50}")
                price, size = float(entry["price"]), float(entry["size"])
                out.append(trade_record(
                    self.venue_id, symbol, price, size / price if self._inverse else size,
                    _fromtimestamp(int(entry["time"]) / 1000, UTC), received_at, side,
                    text(entry, "execId"),
                ))
            except (*PAYLOAD_ERRORS, ZeroDivisionError) as exc:
                raise ValueError(f"bad trade in recent-trade: {type(exc).__name__}: {exc}: "
                                 f"{excerpt(repr(entry), 100)}") from None
        return out


class BybitSpot(_BybitRecent):
    """Bybit spot: the ``ticker`` channel is ``tickers`` plus ``orderbook.1`` for bid/ask."""

    venue_id = "bybit"
    default_url = "wss://stream.bybit.com/v5/public/spot"
    category = "spot"
    max_args_per_request = 10
    _merge_tickers = False
    _paginated = False

    def topics(self, subscription: Subscription) -> list[Topic]:
        if subscription.channel == "ticker":
            symbol = subscription.symbol
            return [Topic("", f"tickers.{symbol}"), Topic("", f"orderbook.1.{symbol}")]
        return super().topics(subscription)


class BybitLinear(_BybitRecent):
    """Bybit USDT/USDC perpetuals and futures."""

    venue_id = "bybit-linear"
    default_url = "wss://stream.bybit.com/v5/public/linear"
    category = "linear"
    max_args_per_request = 100
    recent_page = 1000


class BybitInverse(_BybitRecent):
    """Bybit inverse contracts (sizes in USD contracts, made base units in records)."""

    venue_id = "bybit-inverse"
    default_url = "wss://stream.bybit.com/v5/public/inverse"
    category = "inverse"
    max_args_per_request = 100
    recent_page = 1000
    _inverse = True


VENUES: dict[str, Callable[[], Venue]] = {
    "bybit": BybitSpot,
    "bybit-linear": BybitLinear,
    "bybit-inverse": BybitInverse,
}
