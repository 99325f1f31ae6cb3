"""Pacing of what we send, so a venue's message limit is never crossed: per connection, or per
address when the venue counts every connection from one IP together."""

from __future__ import annotations

from collections import deque

import trio


class SlidingWindowLimiter:
    """At most ``limit`` sends in any ``window`` seconds, by one sender or by several sharing it.

    A sliding window, not a token bucket, because venues count messages in any one-second span
    (Binance: "5 incoming messages per second", protocols §2.5) and a bucket may burst across
    a second boundary. A venue that counts per address (Coinbase: "8 per second per IP address",
    protocols §3a) gets one limiter shared by all its connections to a host.
    """

    def __init__(self, limit: int, window: float = 1.0) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque()
        #: senders take turns in the order they asked (trio's Lock is fair): a connection with
        #: much to send cannot starve one that has a single subscribe
        self._turn = trio.Lock()

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
        """Wait until a send is allowed, and count it; safe for many concurrent senders."""
        async with self._turn:
            wait = self.delay(trio.current_time())
            if wait > 0:
                # the oldest send leaves the window then, which frees exactly one slot; the turn
                # is held meanwhile, so no other sender takes it
                await trio.sleep(wait)
            self.record(trio.current_time())
