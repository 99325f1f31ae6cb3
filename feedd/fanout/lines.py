"""The subscriber line protocol, sans-IO: what a subscriber of the Unix socket sends and reads.

One JSON object per line, both ways. The subscriber sends filter lines
``{"exchange": [...], "symbol": [...], "kind": [...]}`` (each key optional; :func:`parse_filter`
reads one, :class:`ClientFilter` applies it); the daemon sends records (:func:`feedd.codec.encode_record`,
read back by :func:`decode_record`) and event lines: ``{"type": "gap", "dropped": N}``
(:func:`gap_line`), ``{"type": "error", "error": "..."}`` (:func:`error_line`), and a venue's
``disconnect`` / ``reconnect`` (:func:`notice_line`, narrowed to what the filter asked for).

Used by the publisher (:mod:`feedd.fanout.unix`), the client library (:mod:`feedd.client`) and
``feedd tail`` (:mod:`feedd.cli.tail`, :mod:`feedd.cli.tail_nats`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs
import orjson

from feedd.codec import encode_event, encode_line
from feedd.errors import FilterError
from feedd.model import FeedEvent, MarketData

#: what a filter's ``kind`` accepts -> the record kind (the config calls the channel "trades")
KINDS = {"trade": "trade", "trades": "trade", "ticker": "ticker", "quote": "quote", "quotes": "quote"}
_FILTER_KEYS = ("exchange", "symbol", "kind")


@attrs.frozen(slots=True)
class ClientFilter:
    """Which records one subscriber wants; ``None`` for a field means any value."""

    exchanges: frozenset[str] | None = None
    symbols: frozenset[str] | None = None
    kinds: frozenset[str] | None = None

    @property
    def is_everything(self) -> bool:
        return self.exchanges is None and self.symbols is None and self.kinds is None

    def matches(self, record: MarketData) -> bool:
        return (
            (self.exchanges is None or record.exchange in self.exchanges)
            and (self.symbols is None or record.symbol.upper() in self.symbols)
            and (self.kinds is None or record.kind in self.kinds)
        )


def notice_line(event: FeedEvent, flt: ClientFilter | None) -> bytes | None:
    """``event``'s line for a subscriber with filter ``flt``: only the symbols it asked for
    (whatever kinds), or None when the event is about none of them."""
    if flt is None:
        return encode_event(event)
    if flt.exchanges is not None and event.exchange not in flt.exchanges:
        return None
    symbols = event.symbols
    if flt.symbols is not None:
        symbols = tuple(s for s in symbols if s.upper() in flt.symbols)
        if not symbols:
            return None
    return encode_event(event, symbols)


def parse_filter(line: bytes) -> ClientFilter:
    """The filter a subscriber's first line asks for; :class:`FilterError` says what is wrong."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise FilterError(f"filter line is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FilterError("filter must be a JSON object with keys exchange, symbol, kind")
    unknown = sorted(set(obj) - set(_FILTER_KEYS))
    if unknown:
        raise FilterError(f"unknown filter key(s) {unknown}; allowed: exchange, symbol, kind")

    def values(key: str) -> list[str] | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise FilterError(f"filter {key!r} must be a non-empty list of strings")
        return value

    exchanges, symbols, kinds = values("exchange"), values("symbol"), values("kind")
    if kinds is not None:
        bad = sorted(set(kinds) - KINDS.keys())
        if bad:
            raise FilterError(
                f"filter 'kind' has unknown value(s) {bad}; allowed: trade (or trades), ticker, "
                "quote (or quotes)"
            )
    return ClientFilter(
        exchanges=None if exchanges is None else frozenset(e.lower() for e in exchanges),
        symbols=None if symbols is None else frozenset(s.upper() for s in symbols),
        kinds=None if kinds is None else frozenset(KINDS[k] for k in kinds),
    )


def gap_line(dropped: int) -> bytes:
    """The line that tells a subscriber ``dropped`` records meant for it were dropped."""
    return encode_line({"type": "gap", "dropped": dropped})


def error_line(error: str) -> bytes:
    """The line that tells a subscriber why it is refused or closed."""
    return encode_line({"type": "error", "error": error})


def parse_time(value: str) -> datetime:
    """An RFC 3339 time of a line as an aware UTC datetime; ValueError without a timezone.

    The daemon writes ``Z``, which ``fromisoformat`` reads as UTC itself: no conversion then
    (measured: it is most of a record's decoding otherwise); another offset is converted.
    """
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is UTC:
        return parsed
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no timezone")
    return parsed.astimezone(UTC)


def record_of(obj: dict[str, Any]) -> MarketData:
    """The record a decoded record line holds; KeyError, TypeError or ValueError if it is none."""
    return MarketData(
        obj["exchange"], obj["symbol"], obj["kind"], obj["price"], obj["volume"],
        parse_time(obj["timestamp"]), parse_time(obj["received_at"]), obj.get("bid"), obj.get("ask"),
        obj.get("high_24h"), obj.get("low_24h"), obj.get("change_24h"), obj.get("side"),
        obj.get("trade_id"), obj.get("bid_size"), obj.get("ask_size"), obj.get("backfilled") is True,
    )


def decode_record(line: bytes | str) -> MarketData:
    """Inverse of :func:`feedd.codec.encode_record` (``feedd tail``, the client library, tests)."""
    return record_of(orjson.loads(line))
