"""Decode helpers every adapter needs: one home, so a new exchange does not copy them.

Nothing here knows a venue. Adapters read payload fields inside a ``try`` that catches
:data:`PAYLOAD_ERRORS` and turn the exception into a :class:`~feedd.exchanges.base.DecodeError`.
Times come as epoch milliseconds (:func:`from_ms`) or RFC 3339 strings (:func:`parse_rfc3339`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from feedd.errors import excerpt
from feedd.exchanges.base import DecodeError
from feedd.model import Message

#: What reading a bad payload can raise: a missing key, a wrong type, an unparsable number, or a
#: timestamp out of datetime's range (``fromtimestamp`` may give OverflowError or OSError).
PAYLOAD_ERRORS = (KeyError, TypeError, ValueError, AttributeError, OverflowError, OSError)

# Exchange times are epoch milliseconds. ``fromtimestamp(ms / 1000, UTC)`` measured ~210 ns against
# ~340-450 ns for ``_EPOCH + timedelta(...)``, and it is exact: below 2**32 s (year 2106) the float's
# error is under 0.48 µs and fromtimestamp rounds to the nearest µs, so the millisecond survives
# (also checked on 200k random values). Hot handlers may inline it to save a call per frame.
_fromtimestamp = datetime.fromtimestamp


def load_object(frame: Message) -> dict[str, Any] | DecodeError:
    """The JSON object a frame holds, or the :class:`DecodeError` that says why it holds none."""
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        return DecodeError(f"malformed JSON: {exc}", excerpt(frame))
    if type(msg) is not dict:
        return DecodeError("not a JSON object", excerpt(frame))
    return msg


def single_route(venue_id: str, route: str, base_url: str) -> str:
    """``Venue.url`` of a venue with one endpoint: the configured URL, for route ``""`` only."""
    if route != "":
        raise ValueError(f"{venue_id} has only the default route, not {route!r}")
    return base_url


def from_ms(value: Any) -> datetime:
    """An epoch-milliseconds field (an int, or a decimal string of one) as an aware UTC datetime."""
    if type(value) is str:
        value = int(value)
    elif type(value) is not int:
        raise TypeError(f"timestamp is not integer milliseconds: {value!r}")
    return _fromtimestamp(value / 1000, UTC)


_fromisoformat = datetime.fromisoformat


def parse_rfc3339(value: Any) -> datetime:
    """An RFC 3339 date-time string as an aware UTC datetime, exact to the microsecond.

    Exchanges send up to nine fraction digits (nanoseconds); the digits past the sixth are
    dropped (truncated, not rounded, so a time never moves into the next microsecond). The shape
    is checked here and the digits by ``datetime.fromisoformat`` (C, ~60 ns), which alone would
    also take ISO 8601 forms RFC 3339 forbids, notably a time without an offset, which would
    give a naive datetime. Accepts ``T``, ``t`` or a space between date and time, ``Z``/``z``
    or a ``±HH:MM`` offset (converted to UTC). A leap second (``:60``) is a ValueError.
    """
    if type(value) is not str:
        raise TypeError(f"timestamp is not a string: {value!r:.60}")
    size = len(value)
    if (
        size < 20
        or value[4] != "-"
        or value[7] != "-"
        or value[10] not in "Tt "
        or value[13] != ":"
        or value[16] != ":"
    ):
        raise ValueError(f"not an RFC 3339 date-time: {value!r:.60}")
    last = value[-1]
    if last == "Z" or last == "z":
        zone = size - 1
    elif value[-6] in "+-" and value[-3] == ":":
        zone = size - 6
    else:
        raise ValueError(f"RFC 3339 date-time without a time offset: {value!r:.60}")
    if zone > 19:
        if value[19] != "." or zone == 20:
            raise ValueError(f"not an RFC 3339 date-time: {value!r:.60}")
        if zone > 26:
            dropped = value[26:zone]
            if not (dropped.isdigit() and dropped.isascii()):
                raise ValueError(f"bad fraction of a second in {value!r:.60}")
            value = value[:26] + value[zone:]
    elif zone != 19:
        raise ValueError(f"not an RFC 3339 date-time: {value!r:.60}")
    if last == "z":
        value = value[:-1] + "Z"
    parsed = _fromisoformat(value)
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)


def optional_number(value: Any) -> float | None:
    """A numeric field the venue may leave out, null or ``""`` (its "no value")."""
    if value is None or value == "":
        return None
    return float(value)


def problem(exc: Exception) -> str:
    """What a payload error says, for a DecodeError's reason."""
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    return f"{type(exc).__name__}: {exc}"


def text(data: dict[str, Any], key: str) -> str:
    """A field that must be a string (symbols, ids): a number or null there is a bad payload."""
    value = data[key]
    if type(value) is not str:
        raise TypeError(f"{key!r} is not a string: {value!r}")
    return value


class QuoteCache:
    """Best bid/ask per symbol, from a quote stream, for the ticker records that lack them.

    Shared by the sessions of one venue, because a venue may carry quotes and tickers on
    different connections. A quote is attached only while it is fresh: older than ``max_age``
    (by receive time, so no clock is needed) it is stale — its connection is down or backing off
    — and a ticker carries no bid/ask rather than a wrong one. A session forgets its symbols'
    quotes when its connection is lost.
    """

    def __init__(self, max_age: float = 5.0) -> None:
        self.max_age = timedelta(seconds=max_age)
        self._quotes: dict[str, tuple[float, float, datetime, float | None, float | None]] = {}
        #: symbols whose quotes are records of their own (the ``quotes`` channel); kept by the
        #: venue's supervisor, read by the sessions (a quote stream may also feed only tickers)
        self.streamed: set[str] = set()
        #: symbols with the ``ticker`` channel subscribed, kept likewise: for a venue whose one
        #: wire stream carries both tickers and quotes (Coinbase's ``ticker``), so that a symbol
        #: subscribed to quotes alone gives no ticker records
        self.ticked: set[str] = set()

    def gives_ticker(self, symbol: str) -> bool:
        """Does a stream shared by both channels give ``symbol`` a ticker record? Yes when it is
        subscribed to ``ticker``, or while neither set says anything (a session made alone)."""
        return symbol in self.ticked or not (self.ticked or self.streamed)

    def put(
        self,
        symbol: str,
        bid: float,
        ask: float,
        received_at: datetime,
        bid_size: float | None = None,
        ask_size: float | None = None,
    ) -> None:
        self._quotes[symbol] = (bid, ask, received_at, bid_size, ask_size)

    def get(self, symbol: str, at: datetime) -> tuple[float, float] | tuple[None, None]:
        """The quote of ``symbol`` if it is at most ``max_age`` old at ``at``, else (None, None)."""
        quote = self._quotes.get(symbol)
        if quote is None or at - quote[2] > self.max_age:
            return None, None
        return quote[0], quote[1]

    def sized(
        self, symbol: str, at: datetime
    ) -> tuple[float, float, float | None, float | None] | tuple[None, None, None, None]:
        """Bid, ask and their sizes (None where the stream gave none), fresh as :meth:`get` says."""
        quote = self._quotes.get(symbol)
        if quote is None or at - quote[2] > self.max_age:
            return None, None, None, None
        return quote[0], quote[1], quote[3], quote[4]

    def forget(self, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            self._quotes.pop(symbol, None)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self._quotes

    def __len__(self) -> int:
        return len(self._quotes)


class QuotedVenue:
    """A venue with a quote stream (the ``quotes`` channel, and the bid/ask of tickers that lack
    them): it owns the shared cache, whose ``streamed`` symbols the supervisor keeps, and
    ``quote_max_age`` (set by the supervisor from the config) is that cache's bound."""

    def __init__(self) -> None:
        self.quotes = QuoteCache()

    @property
    def quote_max_age(self) -> float:
        return self.quotes.max_age.total_seconds()

    @quote_max_age.setter
    def quote_max_age(self, seconds: float) -> None:
        self.quotes.max_age = timedelta(seconds=seconds)
