"""The sans-IO contract between one venue's protocol and the generic connection runner.

An adapter owns no socket, clock or task (as h11 and wsproto do): the runner asks it for the
frames to send and hands it every frame it receives, and the adapter answers with events.
Adding a venue means writing one :class:`Venue` and its :class:`Session`; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

import attrs

from feedd.model import MarketData

Channel = Literal["trades", "ticker"]
CHANNELS: tuple[Channel, ...] = ("trades", "ticker")

Frame = str | bytes


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
    op: Literal["subscribe", "unsubscribe"] = "subscribe"


@attrs.frozen(slots=True)
class SubscribeError:
    """The venue refused a request; ``topics`` is empty when the reply cannot be attributed."""

    request_id: str | int | None
    topics: tuple[str, ...]
    reason: str


@attrs.frozen(slots=True)
class Pong:
    """The venue answered an application-level ping."""


@attrs.frozen(slots=True)
class Heartbeat:
    """A liveness message the venue sends by itself; proves the feed is alive, carries no data."""


@attrs.frozen(slots=True)
class Reconnect:
    """The venue announced the connection will end (e.g. Binance ``serverShutdown``)."""

    reason: str


@attrs.frozen(slots=True)
class Ignored:
    """A well-formed frame the adapter knows and deliberately drops (e.g. an absorbed quote)."""


@attrs.frozen(slots=True)
class DecodeError:
    """A frame that could not be understood: malformed JSON, an unknown envelope, a bad field."""

    reason: str
    frame: str


Event = MarketData | SubscribeAck | SubscribeError | Pong | Heartbeat | Reconnect | Ignored | DecodeError


def excerpt(frame: Frame, limit: int = 200) -> str:
    """A bounded, printable slice of a frame for error messages and logs."""
    text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
    return text if len(text) <= limit else text[:limit] + "..."


class Session(Protocol):
    """Protocol state of one WebSocket connection (request ids, pending acks, merged quotes).

    A new session is made for every (re)connection; nothing in it survives a reconnect.
    """

    def subscribe(self, topics: Sequence[str]) -> list[Frame]:
        """Frames that subscribe ``topics``, batched to the venue's per-request limit."""
        ...

    def unsubscribe(self, topics: Sequence[str]) -> list[Frame]:
        """Frames that unsubscribe ``topics``."""
        ...

    def ping(self) -> Frame | None:
        """A frame whose reply proves the feed alive, sent when it has been idle; None: none."""
        ...

    def decode(self, frame: Frame, received_at: datetime) -> Iterable[Event]:
        """Every event one received frame holds; never raises on bad input (gives DecodeError)."""
        ...


class Venue(Protocol):
    """One venue id's protocol facts, and the factory of its per-connection sessions."""

    venue_id: str
    default_url: str
    default_rest_url: str
    #: streams one connection may carry
    max_streams_per_connection: int
    #: messages per second the venue allows a client to send on one connection
    max_messages_per_second: float
    #: idle seconds after which the runner sends :meth:`Session.ping` (None: never)
    ping_interval: float | None
    #: is the venue's symbol spelling case-insensitive (so feedd upper-cases it)
    uppercase_symbols: bool

    def topics(self, subscription: Subscription) -> list[Topic]:
        """The wire streams that carry one subscription (may span routes)."""
        ...

    def url(self, route: str, base_url: str) -> str:
        """The WebSocket URL of ``route``, given the configured (or default) endpoint."""
        ...

    def new_session(self) -> Session:
        """Fresh protocol state for one connection."""
        ...

    def instruments_path(self) -> str:
        """Path under the REST base URL that lists the venue's instruments."""
        ...

    def parse_instruments(self, body: Any) -> frozenset[str]:
        """The tradable symbols in a decoded instruments response."""
        ...
