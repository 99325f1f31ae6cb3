"""Record validation: what a record must satisfy before anyone downstream sees it."""

from __future__ import annotations

import math
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta

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
        #: the received_at whose skew window ``_earliest`` .. ``_latest`` is (a batch shares one)
        self._window_of: datetime | None = None
        self._earliest = self._latest = datetime.min

    def historical_reason(self, record: MarketData) -> str | None:
        """:meth:`reason` for a trade fetched after the fact (a backfill): its exchange time may
        be long before its receive time, but never after it."""
        if record.timestamp - record.received_at > MAX_CLOCK_SKEW:
            return "timestamp_skew"
        return self.reason(attrs.evolve(record, received_at=record.timestamp))

    def reason(self, record: MarketData) -> str | None:
        """Why ``record`` is refused (the first failed check in a fixed order), or None.

        The common case is decided by chained comparisons: the skew window is computed once
        per ``received_at`` (every record of a read shares one) instead of a ``timedelta`` per
        record, and a record whose optional fields are all absent (a trade) skips their loops
        (0.40 -> 0.31 µs a trade with the loop around it, on a loaded machine).
        """
        price = record.price
        volume = record.volume
        if not (0.0 < price < _INF and 0.0 <= volume < _INF) and (
            why := _number_reason(price, volume)
        ) is not None:
            return why
        received_at = record.received_at
        if received_at is not self._window_of:
            self._earliest = received_at - MAX_CLOCK_SKEW
            self._latest = received_at + MAX_CLOCK_SKEW
            self._window_of = received_at
        if not (self._earliest <= record.timestamp <= self._latest):
            return "timestamp_skew"
        if record.symbol not in self._known:
            return "unknown_symbol"
        bid = record.bid
        ask = record.ask
        high = record.high_24h
        low = record.low_24h
        change = record.change_24h
        bid_size = record.bid_size
        ask_size = record.ask_size
        if (bid is None and ask is None and high is None and low is None and change is None
                and bid_size is None and ask_size is None):
            return None
        for value in (bid, ask, high, low, change):
            if value is not None and not math.isfinite(value):
                return "non_finite_field"
        for size in (bid_size, ask_size):
            if size is not None and not (math.isfinite(size) and size >= 0):
                return "bad_size"
        return None


_INF = math.inf


def _number_reason(price: float, volume: float) -> str | None:
    """Which of price and volume failed, in :meth:`Validator.reason`'s order."""
    if not math.isfinite(price):
        return "non_finite_price"
    if price <= 0:
        return "non_positive_price"
    if not math.isfinite(volume):
        return "non_finite_volume"
    if volume < 0:
        return "negative_volume"
    return None

