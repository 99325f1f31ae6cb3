"""Record validation: what a record must satisfy before anyone downstream sees it."""

from __future__ import annotations

import math
from collections.abc import Set as AbstractSet
from datetime import timedelta

import attrs

from feedd.model import MarketData

#: how far an exchange timestamp may be from our receive time before the record is refused
MAX_CLOCK_SKEW = timedelta(minutes=5)


class Validator:
    """Checks records of one venue; returns the rejection reason, or None for a good record.

    ``known_symbols`` is the owner's own set, read live (not copied), so a runtime subscribe or
    unsubscribe changes what is accepted without rebuilding the validator or a call per record.
    """

    def __init__(self, known_symbols: AbstractSet[str]) -> None:
        self._known = known_symbols

    def historical_reason(self, record: MarketData) -> str | None:
        """:meth:`reason` for a trade fetched after the fact (a backfill): its exchange time may
        be long before its receive time, but never after it."""
        if record.timestamp - record.received_at > MAX_CLOCK_SKEW:
            return "timestamp_skew"
        return self.reason(attrs.evolve(record, received_at=record.timestamp))

    def reason(self, record: MarketData) -> str | None:
        price = record.price
        if not math.isfinite(price):
            return "non_finite_price"
        if price <= 0:
            return "non_positive_price"
        volume = record.volume
        if not math.isfinite(volume):
            return "non_finite_volume"
        if volume < 0:
            return "negative_volume"
        skew = record.timestamp - record.received_at
        if skew > MAX_CLOCK_SKEW or -skew > MAX_CLOCK_SKEW:
            return "timestamp_skew"
        if record.symbol not in self._known:
            return "unknown_symbol"
        for value in (record.bid, record.ask, record.high_24h, record.low_24h, record.change_24h):
            if value is not None and not math.isfinite(value):
                return "non_finite_field"
        for size in (record.bid_size, record.ask_size):
            if size is not None and not (math.isfinite(size) and size >= 0):
                return "bad_size"
        return None

