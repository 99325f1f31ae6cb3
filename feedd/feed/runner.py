"""The generic connection runner: the one place where reconnects, backoff and rotations live, for
every venue.

One :class:`ConnectionRunner` owns one connection (a shard of a venue's topics) for the life of
the daemon. Each connect-to-close of it is an :class:`~feedd.feed.attempt.Attempt` with its own
cancel scope and tasks (reader, sender, watchdog, rotator, pinger: see :mod:`feedd.feed.attempt`).
Any of them ends the attempt by naming a reason and cancelling its scope; the runner then waits
out an exponential backoff with jitter and connects again, resubscribing every topic.

The runner owns what outlives an attempt: the topics and the venue's replies about them
(:mod:`feedd.feed.replies`), the backoff, the rotation history (:mod:`feedd.feed.rotation`), the
quiet factor (:mod:`feedd.feed.liveness`), the disconnect/reconnect events and a rotation's
overlap (:mod:`feedd.feed.overlap`). Each attempt's role in the connection is an explicit
:class:`~feedd.feed.lifecycle.Lifecycle`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Literal

import attrs
import trio

from feedd.errors import TransportError, first_of_run
from feedd.exchanges.base import Op, Venue
from feedd.feed import liveness, rotation
from feedd.feed.attempt import Attempt, Outcome, send_limiter
from feedd.feed.backfill import Backfiller
from feedd.feed.backoff import Backoff
from feedd.feed.conflate import Conflator
from feedd.feed.gates import Gate, HostGate, host_of
from feedd.feed.lifecycle import State, Trigger
from feedd.feed.overlap import Overlap
from feedd.feed.ratelimit import SlidingWindowLimiter
from feedd.feed.replies import Reply, ReplyLedger
from feedd.feed.status import ConnectionStatus, VenueStatus
from feedd.feed.tap import ConnectionTap
from feedd.feed.validate import Validator
from feedd.model import Batch, Disconnected, Ingress, Reconnected
from feedd.wire.transport import OpenTransport, Transport, open_transport
from feedd.wire.upgrade import HandshakeRefused

__all__ = ["CATCH_UP", "OVERLAP_GRACE", "ConnectionRunner", "Reply", "RunnerSettings", "send_limiter"]

log = logging.getLogger(__name__)

#: seconds a rotation's de-duplication outlasts the old connection (the new one repeats what the
#: old one delivered last)
OVERLAP_GRACE = 5.0
#: seconds the old connection has, once the replacement delivers, to catch up with it
CATCH_UP = 5.0


@attrs.frozen
class RunnerSettings:
    reconnect_interval: float = 5.0
    max_backoff: float = 300.0
    max_retries: int = 10
    stale_after: float = 30.0
    stable_after: float = 10.0
    connect_timeout: float = 10.0


class ConnectionRunner:
    """Keeps one venue connection open for ever, with the topics it is told to carry."""

    def __init__(
        self,
        *,
        venue: Venue,
        url: str,
        name: str,
        topics: Iterable[str],
        settings: RunnerSettings,
        status: VenueStatus,
        records: trio.MemorySendChannel[Ingress],
        validator: Validator,
        open_transport: OpenTransport = open_transport,
        backoff: Backoff | None = None,
        send_limiter: SlidingWindowLimiter | None = None,
        rotate_after: float | None = None,
        rotate_offset: float = 0.0,
        symbols: Callable[[], Sequence[str]] | None = None,
        gate: Gate | None = None,
        conflator: Conflator | None = None,
        backfill: Backfiller | None = None,
        tap: ConnectionTap | None = None,
    ) -> None:
        self.venue = venue
        #: the venue's trade-id tracker and gap fetcher (None: the venue's ids say nothing)
        self.backfill = backfill
        #: the venue's quote conflation (None: quotes go to the hub with the other records)
        self.conflator = conflator
        #: the recorder's tap of this connection (None: not recorded)
        self.tap = tap
        self.url = url
        self.name = name
        self.topics: set[str] = set(topics)
        self.settings = settings
        self.status = status
        self.conn = ConnectionStatus(name=name, url=url, topics=len(self.topics))
        status.connections[name] = self.conn
        self.records = records
        self.validator = validator
        self._open = open_transport
        self._backoff = backoff or Backoff(settings.reconnect_interval, settings.max_backoff)
        #: a limiter shared with the venue's other connections (a per-address limit); None: each
        #: attempt paces itself with one of its own (a per-connection limit)
        self.send_limiter = send_limiter
        #: the venue's latest answer per topic, or the one still awaited: a subscribe reply for
        #: every carried topic, an unsubscribe reply while its request is outstanding
        self.ledger = ReplyLedger(self.topics)
        #: seconds after which a connection is replaced, make-before-break (None: only when the
        #: venue announces a shutdown); shards of a venue add different offsets (staggered)
        self.rotate_after = rotate_after
        self.rotate_offset = rotate_offset
        #: the symbols this connection carries, for disconnect and reconnect events (the owner
        #: knows which subscription a topic serves; by default the topic names stand in)
        self._symbols = symbols or (lambda: sorted(self.topics))
        #: the live attempts: the current one, and its replacement while a rotation overlaps them
        self._attempts: list[Attempt] = []
        self._attempt: Attempt | None = None
        #: where the attempts of one connected lifetime run (a rotation starts its successor here)
        self._lifetime: trio.Nursery | None = None
        self._ended = trio.Event()
        self._final: Outcome | None = None
        #: while two connections overlap (and shortly after): one gap-free stream of both
        self._overlap: Overlap | None = None
        #: the connection being replaced, and the event its reader sets once it has caught up
        #: with its replacement
        self.overlap_old: Attempt | None = None
        self.caught_up = trio.Event()
        #: data flowed since the last disconnect event (or since start); when the connection is
        #: lost with this set, subscribers hear of it. With ``down_since`` below, what the
        #: subscribers were told, across attempts: a fact of the connection, not an attempt's role
        self.delivering = False
        #: trio time of the disconnect event not yet followed by a reconnect one
        self.down_since: float | None = None
        #: stale_after is multiplied by this for a feed found quiet on a live socket (see
        #: feedd.feed.liveness): doubled when an attempt ends quiet, back to 1 when data flows
        self.quiet_factor = 1
        #: when the last rotation started and how many failed in a row (see feedd.feed.rotation)
        self.rotations = rotation.Rotations()
        #: the host's handshake gate (Retry-After, connect pacing), shared with every connection
        #: to the host when its owner passes one; else one of its own
        self.gate = gate or Gate(HostGate(host_of(url)), venue.venue_id, counters=status.handshakes)

    @property
    def overlap(self) -> Overlap | None:
        return self._overlap

    @overlap.setter
    def overlap(self, overlap: Overlap | None) -> None:
        if overlap is None and self._overlap is not None and self.tap is not None:
            self.tap.overlap("end")
        self._overlap = overlap

    # ---- live subscription changes ----------------------------------------------------

    def add_topics(self, names: Iterable[str]) -> None:
        """Carry more topics; subscribed at once when connected, else on the next connect."""
        new = [n for n in names if n not in self.topics]
        self.topics.update(new)
        self.conn.topics = len(self.topics)
        for name in new:
            self.ledger.replace(name, Reply("subscribe"))
        if new:
            for attempt in self._attempts:
                attempt.queue_changes("subscribe", new)

    def remove_topics(self, names: Iterable[str]) -> None:
        """Stop carrying topics; when connected, each has an unsubscribe :class:`Reply` pending."""
        gone = [n for n in names if n in self.topics]
        self.topics.difference_update(gone)
        self.conn.topics = len(self.topics)
        for name in gone:
            # when not connected, the next connect simply leaves it out: nothing to await
            self.ledger.replace(name, Reply("unsubscribe") if self._attempts else None)
        if gone:
            for attempt in self._attempts:
                attempt.queue_changes("unsubscribe", gone)

    @property
    def replies(self) -> Mapping[str, Reply]:
        """The venue's latest answer per topic, or the one still awaited: a subscribe reply for
        every carried topic, an unsubscribe reply while its request is outstanding."""
        return self.ledger.replies

    def record_reply(self, topics: Iterable[str], op: Op | Literal["error"], error: str | None) -> None:
        """Record the venue's answer; an error answers whichever request the topic awaits."""
        self.ledger.record(topics, op, error)

    def update_settings(self, settings: RunnerSettings) -> None:
        """Settings from a config reload: used from the next attempt on (the current one keeps
        its deadlines); the failure count stands."""
        self.settings = settings
        self._backoff.initial = settings.reconnect_interval
        self._backoff.ceiling = settings.max_backoff

    # ---- the supervision loop -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        conn = self.conn
        failed_logged = False
        #: when the last planned reconnect was made: they are never closer than reconnect_interval
        last_planned = -math.inf
        last_reason: str | None = None
        while True:
            settings = self.settings  # a reload may replace them between attempts
            conn.state = "connecting"
            try:
                outcome = await self._connect_once()
            except Exception as exc:  # an adapter bug must not take the venue, or the daemon, down
                log.exception("%s: internal error; treating it as a connection failure", self.name)
                outcome = Outcome(f"internal error: {exc!r}")
            await self._announce_down(outcome.reason)
            if self._backoff.failures == 0:
                failed_logged = False  # the attempt was stable: a new run of failures starts
            conn.reconnects += 1
            self.status.reconnects += 1
            conn.last_error = outcome.reason
            self.status.last_error = f"{self.name}: {outcome.reason}"
            if outcome.planned and outcome.stable:
                # a venue's scheduled cut of a healthy connection: no failure, and at once unless
                # the previous one was less than reconnect_interval ago (a venue in maintenance
                # may answer every connection so; that must never become a reconnect storm)
                now = trio.current_time()
                delay = rotation.planned_delay(last_planned, now, settings.reconnect_interval)
                last_planned = now + delay
                log.info("%s: reconnecting (%s)%s", self.name, outcome.reason,
                         f" in {delay:.1f} s" if delay else "")
                if delay:
                    conn.state = "backoff"
                    await trio.sleep(delay)
                continue
            # failures, and planned cuts of a connection that never became stable, climb the ladder;
            # a host that asked for a wait (Retry-After) gets at least that
            delay = max(self._backoff.next_delay(), self.gate.wait())
            conn.consecutive_failures = self._backoff.failures
            if settings.max_retries and self._backoff.failures >= settings.max_retries:
                conn.state = "failed"
                delay = settings.max_backoff
                if not failed_logged:
                    log.error(
                        "%s: failed after %d consecutive attempts (last: %s); retrying every %.0f s",
                        self.name, self._backoff.failures, outcome.reason, delay,
                    )
                    failed_logged = True
            else:
                conn.state = "backoff"
                # the 1st, 2nd, 4th, 8th... failure of a run, or one for a new reason: a venue down
                # for hours is a few lines, not one per retry (the status has every count)
                failures = self._backoff.failures
                news = first_of_run(failures) or outcome.reason != last_reason
                if news and not outcome.throttled:  # else the gate said it, once for every connection
                    log.warning("%s: %s; reconnecting in %.1f s%s", self.name, outcome.reason, delay,
                                f" (failure #{failures} in a row)" if failures > 1 else "")
            last_reason = outcome.reason
            await trio.sleep(delay)

    async def _connect_once(self) -> Outcome:
        """One connected lifetime: an attempt, and the replacements rotations hand it over to,
        until the current one ends without a successor; how that one ended."""
        self._ended = trio.Event()
        self._final = None
        try:
            async with trio.open_nursery() as lifetime:
                self._lifetime = lifetime
                try:
                    await lifetime.start(self._run_attempt)
                except HandshakeRefused as exc:
                    return Outcome(str(exc), throttled=self.gate.refused(exc))
                except TransportError as exc:
                    return Outcome(str(exc))
                await self._ended.wait()
                lifetime.cancel_scope.cancel()  # a replacement still connecting goes with it
        finally:
            self._lifetime = None
            self.overlap = self.overlap_old = None  # a rotation does not outlive its connections
        assert self._final is not None
        return self._final

    async def _run_attempt(self, *, task_status: trio.TaskStatus[Attempt]) -> None:
        """Connect (a failure before ``started`` goes to the caller), run the attempt, report."""
        attempt: Attempt | None = None
        try:
            async with self.opened() as transport:
                current = self._attempt is None  # else a rotation's replacement: on standby
                attempt = Attempt(self, transport, self.venue.new_session(), current=current,
                                  quiet_factor=self.quiet_factor)
                self._attempts.append(attempt)
                if current:
                    self._attempt = attempt
                task_status.started(attempt)
                outcome = Outcome("connection ended")
                try:
                    outcome = await attempt.run()
                finally:
                    self._attempts.remove(attempt)
                    attempt.session.connection_lost()
                    if self.tap is not None:
                        self.tap.closed(attempt.tap_id, outcome.reason)
                    if not self._attempts:
                        # unsubscribes still awaited are done: the connection carrying them is
                        self.ledger.connection_gone()
                    self._attempt_ended(attempt, outcome)
        except TransportError:
            if attempt is None:
                raise
            # closing it failed: how it ended is already reported

    def _attempt_ended(self, attempt: Attempt, outcome: Outcome) -> None:
        if outcome.quiet:  # the next attempt checks a quiet feed less often
            self.quiet_factor = liveness.next_quiet_factor(self.quiet_factor)
        if attempt.lifecycle.final:
            return  # rotated away (its successor carries on), or a failed replacement (reported)
        if attempt.state is not State.CURRENT:
            # a replacement that ended before it took over: the current connection carries on
            log.warning("%s: rotation failed: its replacement ended (%s); the current connection "
                        "carries on", self.name, outcome.reason)
            return
        # not one the rotation gave up that has yet to close: taking over, it would end with no
        # outcome, and the runner would wait for one for ever
        successors = [a for a in self._attempts if not a.lifecycle.final]
        if successors:
            # the venue cut the old connection while its replacement was already subscribed
            attempt.fire(Trigger.HAND_OVER)
            self._hand_over(successors[0])
            self._rotated(f"{outcome.reason}; the replacement took over")
            return
        self._attempt = None
        self._final = outcome
        self._ended.set()

    # ---- make-before-break rotation -----------------------------------------------------

    async def rotate(self, old: Attempt, reason: str) -> float | None:
        """Replace ``old``: connect and subscribe a successor, wait for its first data (or, for
        a quiet feed, its acknowledgements) and for ``old`` to catch up with it, hand over, then
        close ``old``. None when done; if the successor failed, ``old`` carries on, having lost
        nothing, and the seconds to wait before the next try are returned.

        See :mod:`feedd.feed.overlap` for how the records of both become one stream.
        """
        lifetime = self._lifetime
        if lifetime is None:
            return self._rotation_failed()
        log.info("%s: rotating (%s): connecting its replacement", self.name, reason)
        self.rotations.started(trio.current_time())
        self.conn.rotating = True
        overlap = self.overlap = Overlap()
        self.overlap_old = old
        if self.tap is not None:
            self.tap.overlap("start", old=old.tap_id)
        self.caught_up = trio.Event()
        try:
            try:
                new: Attempt = await lifetime.start(self._run_attempt)
            except TransportError as exc:
                if isinstance(exc, HandshakeRefused):
                    self.gate.refused(exc)  # the next try waits what the host asked
                log.warning("%s: rotation failed: cannot connect its replacement (%s); the current "
                            "connection carries on", self.name, exc)
                self.overlap = None
                return self._rotation_failed()
            wait = self.settings.stale_after
            with trio.move_on_after(wait):
                await new.wait_until(lambda state: state is not State.STANDBY)
            if new.state is State.STANDBY and new.acked >= self.topics and new.end_reason is None:
                # a quiet feed: every stream acknowledged is as good as data, and waiting for
                # an illiquid symbol's next trade could take longer than the old one has left
                reason += "; quiet feed, replacement acknowledged"
                new.fire(Trigger.READY)
            if new.end_reason is not None or new.state is State.STANDBY:
                why = new.end_reason or f"delivered nothing within {wait:g} s"
                new.fire(Trigger.ABANDON)
                new.end("replacement delivered nothing")
                log.warning("%s: rotation failed: its replacement %s; the current connection carries on",
                            self.name, why)
                self.overlap = None  # the old one delivered everything; what was held goes
                return self._rotation_failed()
            with trio.move_on_after(CATCH_UP):
                await self.caught_up.wait()
                # what the old one read is in the hub's queue before what the new one held (a
                # full queue: its reader still waits for room; cutting it now would lose that)
                await old.delivered()
            if not overlap.caught_up and overlap.held:
                log.warning("%s: rotation: the old connection did not catch up with its replacement "
                            "within %g s; handing over anyway (records between may be missing)",
                            self.name, CATCH_UP)
            old.fire(Trigger.HAND_OVER)
            self._hand_over(new)
            old.end(f"rotated ({reason})", planned=True)
            self._rotated(reason)
            self.rotations.succeeded()
            return None
        finally:
            # cancelled (the old connection died mid-rotation): the overlap stays, for the
            # replacement to take over with what it holds (_attempt_ended)
            self.conn.rotating = False

    def _rotation_failed(self) -> float:
        settings = self.settings
        return self.rotations.failed(settings.reconnect_interval, settings.max_backoff)

    def _hand_over(self, new: Attempt) -> None:
        """``new`` is the connection from now on: deliver what it held beyond what went out.

        The held records go to the hub before anything ``new`` reads next: at once, or, when the
        hub's ingress is full, from a task of their own that ``new``'s reader waits for (its
        :attr:`~Attempt.handed`) before it delivers its next batch. (A task alone would not keep
        the order: the reader, already runnable, could take the first free slot.)
        """
        new.fire(Trigger.TAKE_OVER)
        self._attempt = new
        overlap = self.overlap
        if overlap is None:
            return
        held = overlap.switch()
        if held and self.backfill is not None:
            held = self.backfill.sift(held)  # the tracker sees every trade delivered, these too
        if self.tap is not None:
            self.tap.overlap("switch")
        if held:
            try:
                self.records.send_nowait(held)  # before the replacement's next read, in order
            except trio.WouldBlock:
                if self._lifetime is not None:
                    new.handed = trio.Event()
                    self._lifetime.start_soon(_deliver, self.records, held, new.handed)

    def _rotated(self, reason: str) -> None:
        """De-duplicate a while longer: the replacement repeats what the old one delivered last."""
        self.conn.rotations += 1
        self.status.rotations += 1
        log.info("%s: rotated (%s)", self.name, reason)
        if self._lifetime is not None and self.overlap is not None:
            self._lifetime.start_soon(self._end_overlap, self.overlap)

    async def _end_overlap(self, overlap: Overlap) -> None:
        await trio.sleep(OVERLAP_GRACE)
        if self.overlap is overlap:
            self.overlap = None
            if overlap.dropped:
                log.debug("%s: rotation overlap: %d copies dropped", self.name, overlap.dropped)

    # ---- disconnect and reconnect events --------------------------------------------------

    async def _announce_down(self, reason: str) -> None:
        """Tell consumers the symbols of this connection stop, if data was flowing."""
        if not self.delivering:
            return
        self.delivering = False
        self.down_since = trio.current_time()
        event = Disconnected(self.venue.venue_id, tuple(self._symbols()), datetime.now(UTC), reason)
        if self.tap is not None:
            self.tap.event(event)
        await self.records.send(event)

    def announce_up(self) -> Reconnected | None:
        """Data flows (again): the reconnect event to put before it, if a disconnect was told."""
        self.delivering = True
        self.quiet_factor = 1
        down, self.down_since = self.down_since, None
        if down is None:
            return None
        if self.backfill is not None:
            self.backfill.broken(self._symbols())  # trades may be missing since the last ones
        event = Reconnected(self.venue.venue_id, tuple(self._symbols()), datetime.now(UTC),
                            trio.current_time() - down)
        if self.tap is not None:
            self.tap.event(event)
        return event

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Transport]:
        """A transport to :attr:`url`, opened through the host's gate: after any wait the host
        asked for and within the venue's connect limit. Every handshake goes through here (a
        rotation's second connection too). A refusal raises :class:`HandshakeRefused`; hand it
        to ``self.gate.refused``."""
        await self.gate.before_connect()
        async with self._open(self.url, connect_timeout=self.settings.connect_timeout) as transport:
            self.gate.accepted()
            yield transport

    def symbols(self) -> Sequence[str]:
        """The symbols this connection carries."""
        return self._symbols()

    def mark_stable(self) -> None:
        """The current attempt kept delivering for ``stable_after``: failures start over."""
        if self._backoff.failures:
            log.info("%s: stable again after %d failures", self.name, self._backoff.failures)
        self._backoff.reset()
        self.conn.consecutive_failures = 0
        self.conn.stable = True


async def _deliver(records: trio.MemorySendChannel[Ingress], batch: Batch, delivered: trio.Event) -> None:
    try:
        await records.send(batch)
    finally:
        delivered.set()
