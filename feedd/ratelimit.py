"""Pacing of what we send, so a venue's per-connection message limit is never crossed."""

from __future__ import annotations

from collections import deque

import trio


class SlidingWindowLimiter:
    """At most ``limit`` sends in any ``window`` seconds.

    A sliding window, not a token bucket, because venues count messages in any one-second span
    (Binance: "5 incoming messages per second", protocols §2.5) and a bucket may burst across
    a second boundary.
    """

    def __init__(self, limit: int, window: float = 1.0) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds to wait from ``now`` before one more send is allowed."""
        sent = self._sent
        while sent and sent[0] <= now - self.window:
            sent.popleft()
        if len(sent) < self.limit:
            return 0.0
        return sent[0] + self.window - now

    def record(self, now: float) -> None:
        self._sent.append(now)

    async def acquire(self) -> None:
        """Wait until a send is allowed, and count it (one sender per limiter)."""
        wait = self.delay(trio.current_time())
        if wait > 0:
            # the oldest send leaves the window then, which frees exactly one slot
            await trio.sleep(wait)
        self.record(trio.current_time())
