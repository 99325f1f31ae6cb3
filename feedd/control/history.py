"""The last minutes of each venue's counters, one snapshot a second, for charts and rates.

``feedd top`` and the status page draw records/s over the last 15 minutes and show the
exchange → receive delay's p50 / p99; neither can be had from one status document. A task
(:meth:`History.run`) reads each venue's running totals once per second, never per record, and
keeps the per-second differences in fixed-size rings: 900 seconds of three counters per venue
is a few tens of kilobytes however busy the feed is.

The delay percentiles come from the Prometheus histogram the feed keeps anyway (one observation
per batch, :mod:`feedd.control.metrics`): the ring keeps its cumulative bucket counts for the last
``latency_window`` seconds, and the percentile is interpolated inside the bucket it falls in,
as Prometheus' ``histogram_quantile`` does. So p50 / p99 are estimates, as exact as the bucket
bounds (1 ms, 2.5 ms, 5 ms, 10 ms, ...).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

#: seconds between snapshots
INTERVAL = 1.0
#: snapshots kept: 15 minutes
DEPTH = 900
#: seconds of delay observations behind p50 / p99
LATENCY_WINDOW = 60


@attrs.frozen
class Totals:
    """A venue's running totals at one moment (they only grow)."""

    messages: int
    records: int
    rejected: int
    #: the delay histogram's cumulative counts, one per bucket bound (the last is +Inf)
    delays: tuple[float, ...] = ()


@attrs.define
class _Ring:
    """One venue's per-second differences, newest last."""

    depth: int
    window: int
    last: Totals
    messages: deque[int] = attrs.field(init=False)
    records: deque[int] = attrs.field(init=False)
    rejected: deque[int] = attrs.field(init=False)
    delays: deque[tuple[float, ...]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.messages = deque(maxlen=self.depth)
        self.records = deque(maxlen=self.depth)
        self.rejected = deque(maxlen=self.depth)
        self.delays = deque([self.last.delays], maxlen=self.window + 1)

    def add(self, now: Totals) -> None:
        last, self.last = self.last, now
        # max(0, ...): a venue whose totals started again (never today) shows no negative rate
        self.messages.append(max(0, now.messages - last.messages))
        self.records.append(max(0, now.records - last.records))
        self.rejected.append(max(0, now.rejected - last.rejected))
        self.delays.append(now.delays)


class History:
    """Per-venue rings of per-second counter differences (see the module doc)."""

    def __init__(
        self,
        bounds: Sequence[float] = (),
        *,
        depth: int = DEPTH,
        interval: float = INTERVAL,
        latency_window: int = LATENCY_WINDOW,
    ) -> None:
        #: the delay histogram's finite bucket bounds, ascending (their +Inf bucket follows)
        self.bounds = tuple(bounds)
        self.depth = depth
        self.interval = interval
        self.latency_window = latency_window
        self._rings: dict[str, _Ring] = {}
        self._sampled = trio.Event()

    def sample(self, totals: Mapping[str, Totals]) -> None:
        """Take one snapshot. A venue seen for the first time starts its ring (its first
        difference comes with the next snapshot); one no longer present is forgotten."""
        for venue in self._rings.keys() - totals.keys():
            del self._rings[venue]
        for venue, now in totals.items():
            ring = self._rings.get(venue)
            if ring is None:
                self._rings[venue] = _Ring(self.depth, self.latency_window, now)
            else:
                ring.add(now)
        self._sampled.set()
        self._sampled = trio.Event()

    async def next_sample(self) -> None:
        """Wait for the next snapshot (for tests and anything that redraws once a second)."""
        await self._sampled.wait()

    def snapshot(self) -> dict[str, Any]:
        """``GET /api/v1/websocket/history``: per venue, per-second counts, newest last."""
        interval = self.interval
        return {
            "interval": int(interval) if float(interval).is_integer() else interval,  # 1, not 1.0
            "venues": {
                venue: {
                    "records": list(ring.records),
                    "messages": list(ring.messages),
                    "rejected": list(ring.rejected),
                }
                for venue, ring in self._rings.items()
            },
        }

    def latency(self, venue: str) -> dict[str, Any] | None:
        """Exchange → receive delay p50 / p99 in seconds over the last ``latency_window``
        seconds, with the number of observations; None when there were none."""
        ring = self._rings.get(venue)
        if ring is None or len(ring.delays) < 2:
            return None
        newest, oldest = ring.delays[-1], ring.delays[0]
        if len(newest) != len(self.bounds) + 1:
            return None
        if len(oldest) != len(newest):  # the venue's first observation came within the window
            oldest = (0.0,) * len(newest)
        counts = [n - o for n, o in zip(newest, oldest, strict=True)]
        total = counts[-1]
        if total <= 0:
            return None
        seconds = (len(ring.delays) - 1) * self.interval
        return {
            "p50": quantile(0.5, self.bounds, counts),
            "p99": quantile(0.99, self.bounds, counts),
            "observations": int(total),
            "window": seconds,
        }

    async def run(
        self,
        read: Callable[[], Mapping[str, Totals]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sample ``read()`` every ``interval`` seconds, on a fixed schedule (no drift)."""
        self.sample(read())
        task_status.started()
        deadline = trio.current_time()
        while True:
            deadline += self.interval
            await trio.sleep_until(deadline)
            self.sample(read())


def quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float:
    """The ``q`` quantile of a histogram with cumulative ``cumulative`` counts at ``bounds``
    (and +Inf last), interpolated linearly inside its bucket; in the +Inf bucket it is the
    highest finite bound (all that is known is that it is above it)."""
    total = cumulative[-1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=False):
        if count >= rank and count > below:
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return bounds[-1] if bounds else 0.0


__all__ = ["DEPTH", "INTERVAL", "LATENCY_WINDOW", "History", "Totals", "quantile"]
