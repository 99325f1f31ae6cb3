"""Hyperliquid public market data (``hyperliquid``): perpetuals by coin, spot by pair, sans-IO.

Protocol (protocols §9, checked against Hyperliquid's API docs: ``websocket``,
``websocket/subscriptions``, ``websocket/timeouts-and-heartbeats``, ``rate-limits-and-user-limits``,
``info-endpoint``, as of the 2026-08-22 sync of the GitBook):

- One subscription per message, ``{"method": "subscribe" | "unsubscribe", "subscription":
  {"type": t, "coin": c}}``; the ack ``{"channel": "subscriptionResponse", "data": {"method": ...,
  "subscription": ...}}`` echoes the request, so it names its topic. Refusals are
  ``{"channel": "error", "data": "<text>"}`` ([3p]: ``Invalid subscription {...}``,
  ``Already subscribed: {...}``, ``Already unsubscribed: {...}``, ``Cannot subscribe to more than
  1000 channels.``); the subscription quoted in the text, when there is one, names the request.
- Data is ``{"channel": <type>, "data": ...}``. ``trades`` holds ``WsTrade[]`` (``coin``,
  ``side`` ``B``/``A``, ``px``, ``sz``, ``time`` ms, ``tid``); ``side`` is the taker's (the docs do
  not define it; every recorded ``B`` printed at the ask and every ``A`` at the bid, §9.3). The
  first ``trades`` message after an ack is a snapshot of recent trades ("Missed data during the
  reconnect will be present in the snapshot ack on reconnect"): its trades are published unless
  the venue's sessions already saw them, keyed ``(time, tid)`` as the docs advise, so a reconnect
  fills its gap without repeating a trade.
- Tickers are built from two subscriptions per coin, the cheapest pair that gives every field:
  ``activeAssetCtx`` (``markPx``, ``midPx``, ``prevDayPx``, ``dayNtlVlm`` and, on the wire,
  ``dayBaseVlm`` [3p]; spot contexts arrive as ``activeSpotAssetCtx``) and ``bbo`` (best bid and
  offer, "sent only if the bbo changes on a block") into the venue's quote cache. ``allMids`` would
  carry every coin's mid in every message, ``l2Book`` 20 levels a side. A record per context:
  price the mid (the mark when the book is empty), volume ``dayBaseVlm`` (else ``dayNtlVlm`` over
  the price), change the mark against ``prevDayPx`` (the previous day's mark) in percent, bid/ask
  the last quote at most ``quote_max_age`` old; a context has no time, so its record's is the
  receive time. Numbers may be strings (REST, recorded) or numbers (the docs' TypeScript).
- Liveness: the server closes a connection it has sent nothing for 60 s; ``{"method": "ping"}``
  is answered by ``{"channel": "pong"}``. Old servers greet with the text
  ``Websocket connection established.``, which is ignored.
- Limits, per IP address: 10 connections, 30 new connections a minute, 1000 subscriptions, 2000
  messages sent a minute across all connections.

Topics are ``<type>:<coin>``: ``trades:BTC``, ``bbo:@107``, ``activeAssetCtx:PURR/USDC``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from math import isfinite
from typing import Any

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
    Session,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
    Venue,
)
from feedd.exchanges.fields import PAYLOAD_ERRORS, QuoteCache, QuotedVenue, load_object, single_route, text
from feedd.model import TICKER, MarketData, Message, Side, quote_record, trade_record

TRADES = "trades"
BBO = "bbo"
CONTEXT = "activeAssetCtx"
#: the instrument list's second page: spot pairs (the first is the perpetuals' ``meta``)
SPOT_META = "spotMeta"

_IGNORED = Ignored()
_PONG = Pong()
_SIDES: dict[Any, Side] = {"B": "buy", "A": "sell"}
_GREETING = "Websocket connection established."
_fromtimestamp = datetime.fromtimestamp

_Handler = Callable[[Any, datetime, Message], list[Event]]


def topic_name(kind: str, coin: str) -> str:
    return f"{kind}:{coin}"


def split_topic(topic: str) -> tuple[str, str]:
    """``"bbo:xyz:NVDA"`` → ``("bbo", "xyz:NVDA")``: the type never holds a colon, a coin may."""
    kind, sep, coin = topic.partition(":")
    if not sep or not kind or not coin:
        raise ValueError(f"not a hyperliquid topic (<type>:<coin>): {topic!r}")
    return kind, coin


def subscription_topic(subscription: Any) -> str | None:
    """The topic a subscription object (an ack's echo, or one quoted in an error) stands for."""
    if type(subscription) is not dict:
        return None
    kind, coin = subscription.get("type"), subscription.get("coin")
    if type(kind) is not str or type(coin) is not str:
        return None
    return topic_name(kind, coin)


def _quoted_topic(reason: str) -> str | None:
    """The topic of the subscription an error text quotes as JSON (``Already subscribed: {...}``)."""
    start, end = reason.find("{"), reason.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        return subscription_topic(orjson.loads(reason[start : end + 1]))
    except orjson.JSONDecodeError:
        return None


def _number(value: Any, key: str) -> float:
    """A finite number the venue writes as a decimal string or a JSON number (not a boolean)."""
    if type(value) is not str and type(value) is not float and type(value) is not int:
        raise TypeError(f"{key!r} is not a number: {value!r:.50}")
    number = float(value)
    if not isfinite(number):
        raise ValueError(f"{key!r} is not finite: {value!r:.50}")
    return number


class RecentTrades:
    """The keys ``(time, tid)`` of the last ``capacity`` trades per coin, shared by a venue's
    sessions, so a subscription's snapshot publishes only the trades no connection delivered."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._keys: dict[str, dict[tuple[int, int], None]] = {}

    def add(self, coin: str, key: tuple[int, int]) -> bool:
        """Remember ``key``; False if it was remembered already."""
        keys = self._keys.setdefault(coin, {})
        if key in keys:
            return False
        keys[key] = None
        if len(keys) > self.capacity:
            del keys[next(iter(keys))]
        return True

    def count(self, coin: str) -> int:
        return len(self._keys.get(coin, ()))


class HyperliquidSession:
    """Protocol state of one connection: requests awaiting their reply, snapshots to come, quotes.

    A request is one topic, so ``(op, topic)`` is its key: the ack's echo and an error's quoted
    subscription find it. ``Already subscribed`` (``unsubscribed``) means the wish holds: an ack.
    """

    def __init__(self, venue_id: str, quotes: QuoteCache, recent: RecentTrades) -> None:
        self._venue_id = venue_id
        self._quotes = quotes
        self._recent = recent
        self._next_id = 1
        self._pending: dict[tuple[Op, str], int] = {}
        #: coins whose trades subscription was acknowledged and whose snapshot is still to come
        self._snapshots: set[str] = set()
        #: coins whose quotes this connection feeds into the venue's cache
        self._quoted: set[str] = set()
        self._handlers: dict[str, _Handler] = {
            TRADES: self._trades,
            BBO: self._bbo,
            CONTEXT: self._context,
            "activeSpotAssetCtx": self._context,
        }

    # ---- outgoing ------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str]) -> list[Message]:
        """One message per topic (the venue has no batch form); ``bbo`` first, so a new
        ticker's quote usually arrives before its first context."""
        return self._requests("subscribe", sorted(topics, key=lambda t: not t.startswith(BBO + ":")))

    def unsubscribe(self, topics: Sequence[str]) -> list[Message]:
        return self._requests("unsubscribe", topics)

    def ping(self) -> Message | None:
        """The venue's heartbeat, for a connection that has been quiet ([hb])."""
        return '{"method":"ping"}'

    def connection_lost(self) -> None:
        """The quotes this connection kept current stop being current."""
        self._quotes.forget(self._quoted)

    def _requests(self, op: Op, topics: Sequence[str]) -> list[Message]:
        frames: list[Message] = []
        for topic in topics:
            kind, coin = split_topic(topic)
            self._pending[(op, topic)] = self._next_id
            self._next_id += 1
            if kind == BBO:
                self._quotes.forget((coin,))  # a new subscription's quote starts from its own
                (self._quoted.add if op == "subscribe" else self._quoted.discard)(coin)
            body = {"method": op, "subscription": {"type": kind, "coin": coin}}
            frames.append(orjson.dumps(body).decode())
        return frames

    # ---- incoming ------------------------------------------------------------------------

    def decode(self, frame: Message, received_at: datetime) -> list[Event]:
        """The events of one frame; any bad input becomes a :class:`DecodeError`."""
        if frame == _GREETING or frame == _GREETING.encode():
            return [_IGNORED]
        msg = load_object(frame)
        if isinstance(msg, DecodeError):
            return [msg]
        channel = msg.get("channel")
        if type(channel) is not str:
            return [DecodeError("no 'channel' string", excerpt(frame))]
        handler = self._handlers.get(channel)
        if handler is not None:
            try:
                return handler(msg["data"], received_at, frame)
            except KeyError as exc:
                reason = f"bad {channel!r} message: missing field {exc}"
            except PAYLOAD_ERRORS as exc:
                reason = f"bad {channel!r} message: {type(exc).__name__}: {exc}"
            return [DecodeError(reason, excerpt(frame))]
        if channel == "pong":
            return [_PONG]
        if channel == "subscriptionResponse":
            return [self._ack(msg.get("data"), frame)]
        if channel == "error":
            return [self._error(msg.get("data"), frame)]
        return [DecodeError(f"unhandled channel {channel!r}", excerpt(frame))]

    def _ack(self, data: Any, frame: Message) -> Event:
        op = data.get("method") if type(data) is dict else None
        topic = subscription_topic(data.get("subscription")) if type(data) is dict else None
        if (op != "subscribe" and op != "unsubscribe") or topic is None:
            return DecodeError("subscriptionResponse without a method and subscription", excerpt(frame))
        request_id = self._pending.pop((op, topic), None)
        if request_id is None:
            return _IGNORED  # a request this session never sent: nothing to attribute
        kind, coin = split_topic(topic)
        if kind == TRADES:
            (self._snapshots.add if op == "subscribe" else self._snapshots.discard)(coin)
        return SubscribeAck(request_id, (topic,), op)

    def _error(self, reason: Any, frame: Message) -> Event:
        if type(reason) is not str or not reason:
            reason = f"error: {excerpt(frame)}"
        topic = _quoted_topic(reason)
        ops: tuple[Op, ...] = ("unsubscribe",) if "unsubscribed" in reason else ("subscribe", "unsubscribe")
        for op in ops:
            request_id = self._pending.pop((op, topic), None) if topic is not None else None
            if request_id is not None and topic is not None:
                if reason.startswith("Already"):  # the topic is held (or gone) as asked
                    return SubscribeAck(request_id, (topic,), op)
                return SubscribeRejected(request_id, (topic,), reason)
        return SubscribeRejected(None, (), reason)

    def _trades(self, data: Any, received_at: datetime, frame: Message) -> list[Event]:
        """A record per trade, oldest first as sent; a bad trade is a DecodeError of its own."""
        if type(data) is not list:
            raise TypeError(f"'data' is not a list: {data!r:.50}")
        venue, remember, snapshots = self._venue_id, self._recent.add, self._snapshots
        events: list[Event] = []
        coins: set[str] = set()
        last_ms: int | None = None
        when = received_at
        for trade in data:
            try:
                coin = text(trade, "coin")
                side = _SIDES.get(trade["side"])
                if side is None:
                    raise ValueError(f"'side' is not B or A: {trade['side']!r:.50}")
                price, size = _number(trade["px"], "px"), _number(trade["sz"], "sz")
                ms, tid = trade["time"], trade["tid"]
                if type(ms) is not int or type(tid) is not int:
                    raise TypeError(f"'time' or 'tid' is not an integer: {ms!r:.30}, {tid!r:.30}")
                if ms != last_ms:
                    when, last_ms = _fromtimestamp(ms / 1000, UTC), ms
            except KeyError as exc:
                events.append(DecodeError(f"bad trade: missing field {exc}", excerpt(frame)))
                continue
            except PAYLOAD_ERRORS as exc:
                events.append(DecodeError(f"bad trade: {type(exc).__name__}: {exc}", excerpt(frame)))
                continue
            coins.add(coin)
            if remember(coin, (ms, tid)) or coin not in snapshots:
                events.append(trade_record(venue, coin, price, size, when, received_at, side, str(tid)))
        snapshots.difference_update(coins)
        return events

    def _bbo(self, data: Any, received_at: datetime, frame: Message) -> list[Event]:
        """The best bid and offer into the venue's quote cache, and a quote record (at the
        message's ``time``) for a ``quotes`` subscriber; a side may be null (no quote)."""
        coin = text(data, "coin")
        bid, ask = data["bbo"]
        quotes = self._quotes
        if bid is None or ask is None:
            quotes.forget((coin,))
            return [_IGNORED]
        bid_px, ask_px = _number(bid["px"], "px"), _number(ask["px"], "px")
        bid_sz, ask_sz = _number(bid["sz"], "sz"), _number(ask["sz"], "sz")
        quotes.put(coin, bid_px, ask_px, received_at, bid_sz, ask_sz)
        if coin not in quotes.streamed:
            return [_IGNORED]
        ms = data["time"]
        if type(ms) is not int:
            raise TypeError(f"'time' is not integer milliseconds: {ms!r:.50}")
        return [quote_record(self._venue_id, coin, bid_px, bid_sz, ask_px, ask_sz,
                             datetime.fromtimestamp(ms / 1000, UTC), received_at)]

    def _context(self, data: Any, received_at: datetime, frame: Message) -> list[Event]:
        coin = text(data, "coin")
        ctx = data["ctx"]
        if type(ctx) is not dict:
            raise TypeError(f"'ctx' is not an object: {ctx!r:.50}")
        mark = _number(ctx["markPx"], "markPx")
        mid = ctx.get("midPx")
        price = mark if mid is None else _number(mid, "midPx")
        base = ctx.get("dayBaseVlm")
        if base is None:
            volume = _number(ctx["dayNtlVlm"], "dayNtlVlm") / price
        else:
            volume = _number(base, "dayBaseVlm")
        previous = _number(ctx["prevDayPx"], "prevDayPx")
        change = (mark - previous) / previous * 100 if previous > 0 else None
        bid, ask, bid_size, ask_size = self._quotes.sized(coin, received_at)
        return [MarketData(
            self._venue_id, coin, TICKER, price, volume, received_at, received_at,
            bid=bid, ask=ask, change_24h=change, bid_size=bid_size, ask_size=ask_size,
        )]


class Hyperliquid(QuotedVenue):
    """Hyperliquid's perpetuals (``BTC``) and spot pairs (``PURR/USDC``, ``@107``), public data."""

    venue_id = "hyperliquid"
    default_url = "wss://api.hyperliquid.xyz/ws"
    default_rest_url = "https://api.hyperliquid.xyz"
    #: [rl] 1000 subscriptions and 10 connections per IP: 100 a connection keeps the ten within
    #: the thousand (a ticker takes two); beyond, the venue refuses and the refusals show
    max_streams_per_connection = 100
    max_chars_per_connection: int | None = None
    #: [rl] "2000 messages sent to Hyperliquid per minute across all websocket connections":
    #: 33 in any second never sums past 2000 in a minute; one budget per address
    max_messages_per_second = 33.0
    message_limit_scope: MessageLimitScope = "address"
    #: [rl] "Maximum of 30 new websocket connections per minute"
    connect_limit: ConnectLimit | None = ConnectLimit(30, 60.0)
    #: [hb] the server closes a connection it sent nothing for 60 s; a quiet one is pinged well
    #: before that (and before the stale watchdog's default 30 s), and owes a pong
    ping_interval: float | None = 20.0
    ping_mode: PingMode = "idle"
    pong_timeout: float | None = 10.0
    #: coins are case-sensitive (``kPEPE``)
    uppercase_symbols = False
    #: [ws] "Disconnection from API servers may happen periodically and without announcement":
    #: no lifetime to rotate before
    rotate_after: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.recent = RecentTrades()

    def topics(self, subscription: Subscription) -> list[Topic]:
        coin = subscription.symbol
        if subscription.channel == "trades":
            return [Topic("", topic_name(TRADES, coin))]
        if subscription.channel == "ticker":
            return [Topic("", topic_name(CONTEXT, coin)), Topic("", topic_name(BBO, coin))]
        if subscription.channel == "quotes":
            return [Topic("", topic_name(BBO, coin))]
        raise ValueError(f"unknown channel {subscription.channel!r}")

    def symbol_problem(self, symbol: str) -> str | None:
        return None  # every listed coin streams as itself

    def url(self, route: str, base_url: str) -> str:
        return single_route(self.venue_id, route, base_url)

    def new_session(self) -> Session:
        return HyperliquidSession(self.venue_id, self.quotes, self.recent)

    def instruments_path(self, cursor: str | None = None) -> str:
        return "/info"

    def instruments_body(self, cursor: str | None = None) -> dict[str, str]:
        """The info request of each page: ``meta`` (perpetuals), then ``spotMeta``."""
        if cursor not in (None, SPOT_META):
            raise ValueError(f"no instrument page {cursor!r}")
        return {"type": cursor or "meta"}

    def parse_instruments(self, body: Any) -> InstrumentPage:
        """The names in ``universe``: perpetuals not ``isDelisted`` (then the spot page follows),
        or spot pairs (a ``spotMeta`` answer has ``tokens``; it is the last page)."""
        if not isinstance(body, dict):
            raise ValueError(f"info answer is not a JSON object: {excerpt(repr(body), 100)}")
        universe = body.get("universe")
        if not isinstance(universe, list):
            raise ValueError("info answer has no 'universe' list")
        spot = "tokens" in body
        names: set[str] = set()
        for entry in universe:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ValueError(f"universe entry without a 'name' string: {excerpt(repr(entry), 100)}")
            if spot or entry.get("isDelisted") is not True:
                names.add(entry["name"])
        return InstrumentPage(frozenset(names), None if spot else SPOT_META)


VENUES: dict[str, Callable[[], Venue]] = {"hyperliquid": Hyperliquid}
