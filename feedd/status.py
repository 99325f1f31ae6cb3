"""Live state and counters of each venue, read by logs, the status API and metrics.

Plain mutable objects updated in place by the one trio thread: no locks, no copies on the hot path.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import attrs
import trio

VenueState = Literal["connecting", "connected", "backoff", "failed", "disabled"]


@attrs.define
class ConnectionStatus:
    """One connection (shard) of a venue."""

    name: str
    url: str
    state: VenueState = "connecting"
    topics: int = 0
    consecutive_failures: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_frame_at: float | None = None  # trio clock
    #: the current attempt has kept delivering for ``stable_after`` seconds
    stable: bool = False


@attrs.define
class VenueStatus:
    venue: str
    enabled: bool = True
    connections: dict[str, ConnectionStatus] = attrs.field(factory=dict)
    #: records delivered to the hub
    messages: int = 0
    #: frames read off the sockets
    frames: int = 0
    #: records refused by validation, by reason
    rejected: Counter[str] = attrs.field(factory=Counter)
    #: frames that could not be decoded
    decode_errors: int = 0
    #: gaps in the venue's message sequence numbers, and the messages they skipped
    sequence_gaps: int = 0
    messages_missed: int = 0
    #: subscriptions the venue refused or we refused (unknown symbol), by topic or symbol
    subscription_errors: dict[str, str] = attrs.field(factory=dict)
    last_error: str | None = None

    @property
    def state(self) -> VenueState:
        if not self.enabled:
            return "disabled"
        states = {c.state for c in self.connections.values()}
        if not states:
            return "connecting"
        for state in ("failed", "backoff", "connecting"):
            if state in states:
                return state
        return "connected"

    @property
    def reconnects(self) -> int:
        return sum(c.reconnects for c in self.connections.values())

    @property
    def consecutive_failures(self) -> int:
        return max((c.consecutive_failures for c in self.connections.values()), default=0)

    def seconds_since_last_message(self) -> float | None:
        times = [c.last_frame_at for c in self.connections.values() if c.last_frame_at is not None]
        return trio.current_time() - max(times) if times else None

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view for the status API."""
        return {
            "state": self.state,
            "connections": len(self.connections),
            "messages": self.messages,
            "frames": self.frames,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "decode_errors": self.decode_errors,
            "sequence_gaps": self.sequence_gaps,
            "messages_missed": self.messages_missed,
            "reconnects": self.reconnects,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "subscription_errors": dict(self.subscription_errors),
            "seconds_since_last_message": self.seconds_since_last_message(),
        }
