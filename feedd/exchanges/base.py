"""The sans-IO contract between one venue's protocol and the generic connection runner.

An adapter owns no socket, clock or task (as h11 and wsproto do): the runner asks it for the
frames to send and hands it every frame it receives, and the adapter answers with events.
Adding a venue means writing one :class:`Venue` and its :class:`Session` in one module of this
package; nothing else changes. Helpers every adapter needs (payload errors, millisecond
timestamps, a quote cache with an age bound) live in :mod:`feedd.exchanges.fields`.

Vocabulary: a *connection* is one shard the runner keeps open for ever; an *attempt* is one
connect-to-close of it (the runner's word); a *session* is the adapter's protocol state of one
attempt (request ids, pending acks, ticker state), made fresh for every attempt.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from feedd.model import MarketData, Message

Channel = Literal["trades", "ticker", "quotes"]
#: the channels a venue streams when its config names none: quotes are opt-in (heavy streams)
CHANNELS: tuple[Channel, ...] = ("trades", "ticker")
#: every channel there is
ALL_CHANNELS: tuple[Channel, ...] = ("trades", "ticker", "quotes")
#: what a subscribe/unsubscribe request does
Op = Literal["subscribe", "unsubscribe"]
#: when the runner sends :meth:`Session.ping`: only after ``ping_interval`` without a frame
#: (a probe of an idle feed), or every ``ping_interval`` whatever arrives (a venue's heartbeat rule)
PingMode = Literal["idle", "always"]
#: what :attr:`Venue.max_messages_per_second` counts: the sends of one connection, or of every
#: connection from one address (an IP; feedd shares one limiter per host)
MessageLimitScope = Literal["connection", "address"]


@attrs.frozen(slots=True)
class ConnectLimit:
    """At most ``attempts`` connection attempts (handshakes, refused ones included) in any
    ``window`` seconds, counted by the venue per client address and host."""

    attempts: int = attrs.field(validator=attrs.validators.ge(1))
    window: float = attrs.field(validator=attrs.validators.gt(0.0))


@attrs.frozen(slots=True)
class Subscription:
    """What a user asked for: one symbol's one channel on one venue."""

    symbol: str
    channel: Channel


@attrs.frozen(slots=True)
class Topic:
    """One stream on the wire, and the connection route that carries it.

    ``route`` names the endpoint family within the venue (``""`` for the venue's only one;
    Binance USD-M has ``"market"`` and ``"public"``); topics of different routes never share
    a connection.
    """

    route: str
    name: str


# ---- events a Session.decode hands out, besides MarketData --------------------------------


@attrs.frozen(slots=True)
class SubscribeAck:
    """The venue accepted a subscribe or unsubscribe request."""

    request_id: str | int | None
    topics: tuple[str, ...]
    op: Op = "subscribe"


@attrs.frozen(slots=True)
class SubscribeRejected:
    """The venue refused a request, or some topics of it.

    ``topics`` names exactly the refused topics when the reply says which (by request id or by
    naming them); the runner records each as a subscription error while the rest of the batch
    streams on. A reply that names neither (Binance's id-less ``code``/``msg`` errors) must
    still be reported, with ``topics=()``: the runner logs it as a venue error tied to no
    request, rather than guessing which request it belongs to, and shows it in the status until
    the venue next acknowledges a request.
    """

    request_id: str | int | None
    topics: tuple[str, ...]
    reason: str


@attrs.frozen(slots=True)
class Retry:
    """Request ``topics`` again: the venue refused the request they were in for another's sake.

    A venue that fails a whole request for one bad topic (Bybit) answers with a
    :class:`SubscribeRejected` naming the bad topic and this event for the rest of the batch. The
    runner requests again, through :meth:`Session.subscribe` or :meth:`Session.unsubscribe`,
    only the topics whose wish has not changed meanwhile: for a subscribe, the topics it still
    carries; for an unsubscribe, the topics it no longer does.
    """

    op: Op
    topics: tuple[str, ...]
    reason: str


@attrs.frozen(slots=True)
class Pong:
    """The venue answered :meth:`Session.ping`; ends the runner's wait for it (``pong_timeout``)."""


@attrs.frozen(slots=True)
class Heartbeat:
    """A liveness message the venue sends by itself; proves the feed is alive, carries no data."""


@attrs.frozen(slots=True)
class Rotate:
    """The venue announced the connection will end (e.g. Binance ``serverShutdown``): the
    runner replaces it, make-before-break, before the venue cuts it."""

    reason: str


@attrs.frozen(slots=True)
class SequenceGap:
    """The venue's message sequence skipped: ``missed`` messages were lost on this connection."""

    missed: int
    detail: str


@attrs.frozen(slots=True)
class Ignored:
    """A well-formed frame the adapter knows and deliberately drops (e.g. an absorbed quote)."""


@attrs.frozen(slots=True)
class DecodeError:
    """A frame that could not be understood: malformed JSON, an unknown envelope, a bad field."""

    reason: str
    frame: str


Event = (
    MarketData | SubscribeAck | SubscribeRejected | Retry | Pong | Heartbeat | Rotate | SequenceGap
    | Ignored | DecodeError
)


@attrs.frozen(slots=True)
class InstrumentPage:
    """One page of a venue's instrument list; ``cursor`` asks for the next page (None: the last)."""

    symbols: frozenset[str]
    cursor: str | None = None


def topic_chars(name: str) -> int:
    """What one topic adds to the compact JSON text of a topic list: its quoted name (escapes
    included) and one separator, a comma or the closing bracket."""
    return len(json.dumps(name, ensure_ascii=False)) + 1


def topic_list_chars(names: Iterable[str]) -> int:
    """The length in characters of ``names`` as a compact JSON array (``["a","b"]`` is 9): what
    :attr:`Venue.max_chars_per_connection` bounds."""
    return max(2, 1 + sum(map(topic_chars, names)))


class Session(Protocol):
    """Protocol state of one connection attempt (request ids, pending acks, ticker state).

    A new session is made for every attempt; nothing in it survives a reconnect, except what the
    venue deliberately shares between its sessions (e.g. a quote cache).
    """

    def subscribe(self, topics: Sequence[str]) -> list[Message]:
        """Frames that subscribe ``topics``, batched to the venue's per-request limit."""
        ...

    def unsubscribe(self, topics: Sequence[str]) -> list[Message]:
        """Frames that unsubscribe ``topics``."""
        ...

    def ping(self) -> Message | None:
        """The venue's application ping (see :attr:`Venue.ping_mode`); None: none to send."""
        ...

    def decode(self, frame: Message, received_at: datetime) -> Iterable[Event]:
        """Every event one received frame holds; never raises on bad input (gives DecodeError)."""
        ...

    def connection_lost(self) -> None:
        """The attempt ended: forget what only this connection kept current (e.g. its quotes)."""
        ...


class Venue(Protocol):
    """One venue id's protocol facts, and the factory of its per-connection sessions."""

    venue_id: str
    default_url: str
    default_rest_url: str
    #: streams one connection may carry
    max_streams_per_connection: int
    #: the most characters one connection's topics may take, counted as their list in compact
    #: JSON (:func:`topic_list_chars`), for a venue that bounds a connection's subscriptions by
    #: length (None: no such limit, the count alone applies)
    max_chars_per_connection: int | None
    #: messages per second the venue allows a client to send, counted as :attr:`message_limit_scope`
    #: says
    max_messages_per_second: float
    #: ``"connection"`` (Binance: 5 per second per connection, pongs included): each connection
    #: paces itself; ``"address"`` (Coinbase: 8 per second per IP): the venue's connections to
    #: one host share one budget
    message_limit_scope: MessageLimitScope
    #: the venue's documented limit on connection attempts from one address to one host; every
    #: venue on that host with the same limit shares one budget (:mod:`feedd.feed.gates`). None:
    #: none documented, attempts are not paced (a refusal's Retry-After still holds)
    connect_limit: ConnectLimit | None
    #: seconds between :meth:`Session.ping` calls, as :attr:`ping_mode` says (None: never)
    ping_interval: float | None
    ping_mode: PingMode
    #: a ping not answered by a :class:`Pong` within this many seconds ends the attempt
    #: (None: replies are not awaited; the stale watchdog still applies)
    pong_timeout: float | None
    #: a best bid/ask older than this (seconds, by receive time) is not attached to a ticker;
    #: set by the supervisor from ``[exchanges.<venue>] quote_max_age`` before any session exists
    quote_max_age: float
    #: is the venue's symbol spelling case-insensitive (so feedd upper-cases it)
    uppercase_symbols: bool
    #: seconds after which a connection is replaced make-before-break, before the venue's own
    #: documented cut (None: it states no lifetime; only its shutdown notices rotate)
    rotate_after: float | None

    def topics(self, subscription: Subscription) -> list[Topic]:
        """The wire streams that carry one subscription (may span routes)."""
        ...

    def symbol_problem(self, symbol: str) -> str | None:
        """Why the venue's streams cannot carry ``symbol`` as itself (one line, saying what to do
        instead), whatever its instrument list says; None when they can. Checked at config load
        and on every subscribe, with or without ``check_symbols``."""
        ...

    def url(self, route: str, base_url: str) -> str:
        """The WebSocket URL of ``route``, given the configured (or default) endpoint."""
        ...

    def new_session(self) -> Session:
        """Fresh protocol state for one connection."""
        ...

    def instruments_path(self, cursor: str | None = None) -> str:
        """Path (and query) under the REST base URL of the instrument list's page at ``cursor``."""
        ...

    def parse_instruments(self, body: Any) -> InstrumentPage:
        """The tradable symbols in one decoded instruments response, and the next page's cursor.

        Raises ValueError (naming what is wrong) for a body that is not the expected shape.
        """
        ...


@runtime_checkable
class TradeHistory(Protocol):
    """A venue whose trade ids number each symbol's trades one by one (Binance ``t`` and
    ``a``), and whose public REST gives the trades from an id on: a jump in the ids names
    exactly the missing trades, and :mod:`feedd.feed.backfill` fetches them. Optional: a venue
    without it streams as before, its gaps unrecovered."""

    #: trades one history request answers at most
    history_page: int
    #: history requests per second feedd allows itself, well inside the venue's weight budget
    history_rate: float

    def history_path(self, symbol: str, from_id: int, limit: int) -> str:
        """Path and query under the REST base URL of the trades from ``from_id`` on, oldest
        first, at most ``limit``."""
        ...

    def parse_history(self, symbol: str, body: Any, received_at: datetime) -> list[MarketData]:
        """The trade records of one history response, in id order, with ``received_at`` as
        their receive time; ValueError (naming what is wrong) for a body of another shape."""
        ...


@runtime_checkable
class RecentTrades(Protocol):
    """A venue whose trade ids are unique but not consecutive (Bybit, OKX, Coinbase Advanced
    Trade), and whose public REST gives a symbol's latest trades: a break in a connection (a
    reconnect, or a :class:`SequenceGap` of the venue's message sequence) is recovered by time,
    the REST's trades between the last one delivered before the break and the ones after it
    (:mod:`feedd.feed.backfill`). Optional, like :class:`TradeHistory`."""

    #: trades one latest-trades request answers at most
    recent_page: int
    #: latest-trades requests per second feedd allows itself, well inside the venue's budget
    recent_rate: float

    def recent_path(self, symbol: str, limit: int) -> str:
        """Path and query under the REST base URL of the symbol's latest ``limit`` trades."""
        ...

    def parse_recent(self, symbol: str, body: Any, received_at: datetime) -> list[MarketData]:
        """The trade records of one latest-trades response in exchange order, oldest first,
        with ``received_at`` as their receive time; ValueError for a body of another shape."""
        ...


@runtime_checkable
class PostedInstruments(Protocol):
    """A venue whose instrument list is asked for with a POST of a JSON body at
    :meth:`Venue.instruments_path` rather than a GET (Hyperliquid's ``info`` endpoint): the
    instrument fetch POSTs this body for the page at ``cursor``."""

    def instruments_body(self, cursor: str | None = None) -> Any:
        """The JSON body asking for the instrument list's page at ``cursor``."""
        ...
