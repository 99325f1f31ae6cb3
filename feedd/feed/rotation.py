"""When to rotate a connection and when to try again: the rotation rules, pure (no trio, no I/O).

A rotation replaces a connection make-before-break (see :mod:`feedd.feed.overlap` for how the two
streams become one). It is due at ``rotate_after`` plus the shard's offset (shards of a venue are
staggered), or at once when the venue announces a shutdown; never sooner than
``reconnect_interval`` after the previous rotation started (a venue in maintenance may announce a
shutdown on every connection); a failed one is tried again after ``reconnect_interval``, doubling
while they keep failing, up to ``max_backoff``.
"""

from __future__ import annotations

import math


def due(connected_at: float, rotate_after: float | None, offset: float) -> float:
    """When a connection made at ``connected_at`` is rotated on schedule (inf: never)."""
    if rotate_after is None:
        return math.inf
    return connected_at + rotate_after + offset


class Rotations:
    """One connection's rotation history: when the last one started, how many failed in a row.
    Owned by the runner; its attempts ask it, they do not keep counts of their own."""

    def __init__(self) -> None:
        self.last_started = -math.inf
        self.failures = 0

    def earliest(self, reconnect_interval: float) -> float:
        """The soonest the next rotation may start."""
        return self.last_started + reconnect_interval

    def started(self, now: float) -> None:
        self.last_started = now

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, reconnect_interval: float, max_backoff: float) -> float:
        """Count a failed rotation; the seconds to wait before the next try."""
        self.failures += 1
        return min(max_backoff, reconnect_interval * 2.0 ** (self.failures - 1))


def planned_delay(last_planned: float, now: float, reconnect_interval: float) -> float:
    """Seconds before a planned reconnect (a venue's cut of a healthy connection): none unless the
    previous one was less than ``reconnect_interval`` ago, which must never become a storm."""
    return max(0.0, last_planned + reconnect_interval - now)
