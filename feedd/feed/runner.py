"""The generic connection runner: the one place where WebSocket I/O, deadlines, heartbeats and
reconnects live, for every venue.

One :class:`ConnectionRunner` owns one connection (a shard of a venue's topics) for the life of
the daemon. Each connect-to-close of it is an :class:`_Attempt` with its own cancel scope and
tasks:

- reader: receives a batch of frames, decodes and validates it in place and hands the records to
  the hub. Decoding is CPU work that never blocks, so doing it here costs no responsiveness and
  saves a task hop per batch; and no frame is ever dropped between socket and hub (control
  frames included). The only wait is the hub's bounded ingress, which fills only when the hub
  itself is CPU-bound; sinks never block the hub, so a slow consumer never reaches this far.
- sender: the only writer; paces every outgoing frame to the venue's message limit (its own
  limiter, or one its owner shares between connections when the venue counts per address), and
  turns the subscription changes queued meanwhile into as few requests as the venue allows.
- watchdog: ends the attempt when no frame has arrived for ``stale_after`` seconds.
- pinger (if the venue has a ping): sends it when the feed is idle, or on a fixed schedule, and
  ends the attempt when a pong the venue owes does not come within ``pong_timeout``.

Any of them ends the attempt by naming a reason and cancelling its scope; the runner then waits
out an exponential backoff with jitter and connects again, resubscribing every topic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from itertools import groupby
from operator import itemgetter
from typing import Literal

import attrs
import trio

from feedd.errors import TransportError
from feedd.exchanges.base import (
    DecodeError,
    Heartbeat,
    Op,
    Pong,
    Reconnect,
    Retry,
    SequenceGap,
    Session,
    SubscribeAck,
    SubscribeError,
    Venue,
)
from feedd.feed.backoff import Backoff
from feedd.feed.gates import Gate, HostGate, host_of
from feedd.feed.overlap import Overlap
from feedd.feed.ratelimit import SlidingWindowLimiter
from feedd.feed.status import ConnectionStatus, VenueStatus
from feedd.feed.validate import Validator
from feedd.model import Batch, Disconnected, Frame, Ingress, MarketData, Reconnected
from feedd.wire.transport import OpenTransport, Transport, open_transport
from feedd.wire.upgrade import HandshakeRefused

log = logging.getLogger(__name__)

#: outgoing frames an attempt may have queued (subscribe batches and pings: a handful)
OUTGOING_BUFFER = 1024
#: sends per window left free for the transport's own control frames (pongs count at Binance)
CONTROL_HEADROOM = 1
#: seconds added to the window of a limit shared by connections: the venue counts their messages
#: as they arrive, over separate TCP streams, so one sent earlier may arrive after one sent later;
#: a window exactly the venue's would let such a spread put one message too many into its second
ARRIVAL_SPREAD = 0.5
#: seconds a rotation's de-duplication outlasts the old connection (the new one repeats what the
#: old one delivered last)
OVERLAP_GRACE = 5.0
#: seconds the old connection has, once the replacement delivers, to catch up with it
CATCH_UP = 5.0
#: reads with data it takes (besides a steady flow) to call a feed busy: its silence is then a
#: stall even while heartbeats come (see _Attempt._busy)
BUSY_READS = 10
#: the most a quiet feed's stale_after is stretched (see _Attempt._watchdog)
QUIET_MAX_FACTOR = 8
#: the status' ``subscription_errors`` key of the last error tied to no request (cleared when the
#: venue next acknowledges one)
UNATTRIBUTED = "<unattributed>"


def send_limiter(venue: Venue, *, shared: bool = False) -> SlidingWindowLimiter:
    """A limiter within the venue's message limit, control frames aside: for one connection's
    sends, or (``shared``) for those of every connection from one address."""
    limit = max(1, math.floor(venue.max_messages_per_second) - CONTROL_HEADROOM)
    return SlidingWindowLimiter(limit, window=1.0 + (ARRIVAL_SPREAD if shared else 0.0))


@attrs.frozen
class RunnerSettings:
    reconnect_interval: float = 5.0
    max_backoff: float = 300.0
    max_retries: int = 10
    stale_after: float = 30.0
    stable_after: float = 10.0
    connect_timeout: float = 10.0


#: on the outgoing channel: "build requests from the queued subscription changes now"
_FLUSH = None


@attrs.define(eq=False)
class Reply:
    """The venue's answer to one topic's subscribe or unsubscribe request, for whoever awaits it.

    ``done`` is set by the matching :class:`SubscribeAck` or :class:`SubscribeError`; ``error``
    then holds the venue's reason, or None when it agreed. A subscribe reply stays pending across
    reconnects (the topic is resubscribed on every connect) until the venue answers, or until
    the topic is unsubscribed first: then it is ``withdrawn``, which is no answer of the venue's.
    """

    op: Op
    done: trio.Event = attrs.field(factory=trio.Event)
    error: str | None = None
    withdrawn: bool = False

    def resolve(self, error: str | None) -> None:
        self.error = error
        self.done.set()

    def withdraw(self) -> None:
        self.withdrawn = True
        self.done.set()


@attrs.frozen
class _Outcome:
    """How an attempt ended: why, whether the venue asked for it, and whether it had been stable
    (``throttled``: the host refused the handshake with a wait, which its gate logged)."""

    reason: str
    planned: bool = False
    stable: bool = False
    throttled: bool = False


def _first_of_run(count: int) -> bool:
    """1, 2, 4, 8, ...: log a repeating problem without flooding the log."""
    return count & (count - 1) == 0


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
    ) -> None:
        self.venue = venue
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
        self.replies: dict[str, Reply] = {name: Reply("subscribe") for name in self.topics}
        #: seconds after which a connection is replaced, make-before-break (None: only when the
        #: venue announces a shutdown); shards of a venue add different offsets (staggered)
        self.rotate_after = rotate_after
        self.rotate_offset = rotate_offset
        #: the symbols this connection carries, for disconnect and reconnect events (the owner
        #: knows which subscription a topic serves; by default the topic names stand in)
        self._symbols = symbols or (lambda: sorted(self.topics))
        #: the live attempts: the current one, and its replacement while a rotation overlaps them
        self._attempts: list[_Attempt] = []
        self._attempt: _Attempt | None = None
        #: where the attempts of one connected lifetime run (a rotation starts its successor here)
        self._lifetime: trio.Nursery | None = None
        self._ended = trio.Event()
        self._final: _Outcome | None = None
        #: while two connections overlap (and shortly after): one gap-free stream of both
        self.overlap: Overlap | None = None
        #: the connection being replaced, and the event its reader sets once it has caught up
        #: with its replacement
        self.overlap_old: _Attempt | None = None
        self.caught_up = trio.Event()
        #: data flowed since the last disconnect event (or since start); when the connection is
        #: lost with this set, subscribers hear of it
        self.delivering = False
        #: trio time of the disconnect event not yet followed by a reconnect one
        self.down_since: float | None = None
        #: stale_after is multiplied by this for a feed found quiet on a live socket (see _Attempt)
        self.quiet_factor = 1
        #: when the last rotation started (they are never closer than reconnect_interval: a venue
        #: in maintenance may announce a shutdown on every connection), and rotations that
        #: failed in a row (each waits twice as long before the next try)
        self.last_rotation = -math.inf
        self.rotation_failures = 0
        #: the host's handshake gate (Retry-After, connect pacing), shared with every connection
        #: to the host when its owner passes one; else one of its own
        self.gate = gate or Gate(HostGate(host_of(url)), venue.venue_id, counters=status.handshakes)

    # ---- live subscription changes ----------------------------------------------------

    def add_topics(self, names: Iterable[str]) -> None:
        """Carry more topics; subscribed at once when connected, else on the next connect."""
        new = [n for n in names if n not in self.topics]
        self.topics.update(new)
        self.conn.topics = len(self.topics)
        for name in new:
            self._replace_reply(name, Reply("subscribe"))
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
            self._replace_reply(name, Reply("unsubscribe") if self._attempts else None)
        if gone:
            for attempt in self._attempts:
                attempt.queue_changes("unsubscribe", gone)

    def _replace_reply(self, name: str, reply: Reply | None) -> None:
        """A new request for ``name`` settles the one still awaited: its answer would not say
        anything about the topic any more."""
        old = self.replies.pop(name, None)
        if old is not None and not old.done.is_set():
            if old.op == "unsubscribe":
                old.resolve(None)
            else:
                old.withdraw()
        if reply is not None:
            self.replies[name] = reply

    def record_reply(self, topics: Iterable[str], op: Op | Literal["error"], error: str | None) -> None:
        """Record the venue's answer; an error answers whichever request the topic awaits."""
        for name in topics:
            reply = self.replies.get(name)
            if reply is None or (op != "error" and reply.op != op):
                continue
            if reply.op == "unsubscribe":
                del self.replies[name]
            elif reply.done.is_set():  # a later answer (after a reconnect) replaces the old one
                reply = self.replies[name] = Reply("subscribe")
            reply.resolve(error)

    def _connection_gone(self) -> None:
        """Unsubscribes still awaiting an answer are done: the connection that carried them is."""
        for name in [n for n, r in self.replies.items() if r.op == "unsubscribe"]:
            self.replies.pop(name).resolve(None)

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
                outcome = _Outcome(f"internal error: {exc!r}")
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
                delay = max(0.0, last_planned + settings.reconnect_interval - now)
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
                news = _first_of_run(failures) or outcome.reason != last_reason
                if news and not outcome.throttled:  # else the gate said it, once for every connection
                    log.warning("%s: %s; reconnecting in %.1f s%s", self.name, outcome.reason, delay,
                                f" (failure #{failures} in a row)" if failures > 1 else "")
            last_reason = outcome.reason
            await trio.sleep(delay)

    async def _connect_once(self) -> _Outcome:
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
                    return _Outcome(str(exc), throttled=self.gate.refused(exc))
                except TransportError as exc:
                    return _Outcome(str(exc))
                await self._ended.wait()
                lifetime.cancel_scope.cancel()  # a replacement still connecting goes with it
        finally:
            self._lifetime = None
            self.overlap = self.overlap_old = None  # a rotation does not outlive its connections
        assert self._final is not None
        return self._final

    async def _run_attempt(self, *, task_status: trio.TaskStatus[_Attempt]) -> None:
        """Connect (a failure before ``started`` goes to the caller), run the attempt, report."""
        attempt: _Attempt | None = None
        try:
            async with self.opened() as transport:
                attempt = _Attempt(self, transport, self.venue.new_session())
                self._attempts.append(attempt)
                if self._attempt is None:
                    self._attempt = attempt
                    attempt.current.set()
                task_status.started(attempt)
                outcome = _Outcome("connection ended")
                try:
                    outcome = await attempt.run()
                finally:
                    self._attempts.remove(attempt)
                    attempt.session.connection_lost()
                    if not self._attempts:
                        self._connection_gone()
                    self._attempt_ended(attempt, outcome)
        except TransportError:
            if attempt is None:
                raise
            # closing it failed: how it ended is already reported

    def _attempt_ended(self, attempt: _Attempt, outcome: _Outcome) -> None:
        if attempt.replaced or attempt.abandoned:
            return  # rotated away (its successor carries on), or a failed replacement (reported)
        if attempt is not self._attempt:
            # a replacement that ended before it took over: the current connection carries on
            log.warning("%s: rotation failed: its replacement ended (%s); the current connection "
                        "carries on", self.name, outcome.reason)
            return
        if self._attempts:
            # the venue cut the old connection while its replacement was already subscribed
            self._hand_over(self._attempts[0])
            self._rotated(f"{outcome.reason}; the replacement took over")
            return
        self._attempt = None
        self._final = outcome
        self._ended.set()

    # ---- make-before-break rotation -----------------------------------------------------

    async def rotate(self, old: _Attempt, reason: str) -> bool:
        """Replace ``old``: connect and subscribe a successor, wait for its first data (or, for
        a quiet feed, its acknowledgements) and for ``old`` to catch up with it, hand over, then
        close ``old``. False if the successor failed; ``old`` carries on, having lost nothing.

        See :mod:`feedd.feed.overlap` for how the records of both become one stream.
        """
        lifetime = self._lifetime
        if lifetime is None:
            return False
        log.info("%s: rotating (%s): connecting its replacement", self.name, reason)
        self.last_rotation = trio.current_time()
        self.conn.rotating = True
        overlap = self.overlap = Overlap()
        self.overlap_old = old
        self.caught_up = trio.Event()
        try:
            try:
                new: _Attempt = await lifetime.start(self._run_attempt)
            except TransportError as exc:
                if isinstance(exc, HandshakeRefused):
                    self.gate.refused(exc)  # the next try waits what the host asked
                log.warning("%s: rotation failed: cannot connect its replacement (%s); the current "
                            "connection carries on", self.name, exc)
                self.overlap = None
                return False
            wait = self.settings.stale_after
            with trio.move_on_after(wait):
                await new.ready.wait()
            if not new.ready.is_set() and new.acked >= self.topics and new.end_reason is None:
                # a quiet feed: every stream acknowledged is as good as data, and waiting for
                # an illiquid symbol's next trade could take longer than the old one has left
                reason += "; quiet feed, replacement acknowledged"
                new.ready.set()
            if new.end_reason is not None or not new.ready.is_set():
                why = new.end_reason or f"delivered nothing within {wait:g} s"
                new.abandoned = True
                new.end("replacement delivered nothing")
                log.warning("%s: rotation failed: its replacement %s; the current connection carries on",
                            self.name, why)
                self.overlap = None  # the old one delivered everything; what was held goes
                return False
            with trio.move_on_after(CATCH_UP):
                await self.caught_up.wait()
            if not overlap.caught_up and overlap.held:
                log.warning("%s: rotation: the old connection did not catch up with its replacement "
                            "within %g s; handing over anyway (records between may be missing)",
                            self.name, CATCH_UP)
            self._hand_over(new)
            old.replaced = True
            old.end(f"rotated ({reason})", planned=True)
            self._rotated(reason)
            self.rotation_failures = 0
            return True
        finally:
            # cancelled (the old connection died mid-rotation): the overlap stays, for the
            # replacement to take over with what it holds (_attempt_ended)
            self.conn.rotating = False

    def _hand_over(self, new: _Attempt) -> None:
        """``new`` is the connection from now on: deliver what it held beyond what went out."""
        self._attempt = new
        new.current.set()
        overlap = self.overlap
        if overlap is None:
            return
        held = overlap.switch()
        if held:
            try:
                self.records.send_nowait(held)  # before the replacement's next read, in order
            except trio.WouldBlock:
                if self._lifetime is not None:
                    self._lifetime.start_soon(self.records.send, held)

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
        await self.records.send(event)

    def announce_up(self) -> Reconnected | None:
        """Data flows (again): the reconnect event to put before it, if a disconnect was told."""
        self.delivering = True
        self.quiet_factor = 1
        down, self.down_since = self.down_since, None
        if down is None:
            return None
        return Reconnected(self.venue.venue_id, tuple(self._symbols()), datetime.now(UTC),
                           trio.current_time() - down)

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

    def mark_stable(self) -> None:
        """The current attempt kept delivering for ``stable_after``: failures start over."""
        if self._backoff.failures:
            log.info("%s: stable again after %d failures", self.name, self._backoff.failures)
        self._backoff.reset()
        self.conn.consecutive_failures = 0
        self.conn.stable = True


class _Attempt:
    """One connect-to-close of a connection: its tasks and the state they share."""

    def __init__(self, runner: ConnectionRunner, transport: Transport, session: Session) -> None:
        self.runner = runner
        self.transport = transport
        self.session = session
        self.outgoing, self._to_send = trio.open_memory_channel[Frame | None](OUTGOING_BUFFER)
        #: live subscription changes not yet sent, in order
        self.changes: list[tuple[Op, str]] = []
        self.flush_queued = False
        self.scope = trio.CancelScope()
        self.end_reason: str | None = None
        self.planned = False
        self.connected_at = trio.current_time()
        self.stable = False
        #: set by the reader when a Pong arrives; replaced for every ping that awaits one
        self.pong = trio.Event()
        #: trio times of the last data frame (records, kept or refused) and of the last proof
        #: that the feed (not just the socket) is alive: a heartbeat channel, an idle probe's answer
        self.last_data_at: float | None = None
        self.last_proof_at: float | None = None
        #: when the first data frame came, how many reads brought data and the longest silence
        #: between two of them: a busy feed's silence is a stall even while its heartbeats come
        self.first_data_at: float | None = None
        self.data_reads = 0
        self.longest_silence = 0.0
        #: the last pong the venue owed (its socket answers, whatever the feed does)
        self.last_pong_at: float | None = None
        #: topics the venue acknowledged on this connection
        self.acked: set[str] = set()
        #: set at the first data frame, or once every topic is acknowledged on a quiet feed:
        #: a replacement is ready to take over
        self.ready = trio.Event()
        #: set to rotate now (the venue announced a shutdown), with why
        self.rotate_now = trio.Event()
        self.rotate_reason = ""
        #: handed over to a successor by a rotation; a replacement given up by one
        self.replaced = False
        self.abandoned = False
        #: set once it is the runner's current connection (a replacement: once it took over)
        self.current = trio.Event()

    def end(self, reason: str, *, planned: bool = False) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self.planned = planned
        self.scope.cancel()

    def queue_changes(self, op: Op, names: list[str]) -> None:
        """Hand live changes to the sender, which batches whatever accumulated by its next slot.

        Subscribing symbols one API call at a time thus costs a handful of requests, not one per
        symbol paced at the venue's few messages per second.
        """
        self.changes.extend((op, name) for name in names)
        if self.flush_queued:
            return
        try:
            self.outgoing.send_nowait(_FLUSH)
            self.flush_queued = True
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            # the attempt is ending or hopelessly behind: the next connect sends every topic
            self.end("outgoing queue full")

    async def run(self) -> _Outcome:
        runner = self.runner
        conn = runner.conn
        conn.state = "connected"
        conn.last_frame_at = None
        conn.stable = False
        topics = sorted(runner.topics)
        log.info("%s: connected to %s; subscribing %d stream(s)", runner.name, runner.url, len(topics))
        for frame in self.session.subscribe(topics):
            self.outgoing.send_nowait(frame)
        venue = runner.venue
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader)
                nursery.start_soon(self._sender)
                nursery.start_soon(self._watchdog)
                nursery.start_soon(self._rotator)
                if venue.ping_interval is not None:
                    interval = venue.ping_interval
                    if venue.ping_mode == "idle":
                        # idle probes must come well before the watchdog would give up
                        interval = min(interval, runner.settings.stale_after / 2)
                    nursery.start_soon(self._pinger, interval)
        return _Outcome(self.end_reason or "connection ended", self.planned, self.stable)

    async def _reader(self) -> None:
        runner = self.runner
        conn = runner.conn
        status = runner.status
        rejected = status.rejected
        check = runner.validator.reason
        decode = self.session.decode
        on_control = self._on_control
        receive = self.transport.receive_batch
        to_hub = runner.records.send
        to_hub_now = runner.records.send_nowait
        now = datetime.now
        stable_at = self.connected_at + runner.settings.stable_after
        while True:
            try:
                batch = await receive()
            except TransportError as exc:
                # everything read before the close was returned (and delivered) first
                self.end(str(exc))
                return
            conn.last_frame_at = trio.current_time()
            received_at = now(UTC)
            records: Batch = []
            keep = records.append
            data = False
            for frame in batch:
                for event in decode(frame, received_at):
                    if type(event) is MarketData:
                        data = True
                        reason = check(event)
                        if reason is None:
                            keep(event)
                        else:
                            rejected[reason] += 1
                    else:
                        on_control(event)
            status.frames += len(batch)
            # stable = frames kept arriving for stable_after (an idle feed's probe replies count)
            if not self.stable and conn.last_frame_at >= stable_at:
                self.stable = True
                runner.mark_stable()
            if data:
                at = conn.last_frame_at
                if self.last_data_at is None:
                    self.first_data_at = at
                elif at - self.last_data_at > self.longest_silence:
                    self.longest_silence = at - self.last_data_at
                self.last_data_at = conn.last_data_at = at
                self.data_reads += 1
                if not self.ready.is_set():
                    self.ready.set()
            if records:
                overlap = runner.overlap
                if overlap is not None:
                    records = overlap.old(records) if self is runner.overlap_old else overlap.new(records)
                    if overlap.caught_up:
                        runner.caught_up.set()
                    if not records:
                        continue
                if not runner.delivering and (up := runner.announce_up()) is not None:
                    await to_hub(up)
                status.messages += len(records)
                # no checkpoint of its own: the next read is one, and the hub runs meanwhile;
                # a full or closed channel takes the awaiting path (which also sees cancellation)
                try:
                    to_hub_now(records)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    await to_hub(records)

    def _on_control(self, event: object) -> None:
        runner = self.runner
        status = runner.status
        name = runner.name
        if isinstance(event, Pong):
            self.pong.set()
            self.last_pong_at = trio.current_time()
        elif isinstance(event, Heartbeat):
            self.last_proof_at = trio.current_time()
        elif isinstance(event, DecodeError):
            status.decode_errors += 1
            if _first_of_run(status.decode_errors):
                log.warning("%s: undecodable frame #%d: %s [%s]",
                            name, status.decode_errors, event.reason, event.frame)
        elif isinstance(event, SubscribeError):
            if event.topics:
                status.last_error = f"{name}: subscription refused: {event.reason}"
                for topic in event.topics:
                    status.subscription_errors[topic] = event.reason
                log.warning("%s: subscription refused (%s): %s", name, ", ".join(event.topics), event.reason)
                runner.record_reply(event.topics, "error", event.reason)
            else:
                # the adapter could not tie it to a request: it may not be about subscribing at all
                status.last_error = f"{name}: venue error, tied to no request: {event.reason}"
                status.subscription_errors[UNATTRIBUTED] = event.reason
                log.warning("%s: venue error, tied to no request: %s", name, event.reason)
        elif isinstance(event, Retry):
            # only what is still wanted: the user may have changed a topic since the request
            wanted = event.op == "subscribe"
            again = [topic for topic in event.topics if (topic in runner.topics) is wanted]
            if again:
                log.info("%s: %s %d topic(s) again after a refused request (%s)",
                         name, event.op, len(again), event.reason)
                self.queue_changes(event.op, again)
        elif isinstance(event, SubscribeAck):
            # the venue answers requests again: an error tied to none before it is past
            status.subscription_errors.pop(UNATTRIBUTED, None)
            if event.op == "subscribe":
                for topic in event.topics:
                    status.subscription_errors.pop(topic, None)
            runner.record_reply(event.topics, event.op, None)
            if event.op == "subscribe":
                self.acked.update(event.topics)
            else:
                self.acked.difference_update(event.topics)
        elif isinstance(event, SequenceGap):
            status.sequence_gaps += 1
            status.messages_missed += event.missed
            if _first_of_run(status.sequence_gaps):
                log.warning("%s: sequence gap #%d: %d message(s) missed (%s)",
                            name, status.sequence_gaps, event.missed, event.detail)
        elif isinstance(event, Reconnect):
            # make-before-break: the rotator connects a replacement before this one is cut
            self.rotate_reason = f"venue announced {event.reason}"
            self.rotate_now.set()
        # Ignored (and Pong) prove the socket, which the reader already noted, not the feed.

    async def _sender(self) -> None:
        limiter = self.runner.send_limiter or send_limiter(self.runner.venue)
        send = self.transport.send
        try:
            async for item in self._to_send:
                await limiter.acquire()
                if item is not _FLUSH:
                    await send(item)
                    continue
                # changes queued while we waited for this slot all go out together
                self.flush_queued = False
                changes, self.changes = self.changes, []
                requests = [
                    frame
                    for op, run in groupby(changes, key=itemgetter(0))
                    for frame in self._build(op, [name for _, name in run])
                ]
                for index, frame in enumerate(requests):
                    if index:
                        await limiter.acquire()
                    await send(frame)
        except TransportError as exc:
            self.end(str(exc))

    def _build(self, op: Op, names: list[str]) -> list[Frame]:
        return self.session.subscribe(names) if op == "subscribe" else self.session.unsubscribe(names)

    async def _watchdog(self) -> None:
        """End the attempt when the feed has been silent for ``stale_after``: data frames and
        proofs of the feed (a heartbeat channel, an idle probe's answer) count, not pongs or acks,
        which prove only the socket. The proofs keep a sparse feed (an illiquid symbol) open; a
        busy one that falls silent is stalled, heartbeats or not.

        A venue with neither (Bybit: its pongs prove only the socket) cannot tell a quiet feed
        from a stalled one: when the feed is silent while pongs keep coming and every stream is
        acknowledged, it may be an illiquid symbol. Such an attempt is reconnected as a planned
        cut, not a failure, and the next one waits twice as long (up to ``QUIET_MAX_FACTOR``
        times), so a quiet symbol never makes a reconnect loop while a stall is still noticed.
        """
        runner = self.runner
        conn = runner.conn
        stale_after = runner.settings.stale_after * runner.quiet_factor
        start = self.connected_at
        while True:
            proof = None if self._busy(stale_after) else self.last_proof_at
            deadline = max(self.last_data_at or start, proof or start) + stale_after
            now = trio.current_time()
            if now < deadline:
                await trio.sleep_until(deadline)  # the deadline moves with every data frame
                continue
            pongs = self.last_pong_at is not None and now - self.last_pong_at < stale_after
            socket_alive = conn.last_frame_at is not None and now - conn.last_frame_at < stale_after
            if pongs and self.last_data_at is None and self.last_proof_at is None \
                    and self.acked >= runner.topics:
                runner.quiet_factor = min(QUIET_MAX_FACTOR, runner.quiet_factor * 2)
                self.stable = True
                self.end(f"quiet feed: no data for {stale_after:g} s, the socket alive; checking "
                         f"again after {runner.settings.stale_after * runner.quiet_factor:g} s",
                         planned=True)
                return
            alive = " (the socket alive: heartbeats, no data)" if socket_alive else ""
            self.end(f"stale feed: no data for {stale_after:g} s{alive}")
            return

    def _busy(self, stale_after: float) -> bool:
        """For at least ``stale_after`` and ``BUSY_READS`` reads, data never paused longer than
        a third of ``stale_after``: then a whole ``stale_after`` without data is a stall,
        whatever the heartbeats say. A sparse or bursty feed's silence may be its market's (the
        heartbeats count)."""
        if self.data_reads < BUSY_READS or self.first_data_at is None or self.last_data_at is None:
            return False
        observed = self.last_data_at - self.first_data_at
        return observed >= stale_after and self.longest_silence * 3 <= stale_after

    async def _rotator(self) -> None:
        """Rotate at ``rotate_after`` (plus this shard's offset) or when the venue announces a
        shutdown, never sooner than ``reconnect_interval`` after the previous rotation; a failed
        one is tried again after ``reconnect_interval``, doubling while they keep failing (up
        to ``max_backoff``)."""
        runner = self.runner
        while True:
            rotate_after = runner.rotate_after
            due = math.inf
            if rotate_after is not None:
                due = self.connected_at + rotate_after + runner.rotate_offset
            with trio.move_on_at(due):
                await self.rotate_now.wait()
            reason = self.rotate_reason or f"scheduled, after {rotate_after:g} s"
            await trio.sleep_until(runner.last_rotation + runner.settings.reconnect_interval)
            if not self.current.is_set():
                await self.current.wait()  # still taking over from its predecessor: then its turn
                continue
            if await runner.rotate(self, reason):
                return
            runner.rotation_failures += 1  # a venue's shutdown notice stands: rotate_now stays set
            settings = runner.settings
            backoff = settings.reconnect_interval * 2 ** (runner.rotation_failures - 1)
            backoff = min(settings.max_backoff, backoff)
            await trio.sleep(max(backoff, runner.gate.wait()))  # and whatever its host asked

    async def _pinger(self, interval: float) -> None:
        """Send the venue's ping as its ``ping_mode`` says; await the pong it owes, if any."""
        venue = self.runner.venue
        conn = self.runner.conn
        idle_only = venue.ping_mode == "idle"
        pong_timeout = venue.pong_timeout
        last_ping = self.connected_at
        while True:
            since = max(conn.last_frame_at or self.connected_at, last_ping) if idle_only else last_ping
            due = since + interval
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            frame = self.session.ping()
            if frame is None:
                return
            last_ping = trio.current_time()
            self.pong = trio.Event()
            try:
                self.outgoing.send_nowait(frame)
            except trio.WouldBlock:
                self.end("outgoing queue full")
                return
            if pong_timeout is not None:
                with trio.move_on_after(pong_timeout):
                    await self.pong.wait()
                if not self.pong.is_set():
                    self.end(f"no pong within {pong_timeout:g} s of a ping")
                    return
