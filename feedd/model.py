"""The one normalized record every venue's trades and tickers become."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import attrs

Kind = Literal["trade", "ticker", "quote"]
Side = Literal["buy", "sell"]

TRADE: Kind = "trade"
TICKER: Kind = "ticker"
QUOTE: Kind = "quote"

#: one whole WebSocket message (text or binary) as the transport hands it over and adapters decode it
Message = str | bytes


@attrs.frozen(slots=True)
class MarketData:
    """One trade, ticker update or best bid/offer (quote), as design.md fixes it.

    A quote's ``price`` is the mid, so every record keeps a positive price; its ``volume`` is 0
    (sizes are ``bid_size``/``ask_size``, in base units like ``volume``). Fields added after the
    first release (``bid_size``, ``ask_size``) come last, so the positional calls on the hot
    path (:func:`trade_record`) stay valid.

    No validators here: records are built on the hot path by adapters, and checked once by
    :mod:`feedd.feed.validate` before they leave the connection that produced them.
    """

    exchange: str
    symbol: str
    kind: Kind
    price: float
    volume: float
    timestamp: datetime
    received_at: datetime
    bid: float | None = None
    ask: float | None = None
    high_24h: float | None = None
    low_24h: float | None = None
    change_24h: float | None = None
    side: Side | None = None
    trade_id: str | None = None
    bid_size: float | None = None
    ask_size: float | None = None
    #: fetched from the venue's REST after a gap in its stream, not received live
    backfilled: bool = False


def trade_record(
    exchange: str,
    symbol: str,
    price: float,
    volume: float,
    timestamp: datetime,
    received_at: datetime,
    side: Side | None,
    trade_id: str | None,
) -> MarketData:
    """A trade, as adapters make one per trade on the hot path: the class is called with
    positional arguments only, which costs a third less than naming ``side`` and ``trade_id``."""
    return MarketData(
        exchange, symbol, TRADE, price, volume, timestamp, received_at, None, None, None, None, None,
        side, trade_id,
    )


def quote_record(
    exchange: str,
    symbol: str,
    bid: float,
    bid_size: float,
    ask: float,
    ask_size: float,
    timestamp: datetime,
    received_at: datetime,
) -> MarketData:
    """A best bid/offer: ``price`` the mid, ``volume`` 0, the sizes in base units."""
    return MarketData(
        exchange, symbol, QUOTE, (bid + ask) / 2, 0.0, timestamp, received_at, bid, ask, None, None,
        None, None, None, bid_size, ask_size,
    )


#: records one connection read in one wakeup; the unit the hub and the sinks move
Batch = list[MarketData]


@attrs.frozen(slots=True)
class Disconnected:
    """A connection carrying ``symbols`` was lost unplanned: their records stop until a
    :class:`Reconnected` for them says data flows again; a consumer should distrust the interval."""

    exchange: str
    symbols: tuple[str, ...]
    at: datetime
    reason: str
    type: Literal["disconnect"] = "disconnect"


@attrs.frozen(slots=True)
class Reconnected:
    """Data flows again for ``symbols`` after a :class:`Disconnected`, ``gap_seconds`` later."""

    exchange: str
    symbols: tuple[str, ...]
    at: datetime
    gap_seconds: float
    type: Literal["reconnect"] = "reconnect"


@attrs.frozen(slots=True)
class Backfilled:
    """What a gap in a symbol's trades came to: ``recovered`` trades fetched from the venue's
    REST (delivered with ``backfilled`` set) and ``lost`` ones it could not give, the missing
    trade ids ``missing`` (first, last) and why any were lost. ``late``: the backfill took longer
    than the hold bound, so live trades went on first and the recovered ones follow them."""

    exchange: str
    symbols: tuple[str, ...]
    at: datetime
    recovered: int
    lost: int
    missing: tuple[int, int]
    reason: str | None = None
    late: bool = False
    type: Literal["backfill"] = "backfill"


#: what the feed tells consumers about itself, in order with the records
FeedEvent = Disconnected | Reconnected | Backfilled

#: what producers put on the hub's ingress: a batch of records, or a feed event between them
Ingress = Batch | FeedEvent
