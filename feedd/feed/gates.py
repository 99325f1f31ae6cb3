"""Throttled handshakes: a refusal's ``Retry-After``, and the pacing of connection attempts.

Exchanges count connection attempts per client address (Binance: 300 per 5 minutes; Bybit: 500
per 5 minutes per domain; Coinbase: 8 per second), answer a client over the limit with HTTP 429
and ``Retry-After``, and ban one that keeps going (HTTP 418 at Binance). Both answers are about
the address and the host, not about the connection that heard them: a second connection trying
a moment later would only be refused too, and lengthen the ban. So the state lives in one
:class:`HostGate` per host (and port, :func:`host_of`), held by the service
(:class:`HandshakeGates`) and shared by every connection of every venue to that host; it
survives a venue's restart by a reload.

A connection runner reaches it through its :class:`Gate`: :meth:`Gate.before_connect` waits out
a block and a pacing turn, :meth:`Gate.refused` hands over the refusal. A throttle is logged once
when it starts (with the wait; a refusal run is logged 1, 2, 4, 8... times) and once when the
host accepts a handshake again, never once per waiting connection.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs
import trio

from feedd.errors import first_of_run
from feedd.exchanges.base import ConnectLimit
from feedd.feed.ratelimit import SlidingWindowLimiter

if TYPE_CHECKING:
    from feedd.wire.upgrade import HandshakeRefused

log = logging.getLogger(__name__)

#: seconds to wait after a 429 (or a 503 that names a time) without a usable Retry-After:
#: long, since the venue said "too many" and did not say for how long
DEFAULT_RETRY_AFTER = 60.0
#: seconds to wait after a 418 (an IP ban) without a usable Retry-After; Binance's bans last
#: from 2 minutes to 3 days, and every attempt during one lengthens it
DEFAULT_BAN = 300.0
#: the longest wait honoured: a larger Retry-After (or a date far ahead) is taken as this, so a
#: wrong header cannot park a venue for ever; the host is asked again then
MAX_WAIT = 24 * 3600.0
#: added to a connect limit's window: attempts reach the venue over separate TCP handshakes, so
#: one made earlier may be counted later, as the send limiter allows for (connection.ARRIVAL_SPREAD)
WINDOW_MARGIN = 0.5
#: the refusals that block the host: 429 Too Many Requests, 418 (Binance: the IP is banned)
THROTTLING = {429: "too many requests", 418: "IP address banned"}

def host_of(url: str) -> str:
    """``host:port`` of ``url`` (the scheme's port when none is given), which gates are keyed by.

    The port is part of the key so that simulators sharing 127.0.0.1 stay apart; an exchange
    serves one port per host (Bybit's three venues share ``stream.bybit.com:443``, and one gate).
    """
    parts = urlsplit(url)
    host = (parts.hostname or url).lower()
    try:
        port = parts.port or (443 if parts.scheme in ("wss", "https") else 80)
    except ValueError:  # a bad port: the transport will say so; any key will do meanwhile
        port = 0
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Pacer:
    """One connect limit's attempts to one host, in a sliding window; remembers whether it is
    making attempts wait, so that is logged when it starts, not for every attempt."""

    def __init__(self, limit: ConnectLimit) -> None:
        self.limit = limit
        self._window = SlidingWindowLimiter(limit.attempts, limit.window + WINDOW_MARGIN)
        #: turns are taken in the order asked (trio's Lock is fair), and a wait is seen as such
        self._turn = trio.Lock()
        self.pacing = False

    async def turn(self, host: str, venue: str) -> bool:
        """Wait for an attempt's turn (in the order asked) and count it; True when it waited,
        for the window or behind attempts that did."""
        asked = trio.current_time()
        async with self._turn:
            delay = self._window.delay(trio.current_time())
            if delay > 0:
                if not self.pacing:
                    self.pacing = True
                    log.warning(
                        "%s: %d connection attempts to %s within %g s, the venue's limit: further "
                        "attempts wait their turn (the next in %.1f s)",
                        venue, self.limit.attempts, host, self.limit.window, delay,
                    )
                # the oldest attempt leaves the window then, which frees exactly one turn
                await trio.sleep(delay)
            self._window.record(trio.current_time())
        waited = trio.current_time() > asked
        if not waited:
            self.pacing = False  # a turn at once: whatever wait there was is over
        return waited


@attrs.define(eq=False)
class HostGate:
    """What one host has said about handshakes: whether it takes them now, and why not."""

    host: str
    #: trio time before which no handshake to the host starts
    blocked_until: float = -math.inf
    #: the refusal behind the current block, for status (e.g. ``HTTP 429 (too many requests)``)
    reason: str | None = None
    #: throttling refusals since the host last accepted a handshake
    refusals: int = 0
    #: the status code of each throttling refusal, over the service's life
    throttled: Counter[int] = attrs.field(factory=Counter)
    _pacers: dict[ConnectLimit, _Pacer] = attrs.field(factory=dict)

    def wait(self) -> float:
        """Seconds until the host takes handshakes again (0 when it does)."""
        return max(0.0, self.blocked_until - trio.current_time())

    def throttled_until(self) -> datetime | None:
        """When (wall clock) the host takes handshakes again; None when it does now."""
        wait = self.wait()
        return datetime.now(UTC) + timedelta(seconds=wait) if wait > 0 else None

    def pacer(self, limit: ConnectLimit) -> _Pacer:
        pacer = self._pacers.get(limit)
        if pacer is None:
            pacer = self._pacers[limit] = _Pacer(limit)
        return pacer

    def block(self, refused: HandshakeRefused, venue: str) -> float | None:
        """Take a refusal into account; the seconds every handshake to the host now waits, or
        None when the refusal does not ask for a wait (a 5xx without Retry-After: the caller's
        backoff applies)."""
        status = refused.status
        wait = refused.retry_after
        if status in THROTTLING:
            if wait is None:
                wait = DEFAULT_BAN if status == 418 else DEFAULT_RETRY_AFTER
            self.throttled[status] += 1
        elif wait is None:
            return None
        wait = min(wait, MAX_WAIT)
        now = trio.current_time()
        until = now + wait
        ongoing = self.blocked_until > now
        self.blocked_until = max(self.blocked_until, until)
        what = THROTTLING.get(status, "refused")
        self.reason = f"HTTP {status} ({what}) to {venue}"
        if ongoing:
            # a handshake that was already under way when the block began: same event
            log.debug("%s: %s answered HTTP %d during a block", venue, self.host, status)
            return self.blocked_until - now
        self.refusals += 1
        if first_of_run(self.refusals):  # a long run stays readable
            text = refused.retry_after_text
            header = (
                "no Retry-After" if text is None
                else f"Retry-After {text!r:.60}" + (" not understood" if refused.retry_after is None else "")
            )
            run = f"; refusal #{self.refusals} in a row" if self.refusals > 1 else ""
            until_text = (datetime.now(UTC) + timedelta(seconds=wait)).strftime("%H:%M:%S UTC")
            log.log(
                logging.ERROR if status == 418 else logging.WARNING,
                "%s: %s answered the handshake with HTTP %d (%s; %s%s): no connection to %s, "
                "from any venue, for %.0f s (until %s)",
                venue, self.host, status, what, header, run, self.host, wait, until_text,
            )
        return wait

    def accepted(self) -> None:
        """A handshake to the host succeeded: a run of throttling refusals is over."""
        if self.refusals:
            log.info("%s accepts handshakes again after %d throttling refusal(s)", self.host, self.refusals)
            self.refusals = 0
            self.reason = None


class Gate:
    """One connection's way through its host's gate: the venue's pacing, the host's blocks.

    ``attempts`` and ``refusals`` are the venue's counters (its status shares them), so a
    venue's view stays its own while the block is the host's.
    """

    def __init__(
        self,
        host: HostGate,
        venue: str,
        limit: ConnectLimit | None = None,
        *,
        counters: GateCounters | None = None,
    ) -> None:
        self.host = host
        self.venue = venue
        self._pacer = host.pacer(limit) if limit is not None else None
        self.counters = counters or GateCounters()

    async def before_connect(self) -> None:
        """Wait until the host takes handshakes and the venue's connect limit has room; count
        the attempt."""
        host = self.host
        while True:
            if host.blocked_until > trio.current_time():
                await trio.sleep_until(host.blocked_until)
            if self._pacer is not None and await self._pacer.turn(host.host, self.venue):
                self.counters.paced += 1
            if host.blocked_until <= trio.current_time():
                break
            # refused meanwhile (another connection's answer): that turn is spent, wait again
        self.counters.attempts += 1

    def refused(self, refused: HandshakeRefused) -> bool:
        """Count a refusal and apply its wait to the host; True when it throttles (429, 418, or
        a 5xx naming a time), so the caller's own log line would repeat the gate's."""
        self.counters.refused[refused.status] += 1
        return self.host.block(refused, self.venue) is not None

    def accepted(self) -> None:
        self.host.accepted()

    def wait(self) -> float:
        """Seconds until the host takes handshakes again."""
        return self.host.wait()


@attrs.define
class GateCounters:
    """A venue's handshake counters (running totals, shown in status and metrics)."""

    #: handshakes started (each waited for its gate first)
    attempts: int = 0
    #: attempts that waited for a pacing turn
    paced: int = 0
    #: handshakes answered with an HTTP status other than 101, by status
    refused: Counter[int] = attrs.field(factory=Counter)


class HandshakeGates:
    """Every host's gate, for the life of the service: one per host, whichever venue asks."""

    def __init__(self) -> None:
        self._hosts: dict[str, HostGate] = {}

    def host(self, url: str) -> HostGate:
        name = host_of(url)
        gate = self._hosts.get(name)
        if gate is None:
            gate = self._hosts[name] = HostGate(name)
        return gate

    def gate(
        self, url: str, venue: str, limit: ConnectLimit | None, counters: GateCounters | None = None
    ) -> Gate:
        """The gate a connection of ``venue`` to ``url`` goes through."""
        return Gate(self.host(url), venue, limit, counters=counters)

    def hosts(self) -> list[HostGate]:
        return list(self._hosts.values())
