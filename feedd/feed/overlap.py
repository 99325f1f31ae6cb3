"""The hand-over between two connections carrying the same topics (a make-before-break rotation).

While both are open the subscriber must see each record once and each symbol in order, with no
gap. The replacement starts wherever the venue is now, and the old connection may lag behind it
(what the venue and the network still hold for it), so the replacement's first records are not
delivered at once: they are *held* until the old connection, still delivering, reaches them.
Then the hand-over (:meth:`Overlap.switch`) delivers what is held beyond what the old one
delivered, and from then on only the replacement's records count; those that repeat what went
out already are dropped.

A trade is the same trade when its venue, symbol and trade id are (venues without ids: its time,
price, size and side). Of two tickers of a symbol, the one with the newer exchange time wins; one
that is not newer is dropped. Memory is bounded: the keys of the last ``capacity`` trades (an
overlap lasts seconds) and, while held, the replacement's records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from datetime import datetime

from feedd.model import TRADE, Batch, MarketData

#: trade keys remembered during one overlap
CAPACITY = 200_000

_Symbol = tuple[str, str]


def _trade_key(record: MarketData) -> Hashable:
    if record.trade_id is not None:
        return (record.exchange, record.symbol, record.trade_id)
    return (record.exchange, record.symbol, record.timestamp, record.price, record.volume, record.side)


class Overlap:
    """Merges the old connection's and the replacement's records into one gap-free stream."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._seen: set[Hashable] = set()
        self._order: deque[Hashable] = deque()
        self._ticker_times: dict[_Symbol, datetime] = {}
        #: the replacement's records, until the hand-over
        self._held: Batch = []
        #: per symbol the replacement delivered, what the old connection must still reach: the
        #: held trades' keys, or the first held ticker's time
        self._trades_ahead: dict[_Symbol, set[Hashable]] = {}
        self._ticker_ahead: dict[_Symbol, datetime] = {}
        #: symbols the old connection has caught up on
        self._reached: set[_Symbol] = set()
        self.switched = False
        #: copies dropped (either connection's), and the old connection's records dropped
        #: because they came after the hand-over
        self.dropped = 0

    @property
    def caught_up(self) -> bool:
        """The old connection has reached every symbol's first held record: hand over now."""
        return bool(self._held) and not self._trades_ahead and not self._ticker_ahead

    @property
    def held(self) -> int:
        return len(self._held)

    def old(self, records: Batch) -> Batch:
        """The old connection's records to deliver."""
        if self.switched:
            self.dropped += len(records)
            return []
        trades_ahead, ticker_ahead = self._trades_ahead, self._ticker_ahead
        if trades_ahead or ticker_ahead:
            for record in records:
                symbol = (record.exchange, record.symbol)
                if record.kind == TRADE:
                    keys = trades_ahead.get(symbol)
                    if keys is not None and _trade_key(record) in keys:
                        self._reach(symbol)
                else:
                    first = ticker_ahead.get(symbol)
                    if first is not None and record.timestamp >= first:
                        self._reach(symbol)
        return self._first_copies(records)

    def new(self, records: Batch) -> Batch:
        """The replacement's records to deliver: none before the hand-over (they are held)."""
        if self.switched:
            return self._first_copies(records)
        reached = self._reached
        for record in records:
            symbol = (record.exchange, record.symbol)
            if symbol in reached:
                continue
            if record.kind == TRADE:
                key = _trade_key(record)
                if key in self._seen:  # the old one delivered it already: it is past this point
                    self._reach(symbol)
                else:
                    self._trades_ahead.setdefault(symbol, set()).add(key)
            else:
                newest = self._ticker_times.get(symbol)
                if newest is not None and record.timestamp <= newest:
                    self._reach(symbol)
                else:
                    self._ticker_ahead.setdefault(symbol, record.timestamp)
        self._held += records
        return []

    def _reach(self, symbol: _Symbol) -> None:
        """The old connection has delivered as far as the replacement began, for ``symbol``."""
        self._reached.add(symbol)
        self._trades_ahead.pop(symbol, None)
        self._ticker_ahead.pop(symbol, None)

    def switch(self) -> Batch:
        """Hand over to the replacement: what it holds that the old one did not deliver."""
        self.switched = True
        held, self._held = self._held, []
        self._trades_ahead.clear()
        self._ticker_ahead.clear()
        return self._first_copies(held)

    def _first_copies(self, records: Batch) -> Batch:
        kept: Batch = []
        seen, order = self._seen, self._order
        times = self._ticker_times
        for record in records:
            if record.kind == TRADE:
                key = _trade_key(record)
                if key in seen:
                    self.dropped += 1
                    continue
                seen.add(key)
                order.append(key)
                if len(order) > self._capacity:
                    seen.discard(order.popleft())
            else:
                symbol = (record.exchange, record.symbol)
                newest = times.get(symbol)
                if newest is not None and record.timestamp <= newest:
                    self.dropped += 1
                    continue
                times[symbol] = record.timestamp
            kept.append(record)
        return kept
