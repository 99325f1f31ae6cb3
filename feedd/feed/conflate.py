"""Quote conflation: the newest best bid/offer per symbol per interval, never an older one.

A busy Binance ``@bookTicker`` is hundreds of updates a second per symbol; a consumer that wants
the top of the book every 100 ms should not pay for every update (nor should the sockets). With
``[exchanges.<venue>] conflate = 0.1`` the connection readers hand their validated quotes to the
venue's :class:`Conflator` (a dict store per quote, the whole hot-path cost) instead of to the
hub, and the venue's flush task (:func:`flush_every`) sends what is pending once per interval:
at most one quote per symbol per interval, and always the newest one received. A quote is
therefore up to one interval late; trades and tickers are never held.
"""

from __future__ import annotations

import trio

from feedd.feed.status import VenueStatus
from feedd.model import QUOTE, Batch, Ingress, MarketData


class Conflator:
    """The newest quote per symbol since the last :meth:`take`."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[str, MarketData] = {}

    def absorb(self, records: Batch) -> Batch:
        """Keep the quotes of ``records`` (a newer one replaces an older of its symbol); the
        records that are not quotes, in order."""
        pending = self._pending
        rest: Batch = []
        keep = rest.append
        for record in records:
            if record.kind == QUOTE:
                pending[record.symbol] = record
            else:
                keep(record)
        return rest

    def take(self) -> Batch:
        """The pending quotes (one per symbol, the newest), in the order their symbols first
        became pending; nothing is pending afterwards."""
        if not self._pending:
            return []
        out = list(self._pending.values())
        self._pending.clear()
        return out

    def __len__(self) -> int:
        return len(self._pending)


async def flush_every(
    interval: float,
    conflator: Conflator,
    records: trio.MemorySendChannel[Ingress],
    status: VenueStatus,
) -> None:
    """Send the pending quotes every ``interval`` seconds, until cancelled.

    The send may wait for room in the hub's ingress like a reader's does (the hub drops for slow
    subscribers, never the feed); meanwhile newer quotes keep replacing older ones.
    """
    while True:
        await trio.sleep(interval)
        batch = conflator.take()
        if batch:
            status.records += len(batch)
            await records.send(batch)
