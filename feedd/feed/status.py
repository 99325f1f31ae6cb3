"""Live state and counters of each venue, read by logs, the status API and metrics.

Plain mutable objects updated in place by the one trio thread: no locks, no copies on the hot path.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import attrs
import trio

from feedd.codec import rfc3339
from feedd.feed.gates import GateCounters, HostGate

VenueState = Literal["connecting", "connected", "backoff", "failed", "idle", "disabled"]


def _track_connected(
    conn: ConnectionStatus, attribute: attrs.Attribute[VenueState], state: VenueState
) -> VenueState:
    """Note when a connection becomes ``connected`` (its uptime starts) and when it stops."""
    if state != "connected":
        conn.connected_since = None
    elif conn.state != "connected":
        conn.connected_since = trio.current_time()
    return state


@attrs.define
class ConnectionStatus:
    """One connection (shard) of a venue."""

    name: str
    url: str
    state: VenueState = attrs.field(default="connecting", on_setattr=_track_connected)
    topics: int = 0
    consecutive_failures: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_message_at: float | None = None  # trio clock
    #: the last message that carried records (heartbeats, pongs and acks do not count)
    last_data_at: float | None = None  # trio clock
    #: the current attempt has kept delivering for ``stable_after`` seconds
    stable: bool = False
    #: make-before-break replacements done, and whether one is under way
    rotations: int = 0
    rotating: bool = False
    #: when it last became ``connected`` (trio clock); None while it is not
    connected_since: float | None = None
    #: how it reaches its URL: ``direct``, ``http://127.0.0.1:3128`` (configured), ``env
    #: HTTPS_PROXY: http://...``; never with credentials (feedd.wire.proxy.ProxyRoute.describe)
    proxy: str = "direct"

    def uptime(self, now: float) -> float | None:
        return None if self.connected_since is None else now - self.connected_since

    def snapshot(self, now: float) -> dict[str, Any]:
        last = self.last_message_at
        return {
            "name": self.name,
            "url": self.url,
            "proxy": self.proxy,
            "state": self.state,
            "streams": self.topics,
            "reconnects": self.reconnects,
            "rotations": self.rotations,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "seconds_since_last_message": None if last is None else _age(now - last),
            "seconds_since_last_data": None if self.last_data_at is None else _age(now - self.last_data_at),
            "stable": self.stable,
            "rotating": self.rotating,
            "uptime": _age(self.uptime(now)),
        }


@attrs.define
class InstrumentsStatus:
    """Where the venue's instrument list came from and how old it is, the background fetches,
    and the subscribed symbols it no longer lists."""

    #: ``loading`` (the first fetch under way), ``rest``, ``cache``, ``unavailable`` (neither
    #: REST nor a cache: symbols go unchecked) or ``unchecked`` (``check_symbols = false``)
    source: str = "unchecked"
    #: symbols in the list in use; None without one
    symbols: int | None = None
    #: when the list in use was fetched (wall clock, Unix seconds): a cached one, the file's time
    listed_at: float | None = None
    #: fetches tried and failed in all, failed in a row now, and the last failure's reason
    fetches: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    #: when the next fetch is due (trio clock): a retry, or the next refresh; None: none planned
    next_fetch_at: float | None = None
    #: subscribed symbols the list in use lacks (still subscribed: the exchange decides)
    delisted: list[str] = attrs.field(factory=list)

    def age(self, wall_now: float) -> float | None:
        return None if self.listed_at is None else max(0.0, wall_now - self.listed_at)

    def summary(self, wall_now: float) -> str:
        """``cached (5 h old)``, ``fetched (12 min old)``, ``unavailable (symbols unchecked)``."""
        age = self.age(wall_now)
        if self.source in ("rest", "cache") and age is not None:
            return f"{'cached' if self.source == 'cache' else 'fetched'} ({age_text(age)} old)"
        if self.source == "unavailable":
            return "unavailable (symbols unchecked)"
        return self.source

    def snapshot(self, now: float, wall_now: float) -> dict[str, Any]:
        age = self.age(wall_now)
        return {
            "summary": self.summary(wall_now),
            "source": self.source,
            "symbols": self.symbols,
            "age": None if age is None else round(age),
            "fetches": self.fetches,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "next_fetch_in": None if self.next_fetch_at is None else _age(max(0.0, self.next_fetch_at - now)),
            "delisted": list(self.delisted),
        }


@attrs.define
class VenueStatus:
    """A venue's state, and its counters: running totals kept here, not sums over the current
    connections, so they never go backwards when a connection is closed (its last symbol
    unsubscribed) and its :class:`ConnectionStatus` dropped."""

    venue: str
    enabled: bool = True
    connections: dict[str, ConnectionStatus] = attrs.field(factory=dict)
    #: the venue has its instrument list and has placed its initial subscriptions: from then on,
    #: no connection means nothing is subscribed (``idle``), not that it is still starting
    started: bool = False
    #: connection attempts that ended, over every connection the venue ever had
    reconnects: int = 0
    #: connections replaced make-before-break (planned; not in ``reconnects``)
    rotations: int = 0
    #: records (MarketData) delivered to the hub, after validation
    records: int = 0
    #: complete WebSocket messages read off the sockets
    messages: int = 0
    #: records refused by validation, by reason
    rejected: Counter[str] = attrs.field(factory=Counter)
    #: messages that could not be decoded
    decode_errors: int = 0
    #: gaps in the venue's message sequence numbers, and the messages they skipped
    sequence_gaps: int = 0
    messages_missed: int = 0
    #: trades fetched from the venue's REST after a gap in their ids, trades it could not give,
    #: and trades dropped for being delivered already (feedd.feed.backfill)
    backfilled: int = 0
    lost_trades: int = 0
    duplicates: int = 0
    #: subscriptions the venue refused or we refused (unknown symbol), by topic or symbol
    subscription_errors: dict[str, str] = attrs.field(factory=dict)
    last_error: str | None = None
    #: handshakes: attempts, paced attempts, refusals by HTTP status
    handshakes: GateCounters = attrs.field(factory=GateCounters)
    #: the hosts the venue's connections go to, whose gates say whether they are throttled
    hosts: dict[str, HostGate] = attrs.field(factory=dict)
    #: how its streams and its REST calls reach the exchange (see ConnectionStatus.proxy)
    proxy: str = "direct"
    rest_proxy: str = "direct"
    #: the instrument list: its source and age, the background fetches, delisted symbols
    instruments: InstrumentsStatus = attrs.field(factory=InstrumentsStatus)

    def carry_totals(self, previous: VenueStatus) -> None:
        """Continue ``previous``'s counters: a venue restarted (or disabled and enabled again)
        by a reload keeps counting from where it was."""
        self.reconnects = previous.reconnects
        self.rotations = previous.rotations
        self.records = previous.records
        self.messages = previous.messages
        self.rejected = Counter(previous.rejected)
        self.decode_errors = previous.decode_errors
        self.sequence_gaps = previous.sequence_gaps
        self.messages_missed = previous.messages_missed
        self.backfilled = previous.backfilled
        self.lost_trades = previous.lost_trades
        self.duplicates = previous.duplicates
        self.handshakes = attrs.evolve(previous.handshakes, refused=Counter(previous.handshakes.refused))

    @property
    def state(self) -> VenueState:
        """``idle``: enabled, started, and nothing subscribed, so no connection is needed."""
        if not self.enabled:
            return "disabled"
        states = {c.state for c in self.connections.values()}
        if not states:
            return "idle" if self.started else "connecting"
        for state in ("failed", "backoff", "connecting"):
            if state in states:
                return state
        return "connected"

    @property
    def consecutive_failures(self) -> int:
        return max((c.consecutive_failures for c in self.connections.values()), default=0)

    def throttle(self) -> tuple[datetime, str] | None:
        """Until when (wall clock) and why a host of the venue refuses handshakes; None if none
        does (the latest end when several do)."""
        blocked = [(until, f"{gate.host}: {gate.reason}") for gate in self.hosts.values()
                   if (until := gate.throttled_until()) is not None]
        return max(blocked, default=None)

    def seconds_since_last_message(self) -> float | None:
        times = [c.last_message_at for c in self.connections.values() if c.last_message_at is not None]
        return trio.current_time() - max(times) if times else None

    def uptime(self, now: float) -> float | None:
        """How long every connection of the venue has been connected (the shortest uptime);
        None unless all of them are."""
        times = [c.uptime(now) for c in self.connections.values()]
        if not times or None in times:
            return None
        return min(t for t in times if t is not None)

    def problems(self, max_age: float) -> list[str]:
        """Why this venue is not connected and fresh (no message for ``max_age`` s); empty if it is.

        A disabled venue has none, nor an idle one: neither is expected to stream.
        """
        if not self.enabled:
            return []
        if not self.connections:
            return [] if self.started else [f"{self.venue}: starting (loading its instrument list)"]
        now = trio.current_time()
        found = []
        for conn in self.connections.values():
            if conn.state != "connected":
                why = f": {conn.last_error}" if conn.last_error else ""
                found.append(f"{conn.name}: {conn.state}{why}")
            elif conn.last_message_at is None:
                found.append(f"{conn.name}: connected, no message yet")
            elif now - conn.last_message_at > max_age:
                found.append(f"{conn.name}: no message for {now - conn.last_message_at:.1f} s")
        return found

    def snapshot(self, subscriptions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A JSON-ready view for the status API.

        ``messages`` are WebSocket messages read, ``records`` the records delivered (after
        validation); ``rejected`` counts refused records by reason.
        """
        now = trio.current_time()
        throttle = self.throttle()
        handshakes = self.handshakes
        return {
            "state": self.state,
            "proxy": self.proxy,
            "rest_proxy": self.rest_proxy,
            "connections": [conn.snapshot(now) for conn in self.connections.values()],
            "subscriptions": subscriptions or [],
            "messages": self.messages,
            "records": self.records,
            "rejected": dict(self.rejected),
            "decode_errors": self.decode_errors,
            "sequence_gaps": self.sequence_gaps,
            "messages_missed": self.messages_missed,
            "backfilled_trades": self.backfilled,
            "lost_trades": self.lost_trades,
            "duplicate_trades": self.duplicates,
            "reconnects": self.reconnects,
            "rotations": self.rotations,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "subscription_errors": dict(self.subscription_errors),
            "seconds_since_last_message": _age(self.seconds_since_last_message()),
            "throttled_until": None if throttle is None else rfc3339(throttle[0]),
            "throttle_reason": None if throttle is None else throttle[1],
            "connection_attempts": handshakes.attempts,
            "paced_attempts": handshakes.paced,
            "handshakes_refused": {str(code): n for code, n in sorted(handshakes.refused.items())},
            "uptime": _age(self.uptime(now)),
            "instruments": self.instruments.snapshot(now, time.time()),
        }


def age_text(seconds: float) -> str:
    """``25 min``, ``5 h``, ``3 d``: how old an instrument list is, as a person says it."""
    seconds = max(0.0, seconds)
    if seconds < 3600:
        return f"{math.floor(seconds / 60)} min"
    if seconds < 72 * 3600:
        return f"{math.floor(seconds / 3600)} h"
    return f"{math.floor(seconds / 86400)} d"


def _age(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


OverallState = Literal["ok", "degraded", "down"]


def overall(statuses: Iterable[VenueStatus], max_age: float) -> tuple[OverallState, list[str]]:
    """``ok`` when every enabled venue is connected and fresh, ``degraded`` when only some are,
    ``down`` when none is (or none is enabled); with the reasons for anything short of ok."""
    enabled = [s for s in statuses if s.enabled]
    problems = {s.venue: s.problems(max_age) for s in enabled}
    reasons = [reason for found in problems.values() for reason in found]
    healthy = sum(1 for found in problems.values() if not found)
    if not enabled:
        return "down", ["no venue is enabled"]
    if healthy == len(enabled):
        return "ok", []
    return ("degraded" if healthy else "down"), reasons
