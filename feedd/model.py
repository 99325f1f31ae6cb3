"""The one normalized record every venue's trades and tickers become."""

from __future__ import annotations

from collections.abc import Callable
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
    first release (``bid_size``, ``ask_size``) come last, so positional calls stay valid; the hot
    path builds trades and quotes with :func:`trade_record` and :func:`quote_record`, which fill
    the slots directly.

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


def _builder(name: str, params: tuple[str, ...], constants: dict[str, object]) -> Callable[..., MarketData]:
    """A constructor of :class:`MarketData` taking ``params`` positionally, the ``constants``
    and every other field's default fixed, that fills the slots directly.

    attrs' ``__init__`` of a frozen class sets each of the 17 fields through
    ``object.__setattr__``; writing them through the slots' own descriptors makes the same
    object (equal, hashing alike: nothing validates or converts there either) in ~15 % less
    time (0.80 -> 0.70 µs, ``bench/stages.py``), and adapters build one per trade. Generated
    from ``attrs.fields``, so a field added to the class is filled (with its default) without
    a change here.
    """
    namespace: dict[str, object] = {"_new": object.__new__, "_cls": MarketData}
    lines = [f"def {name}({', '.join(params)}):", "    r = _new(_cls)"]
    for field in attrs.fields(MarketData):
        namespace[f"_set_{field.name}"] = getattr(MarketData, field.name).__set__
        if field.name in params:
            value = field.name
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            raise TypeError(f"{field.name}: a factory default is not supported here")
        else:
            namespace[f"_value_{field.name}"] = constants.get(field.name, field.default)
            value = f"_value_{field.name}"
        lines.append(f"    _set_{field.name}(r, {value})")
    lines.append("    return r")
    exec("\n".join(lines), namespace)  # the source is built above from the class's own fields
    build: Callable[..., MarketData] = namespace[name]  # type: ignore[assignment]
    return build


#: a trade, as adapters make one per trade on the hot path (see :func:`_builder`)
trade_record: Callable[
    [str, str, float, float, datetime, datetime, Side | None, str | None], MarketData
] = _builder(
    "trade_record",
    ("exchange", "symbol", "price", "volume", "timestamp", "received_at", "side", "trade_id"),
    {"kind": TRADE},
)
_quote = _builder(
    "quote_record",
    ("exchange", "symbol", "price", "timestamp", "received_at", "bid", "bid_size", "ask", "ask_size"),
    {"kind": QUOTE, "volume": 0.0},
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
    return _quote(exchange, symbol, (bid + ask) / 2, timestamp, received_at, bid, bid_size, ask, ask_size)


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
