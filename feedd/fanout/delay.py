"""The exchange → receive delay sink: one histogram observation per batch.

:class:`DelaySink` is a hub sink that makes **one observation per batch**, the newest record's
``received_at - timestamp``. At low rates every message is its own batch, so every record is
observed; under load a batch holds many records and one of them stands for the rest, which
bounds the cost at a dict lookup, a subtraction and a histogram bucket per batch (~1-2 µs).
The delay includes the exchange's own publication delay and any skew between its clock and
ours; a negative delay (our clock behind the exchange's) is recorded as 0. The histogram is
:mod:`feedd.control.metrics`' ``feedd_exchange_receive_delay_seconds``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Histogram

from feedd.model import FeedEvent, MarketData


class DelaySink:
    """A hub sink observing the exchange → receive delay once per batch (see the module doc)."""

    wants_encoded = False

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._children: dict[str, Histogram] = {}

    def offer(self, records: Sequence[MarketData], encoded: Sequence[bytes]) -> None:
        newest = records[-1]
        child = self._children.get(newest.exchange)
        if child is None:
            child = self._children[newest.exchange] = self._histogram.labels(newest.exchange)
        delay = (newest.received_at - newest.timestamp).total_seconds()
        child.observe(delay if delay > 0 else 0.0)

    def notice(self, event: FeedEvent) -> None:
        """Feed events carry no exchange time: nothing to observe."""


__all__ = ["DelaySink"]
