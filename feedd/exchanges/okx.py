"""OKX v5 public stream, sans-IO: spot, perpetual swaps and expiry futures as one venue (``okx``).

One endpoint (``wss://ws.okx.com:8443/ws/v5/public``) carries every instrument type, named as
OKX writes them: ``BTC-USDT`` (spot), ``BTC-USDT-SWAP`` / ``BTC-USD-SWAP`` (perpetuals),
``BTC-USD-251226`` (expiry futures). Requests are ``{"id", "op", "args": [{"channel",
"instId"}, ...]}``; OKX answers **one reply per arg** (``{"id", "event": "subscribe", "arg",
"connId"}``), so an ack names its topic exactly, and an ``{"id", "event": "error", "code",
"msg"}`` carries no ``arg``: it is tied to its request by ``id``, and to a topic when its ``msg``
names one (``channel:tickers,instId:ETH-XYZ``). Data is ``{"arg": {...}, "data": [...]}``.

Sizes and volumes (OKX docs, WS trades channel and GET ticker): a trade's ``sz`` is base currency
on spot and **contracts** on derivatives; a ticker's ``vol24h`` is base currency on spot and
contracts on derivatives, where ``volCcy24h`` is the base currency. Records carry base units
(docs/contract.md), so a ticker takes ``vol24h`` (spot) or ``volCcy24h`` (derivatives), and a
derivative trade is converted with the instrument's contract value from the instrument list
(``ctVal * ctMult`` base units for a linear contract, that many quote units, divided by the
price, for an inverse one). A derivative trade whose contract value is not known (the list was
never fetched: ``check_symbols = false``, or REST was down) is a :class:`DecodeError` rather
than a record in the wrong unit.

Liveness ([ws-overview]): OKX cuts a connection that received nothing for 30 s; the client sends
the text ``ping`` after N < 30 s of silence and expects the text ``pong``. ``notice`` 64008 ("The
connection will soon be closed for a service upgrade", sent 60 s ahead) is a :class:`Rotate`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, DecimalException
from typing import Any, Literal

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
    Rotate,
    Session,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
    Venue,
)
from feedd.exchanges.fields import (
    PAYLOAD_ERRORS,
    load_object,
    optional_number,
    single_route,
    text,
)
from feedd.model import TICKER, MarketData, Message, quote_record, trade_record

_IGNORED = Ignored()
_PONG = Pong()
_SIDES: dict[str, Literal["buy", "sell"]] = {"buy": "buy", "sell": "sell"}
#: the channels of feedd's two channels
TRADES = "trades"
TICKERS = "tickers"
#: best bid/offer, tick by tick ([ws-public] "bbo-tbt": one level a side, pushed on change)
BBO = "bbo-tbt"
#: the instrument types the venue lists, in the order the instrument walk pages through them
INST_TYPES = ("SPOT", "SWAP", "FUTURES")
#: [ws-subscribe] "the total length of multiple channels cannot exceed 64 KB" (one request);
#: a longer frame is closed with 1009. Requests are kept under it with room for the envelope.
MAX_REQUEST_CHARS = 60_000
#: a topic a refusal's ``msg`` names ("Wrong URL or channel:tickers,instId:ETH-XYZ doesn't exist")
_NAMED = re.compile(r"channel:([\w-]+),\s*instId:([\w.-]+)")
#: notice codes that announce the end of the connection ([ws-notification], error table)
_UPGRADE = "64008"
_fromtimestamp = datetime.fromtimestamp


def topic_name(channel: str, inst_id: str) -> str:
    """feedd's name of one OKX arg: ``"<channel>:<instId>"``."""
    return f"{channel}:{inst_id}"


def _arg(topic: str) -> dict[str, str]:
    channel, _, inst_id = topic.partition(":")
    return {"channel": channel, "instId": inst_id}


def is_derivative(inst_id: str) -> bool:
    """Spot ids are ``BASE-QUOTE``; swaps, futures and options have more parts."""
    return inst_id.count("-") >= 2


def _change(last: str, opened: Any) -> float | None:
    """The 24 h change in percent from the last and the 24 h open price, in decimal (one
    rounding: 9999.99 against 9000 is 11.111, not 11.110999999999997)."""
    if opened is None or opened == "":
        return None
    if type(opened) is not str or type(last) is not str:
        raise TypeError(f"'last' or 'open24h' is not a string: {opened!r:.50}")
    try:
        start = Decimal(opened)
        return float((Decimal(last) - start) / start * 100) if start else None
    except DecimalException:
        raise ValueError(f"'last' or 'open24h' is not a number: {last!r:.30}, {opened!r:.30}") from None


def _ms(value: Any, key: str) -> datetime:
    if type(value) is not str or not value.isdigit():
        raise ValueError(f"{key!r} is not a millisecond timestamp string: {value!r:.50}")
    return _fromtimestamp(int(value) / 1000, UTC)


class Contracts:
    """Base units per contract of each derivative, from the instrument list; shared by the
    venue's sessions. A linear contract is worth ``ctVal * ctMult`` of the base currency; an
    inverse one that much of the quote currency, so its base value depends on the price."""

    def __init__(self) -> None:
        self._sizes: dict[str, tuple[float, bool]] = {}

    def put(self, inst_id: str, value: float, inverse: bool) -> None:
        self._sizes[inst_id] = (value, inverse)

    def base_units(self, inst_id: str, contracts: float, price: float) -> float:
        """``contracts`` of ``inst_id`` at ``price`` in base units; KeyError when unknown."""
        value, inverse = self._sizes[inst_id]
        return contracts * value / price if inverse else contracts * value

    def __contains__(self, inst_id: str) -> bool:
        return inst_id in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)


class OkxSession:
    """Protocol state of one OKX connection: the requests awaiting replies, by ``id``.

    Each request's pending topics are removed as their acks arrive (one per arg). A refusal that
    names one of its topics rejects that topic; the request's other pending topics are asked for
    again (:class:`Retry`: OKX re-acknowledges a topic already held, so asking twice is harmless).
    A refusal of a request of several that names none is retried one topic per request, so the
    next refusal says which.
    """

    def __init__(self, venue_id: str, contracts: Contracts) -> None:
        self._venue_id = venue_id
        self._contracts = contracts
        self._next_id = 1
        self._pending: dict[str, tuple[Op, set[str]]] = {}
        #: topics to be sent one per request (a refusal of their batch did not say which failed)
        self._alone: set[str] = set()

    # ---- outgoing ------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str]) -> list[Message]:
        return self._requests("subscribe", topics)

    def unsubscribe(self, topics: Sequence[str]) -> list[Message]:
        return self._requests("unsubscribe", topics)

    def ping(self) -> Message | None:
        """The text ``ping`` OKX asks for after N < 30 s without a message ([ws-overview])."""
        return "ping"

    def connection_lost(self) -> None:
        """Nothing outlives the connection but the shared contract values."""

    def _requests(self, op: Op, topics: Sequence[str]) -> list[Message]:
        """Requests of as many args as fit in :data:`MAX_REQUEST_CHARS` (few requests: OKX
        allows 480 per connection per hour); topics to be sent alone get one each."""
        batches: list[list[str]] = []
        current: list[str] = []
        size = 0
        for topic in topics:
            if topic in self._alone:
                self._alone.discard(topic)
                batches.append([topic])
                continue
            cost = len(topic) + 28  # {"channel":"","instId":""}, and a comma
            if current and size + cost > MAX_REQUEST_CHARS:
                batches.append(current)
                current, size = [], 0
            current.append(topic)
            size += cost
        if current:
            batches.append(current)
        frames: list[Message] = []
        for batch in batches:
            req_id = str(self._next_id)
            self._next_id += 1
            self._pending[req_id] = (op, set(batch))
            request = {"id": req_id, "op": op, "args": [_arg(topic) for topic in batch]}
            frames.append(orjson.dumps(request).decode())
        return frames

    # ---- incoming ------------------------------------------------------------------------

    def decode(self, frame: Message, received_at: datetime) -> list[Event]:
        """The events of one received frame; any bad input becomes a :class:`DecodeError`.

        Data first (an ``arg`` and ``data``), as it is nearly all the traffic; then the text
        ``pong``; then ``event`` replies and notices.
        """
        if frame == "pong" or frame == b"pong":
            return [_PONG]
        msg = load_object(frame)
        if isinstance(msg, DecodeError):
            return [msg]
        event = msg.get("event")
        if event is None:
            return self._data(msg, received_at, frame)
        try:
            if event == "subscribe" or event == "unsubscribe":
                return self._ack(event, msg, frame)
            if event == "error":
                return self._error(msg, frame)
            if event == "notice":
                code = msg.get("code")
                if code == _UPGRADE:
                    return [Rotate(f"service upgrade ({_UPGRADE}: {msg.get('msg')!s:.100})")]
                return [_IGNORED]
            if event == "channel-conn-count":
                return [_IGNORED]  # [ws-connection-count]: private channels' connection count
        except PAYLOAD_ERRORS as exc:
            return [DecodeError(f"bad {event!r} reply: {type(exc).__name__}: {exc}", excerpt(frame))]
        return [DecodeError(f"unknown event {event!r:.50}", excerpt(frame))]

    def _ack(self, op: Op, msg: dict[str, Any], frame: Message) -> list[Event]:
        arg = msg["arg"]
        if type(arg) is not dict:
            raise TypeError(f"'arg' is not an object: {arg!r:.50}")
        topic = topic_name(text(arg, "channel"), text(arg, "instId"))
        sent = msg.get("id")
        req_id = sent if type(sent) is str and sent else None
        pending = self._pending.get(req_id) if req_id is not None else None
        if pending is None or topic not in pending[1]:
            # no id (older servers), or a request the topic was retried from: the pending
            # request that holds the topic, if any
            holders = (r for r, (o, batch) in self._pending.items() if o == op and topic in batch)
            req_id = next(holders, req_id)
            pending = self._pending.get(req_id) if req_id is not None else None
        if pending is not None and req_id is not None:
            pending[1].discard(topic)
            if not pending[1]:
                del self._pending[req_id]
        return [SubscribeAck(req_id, (topic,), op)]

    def _error(self, msg: dict[str, Any], frame: Message) -> list[Event]:
        code, detail = msg.get("code"), msg.get("msg")
        reason = f"{code}: {detail}" if code is not None else str(detail)
        if not detail and code is None:
            reason = f"refused: {excerpt(frame)}"
        named = {topic_name(c, i) for c, i in _NAMED.findall(detail)} if type(detail) is str else set()
        req_id = msg.get("id")
        found = self._pending.pop(req_id, None) if type(req_id) is str else None
        if found is None and named:
            # no id, or not ours: the request whose topic the refusal names
            req_id = next((r for r, (_, batch) in self._pending.items() if named & batch), None)
            found = self._pending.pop(req_id) if req_id is not None else None
        if found is None:
            return [SubscribeRejected(req_id if type(req_id) is str and req_id else None, (), reason)]
        op, batch = found
        refused = tuple(sorted(named & batch))
        if not refused:
            if len(batch) == 1:
                return [SubscribeRejected(req_id, tuple(batch), reason)]
            self._alone.update(batch)
            return [Retry(op, tuple(sorted(batch)), reason)]
        events: list[Event] = [SubscribeRejected(req_id, refused, reason)]
        rest = tuple(sorted(batch - named))
        if rest:
            events.append(Retry(op, rest, reason))
        return events

    def _data(self, msg: dict[str, Any], received_at: datetime, frame: Message) -> list[Event]:
        arg = msg.get("arg")
        if type(arg) is not dict:
            return [DecodeError("neither an event nor a push (no 'arg' object)", excerpt(frame))]
        channel = arg.get("channel")
        try:
            symbol = text(arg, "instId")
            data = msg["data"]
            if type(data) is not list:
                raise TypeError(f"'data' is not a list: {data!r:.50}")
            if channel == TRADES:
                return self._trades(data, symbol, received_at, frame)
            if channel == TICKERS:
                return [self._ticker(row, symbol, received_at) for row in data]
            if channel == BBO:
                return [self._bbo(row, symbol, received_at) for row in data]
        except KeyError as exc:
            return [DecodeError(f"bad {channel!r:.30} push: missing field {exc}", excerpt(frame))]
        except PAYLOAD_ERRORS as exc:
            return [DecodeError(f"bad {channel!r:.30} push: {type(exc).__name__}: {exc}", excerpt(frame))]
        return [DecodeError(f"unhandled channel {channel!r:.50}", excerpt(frame))]

    def _trades(self, data: list[Any], symbol: str, received_at: datetime, frame: Message) -> list[Event]:
        """One record per row; a bad row is a DecodeError of its own. ``tradeId`` is the last
        trade of an aggregation of ``count`` (OKX: one message per taker order and price)."""
        venue = self._venue_id
        contracts = self._contracts if is_derivative(symbol) else None
        events: list[Event] = []
        append = events.append
        for row in data:
            try:
                side = _SIDES.get(row["side"])
                if side is None:
                    raise ValueError(f"'side' is not buy or sell: {row['side']!r:.50}")
                price = float(row["px"])
                size = float(row["sz"])
                if contracts is not None:
                    if symbol not in contracts:
                        raise LookupError(f"contract value of {symbol} unknown (the instrument list "
                                          "was not loaded): its size in contracts is not base units")
                    size = contracts.base_units(symbol, size, price)
                append(trade_record(venue, symbol, price, size, _ms(row["ts"], "ts"), received_at,
                                    side, text(row, "tradeId")))
            except KeyError as exc:
                append(DecodeError(f"bad trade of {symbol}: missing field {exc}", excerpt(frame)))
            except (*PAYLOAD_ERRORS, LookupError, ZeroDivisionError) as exc:
                append(DecodeError(f"bad trade of {symbol}: {type(exc).__name__}: {exc}", excerpt(frame)))
        return events

    def _size(self, symbol: str, size: float, price: float) -> float:
        """A size in base units (a derivative's contracts converted; LookupError if unknown)."""
        if not is_derivative(symbol):
            return size
        if symbol not in self._contracts:
            raise LookupError(f"contract value of {symbol} unknown (the instrument list was not "
                              "loaded): its size in contracts is not base units")
        return self._contracts.base_units(symbol, size, price)

    def _bbo(self, row: Any, symbol: str, received_at: datetime) -> Event:
        """A quote from one ``bbo-tbt`` row (``bids``/``asks`` of ``[px, sz, "0", orders]``)."""
        if type(row) is not dict:
            raise TypeError(f"a bbo-tbt row is not an object: {row!r:.50}")
        bids, asks = row["bids"], row["asks"]
        if type(bids) is not list or type(asks) is not list:
            raise TypeError("'bids' or 'asks' is not a list")
        if not bids or not asks:
            return _IGNORED  # one side empty: no best bid/offer
        bid, ask = float(bids[0][0]), float(asks[0][0])
        try:
            bid_size = self._size(symbol, float(bids[0][1]), bid)
            ask_size = self._size(symbol, float(asks[0][1]), ask)
        except (LookupError, ZeroDivisionError) as exc:
            raise ValueError(str(exc)) from None
        return quote_record(self._venue_id, symbol, bid, bid_size, ask, ask_size, _ms(row["ts"], "ts"),
                            received_at)

    def _ticker(self, row: Any, symbol: str, received_at: datetime) -> MarketData:
        if type(row) is not dict:
            raise TypeError(f"a ticker is not an object: {row!r:.50}")
        last_text = row["last"]
        last = float(last_text)
        inst_type = row.get("instType")
        derivative = inst_type in ("SWAP", "FUTURES") if inst_type else is_derivative(symbol)
        bid, ask = optional_number(row.get("bidPx")), optional_number(row.get("askPx"))
        return MarketData(
            self._venue_id,
            symbol,
            TICKER,
            last,
            float(row["volCcy24h" if derivative else "vol24h"]),
            _ms(row["ts"], "ts"),
            received_at,
            bid=bid,
            ask=ask,
            high_24h=optional_number(row.get("high24h")),
            low_24h=optional_number(row.get("low24h")),
            change_24h=_change(last_text, row.get("open24h")),
            bid_size=self._ticker_size(symbol, row.get("bidSz"), bid),
            ask_size=self._ticker_size(symbol, row.get("askSz"), ask),
        )

    def _ticker_size(self, symbol: str, size: Any, price: float | None) -> float | None:
        """A ticker's best size in base units, None where OKX gives none (or the contract value
        is not known: a ticker still streams without it)."""
        value = optional_number(size)
        if value is None or not price:
            return None
        try:
            return self._size(symbol, value, price)
        except LookupError:
            return None


class Okx:
    """The ``okx`` venue: OKX's public v5 stream for spot, swaps and futures."""

    venue_id = "okx"
    default_url = "wss://ws.okx.com:8443/ws/v5/public"
    default_rest_url = "https://www.okx.com"
    #: no limit on a public connection's channels is documented (close codes 4008/4009 say one
    #: exists [unverified figure]); 240 bounds what one connection resubscribes after a reconnect,
    #: in one request, out of the 480 requests an hour it may make
    max_streams_per_connection = 240
    max_chars_per_connection: int | None = None
    #: [ws-overview] 480 subscribe/unsubscribe/login requests per connection per hour, and no
    #: per-second figure: one request a second (the pacer keeps one of two slots for pings),
    #: live changes batched into each, keeps short bursts of changes cheap
    max_messages_per_second = 2.0
    message_limit_scope: MessageLimitScope = "connection"
    #: [ws-overview] "Connection limit: 3 requests per second (based on IP)"
    connect_limit: ConnectLimit | None = ConnectLimit(3, 1.0)
    #: [ws-overview] "send the String 'ping'" after N < 30 s without a message; "Expect a 'pong'
    #: ... If the response message is not received within N seconds, ... reconnect"
    ping_interval: float | None = 20.0
    ping_mode: PingMode = "idle"
    pong_timeout: float | None = 10.0
    uppercase_symbols = True
    #: no connection lifetime is documented; 64008 notices rotate
    rotate_after: float | None = None
    instruments_base = "/api/v5/public/instruments"

    def __init__(self) -> None:
        #: unused: OKX tickers carry their own best bid/ask
        self.quote_max_age = 5.0
        self.contracts = Contracts()
        #: the instType of the instrument page last asked for (see parse_instruments)
        self._page = INST_TYPES[0]

    def topics(self, subscription: Subscription) -> list[Topic]:
        if subscription.channel == "trades":
            return [Topic("", topic_name(TRADES, subscription.symbol))]
        if subscription.channel == "ticker":
            return [Topic("", topic_name(TICKERS, subscription.symbol))]
        if subscription.channel == "quotes":
            return [Topic("", topic_name(BBO, subscription.symbol))]
        raise ValueError(f"unknown channel {subscription.channel!r}")

    def url(self, route: str, base_url: str) -> str:
        return single_route(self.venue_id, route, base_url)

    def symbol_problem(self, symbol: str) -> str | None:
        """Options (``BTC-USD-260828-45000-C``) are not part of this venue: their instrument
        list needs an instrument family per underlying, and their sizes another conversion."""
        if symbol.count("-") >= 4:
            return f"{symbol} looks like an OKX option: the okx venue carries spot, swaps and futures"
        return None

    def new_session(self) -> Session:
        return OkxSession(self.venue_id, self.contracts)

    def instruments_path(self, cursor: str | None = None) -> str:
        """One instrument type's list per page: SPOT, then the cursors ``SWAP`` and ``FUTURES``
        ([get-instruments]: ``instType`` is required; each type comes whole, unpaginated)."""
        inst_type = INST_TYPES[0] if cursor is None else cursor
        if inst_type not in INST_TYPES:
            raise ValueError(f"unknown instrument page {cursor!r} (one of {', '.join(INST_TYPES)})")
        self._page = inst_type
        return f"{self.instruments_base}?instType={inst_type}"

    def parse_instruments(self, body: Any) -> InstrumentPage:
        """The ``live`` instruments of one type, their contract values kept; the next type is
        the cursor. A derivative without a usable contract value is listed but its trades will
        not decode (a DecodeError says why)."""
        if not isinstance(body, dict):
            raise ValueError(f"instruments is not a JSON object: {excerpt(repr(body), 100)}")
        if body.get("code") != "0":
            raise ValueError(f"instruments answered code {body.get('code')!r}: {body.get('msg')!r}")
        entries = body.get("data")
        if not isinstance(entries, list):
            raise ValueError("instruments has no 'data' list")
        live: set[str] = set()
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("instId"), str):
                raise ValueError(f"instruments entry without an 'instId' string: {excerpt(repr(entry), 100)}")
            if entry.get("state") != "live":
                continue
            inst_id = entry["instId"]
            live.add(inst_id)
            if is_derivative(inst_id):
                self._contract(entry)
        index = INST_TYPES.index(self._page)
        cursor = INST_TYPES[index + 1] if index + 1 < len(INST_TYPES) else None
        return InstrumentPage(frozenset(live), cursor)

    # ---- the latest trades, to recover a break by time (feedd.feed.backfill) ----------------

    #: [get-trades] ``GET /api/v5/market/trades``: "Maximum is 500; The default is 100" [unverified]
    recent_page = 500
    #: [get-trades] 100 requests per 2 s per IP [unverified]: feedd asks 5 a second
    recent_rate = 5.0

    def recent_path(self, symbol: str, limit: int) -> str:
        """``/api/v5/market/trades``: the instrument's latest ``limit`` trades."""
        return f"/api/v5/market/trades?instId={symbol}&limit={limit}"

    def parse_recent(self, symbol: str, body: Any, received_at: datetime) -> list[MarketData]:
        """Trades of a ``market/trades`` answer (``data`` of ``tradeId``, ``px``, ``sz``,
        ``side``, ``ts``, newest first on the wire), oldest first; derivative sizes (contracts)
        made base units as on the stream."""
        if not isinstance(body, dict):
            raise ValueError(f"market/trades is not a JSON object: {excerpt(repr(body), 100)}")
        if body.get("code") != "0":
            raise ValueError(f"market/trades answered code {body.get('code')!r}: {body.get('msg')!r}")
        entries = body.get("data")
        if not isinstance(entries, list):
            raise ValueError("market/trades has no 'data' list")
        contracts = self.contracts if is_derivative(symbol) else None
        out: list[MarketData] = []
        for entry in reversed(entries):
            try:
                side = _SIDES.get(entry["side"])
                if side is None:
                    raise ValueError(f"'side' is not buy or sell: {entry['side']!r:.50}")
                price, size = float(entry["px"]), float(entry["sz"])
                if contracts is not None:
                    if symbol not in contracts:
                        raise LookupError(f"contract value of {symbol} unknown")
                    size = contracts.base_units(symbol, size, price)
                out.append(trade_record(self.venue_id, symbol, price, size, _ms(entry["ts"], "ts"),
                                        received_at, side, text(entry, "tradeId")))
            except (*PAYLOAD_ERRORS, LookupError, ZeroDivisionError) as exc:
                raise ValueError(f"bad trade in market/trades: {type(exc).__name__}: {exc}: "
                                 f"{excerpt(repr(entry), 100)}") from None
        return out

    def _contract(self, entry: dict[str, Any]) -> None:
        try:
            value = float(entry["ctVal"]) * float(entry.get("ctMult") or 1)
        except (KeyError, TypeError, ValueError):
            return
        if value > 0:
            self.contracts.put(entry["instId"], value, entry.get("ctType") == "inverse")


VENUES: dict[str, Callable[[], Venue]] = {"okx": Okx}
