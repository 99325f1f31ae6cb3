"""One connect-to-close of a connection (an :class:`Attempt`): its tasks and the state they share.

A :class:`~feedd.feed.runner.ConnectionRunner` makes an attempt for each connection it opens (two
at once while a rotation overlaps them). The attempt's tasks:

- reader: receives a batch of frames, decodes and validates it in place and hands the records to
  the hub. Decoding is CPU work that never blocks, so doing it here costs no responsiveness and
  saves a task hop per batch; and no frame is ever dropped between socket and hub (control
  frames included). The only wait is the hub's bounded ingress, which fills only when the hub
  itself is CPU-bound; sinks never block the hub, so a slow consumer never reaches this far.
- sender: the only writer; paces every outgoing frame to the venue's message limit (its own
  limiter, or one its owner shares between connections when the venue counts per address), and
  turns the subscription changes queued meanwhile into as few requests as the venue allows.
- watchdog: ends the attempt when the feed has been silent too long (:mod:`feedd.feed.liveness`).
- rotator: asks the runner to replace the connection when it is due (:mod:`feedd.feed.rotation`).
- pinger (if the venue has a ping): sends it when the feed is idle, or on a fixed schedule, and
  ends the attempt when a pong the venue owes does not come within ``pong_timeout``.

Any of them ends the attempt by naming a reason and cancelling its scope; the runner hears how
it ended (an :class:`Outcome`). The attempt's role in its connection (current, a replacement,
replaced...) is a :class:`~feedd.feed.lifecycle.Lifecycle`, moved only along its table.

The attempt reads its runner (topics, settings, status, the overlap of a rotation) and calls its
methods; it writes none of the runner's fields.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import groupby
from operator import itemgetter
from typing import TYPE_CHECKING

import attrs
import trio

from feedd.errors import TransportError, first_of_run
from feedd.exchanges.base import (
    DecodeError,
    Heartbeat,
    Op,
    Pong,
    Retry,
    Rotate,
    SequenceGap,
    Session,
    SubscribeAck,
    SubscribeRejected,
    Venue,
)
from feedd.feed import liveness, rotation
from feedd.feed.lifecycle import Lifecycle, State, Trigger
from feedd.feed.ratelimit import SlidingWindowLimiter
from feedd.model import Batch, Ingress, MarketData, Message
from feedd.wire.transport import Transport

if TYPE_CHECKING:
    from feedd.feed.runner import ConnectionRunner

log = logging.getLogger("feedd.feed.runner")

#: outgoing frames an attempt may have queued (subscribe batches and pings: a handful)
OUTGOING_BUFFER = 1024
#: sends per window left free for the transport's own control frames (pongs count at Binance)
CONTROL_HEADROOM = 1
#: seconds added to the window of a limit shared by connections: the venue counts their messages
#: as they arrive, over separate TCP streams, so one sent earlier may arrive after one sent later;
#: a window exactly the venue's would let such a spread put one message too many into its second
ARRIVAL_SPREAD = 0.5
#: the status' ``subscription_errors`` key of the last error tied to no request (cleared when the
#: venue next acknowledges one)
UNATTRIBUTED = "<unattributed>"

#: on the outgoing channel: "build requests from the queued subscription changes now"
_FLUSH = None

#: the receivers of record channels that take a batch in the producer's own task when they are
#: idle (a channel -> its deliver-now, True when taken; filled by :meth:`feedd.fanout.hub.Hub.sender`,
#: a layer above): the reader tries it first and falls back to the channel
DIRECT: weakref.WeakKeyDictionary[trio.MemorySendChannel[Ingress], Callable[[Batch], bool]] = (
    weakref.WeakKeyDictionary()
)


def send_limiter(venue: Venue, *, shared: bool = False) -> SlidingWindowLimiter:
    """A limiter within the venue's message limit, control frames aside: for one connection's
    sends, or (``shared``) for those of every connection from one address."""
    limit = max(1, math.floor(venue.max_messages_per_second) - CONTROL_HEADROOM)
    return SlidingWindowLimiter(limit, window=1.0 + (ARRIVAL_SPREAD if shared else 0.0))


@attrs.frozen
class Outcome:
    """How an attempt ended: why, whether the venue asked for it, and whether it had been stable
    (``throttled``: the host refused the handshake with a wait, which its gate logged; ``quiet``:
    the watchdog found the feed quiet, not stalled, so the next attempt waits longer)."""

    reason: str
    planned: bool = False
    stable: bool = False
    throttled: bool = False
    quiet: bool = False


class Attempt:
    """One connect-to-close of a connection: its tasks and the state they share.

    Besides its :attr:`lifecycle`, it keeps a few flags that are facts of their own, not roles:
    ``stable`` (frames kept coming for ``stable_after``: true in any role), ``end_reason``,
    ``planned`` and ``quiet`` (how it ended, first reason wins: any role may end),
    ``flush_queued`` (the sender's queue holds a flush marker: bookkeeping of the outgoing
    channel) and ``rotate_now`` (an event: the reader asks the rotator to rotate at once).
    """

    def __init__(self, runner: ConnectionRunner, transport: Transport, session: Session, *,
                 current: bool, quiet_factor: int = 1) -> None:
        self.runner = runner
        self.transport = transport
        self.session = session
        self.lifecycle = Lifecycle(current=current)
        self._changed = trio.Event()
        #: stale_after is multiplied by this (the runner's, for a feed found quiet before)
        self.quiet_factor = quiet_factor
        self.outgoing, self._to_send = trio.open_memory_channel[Message | None](OUTGOING_BUFFER)
        #: live subscription changes not yet sent, in order
        self.changes: list[tuple[Op, str]] = []
        self.flush_queued = False
        self.scope = trio.CancelScope()
        self.end_reason: str | None = None
        self.planned = False
        self.quiet = False
        self.connected_at = trio.current_time()
        self.stable = False
        #: set by the reader when a Pong arrives; replaced for every ping that awaits one
        self.pong = trio.Event()
        #: what the feed did, for the watchdog's verdicts
        self.feed = liveness.Activity()
        #: topics the venue acknowledged on this connection
        self.acked: set[str] = set()
        #: set to rotate now (the venue announced a shutdown), with why
        self.rotate_now = trio.Event()
        self.rotate_reason = ""
        #: set once the records a hand-over made this attempt deliver first are with the hub
        #: (None: nothing of the kind is on its way); the reader delivers nothing before them
        self.handed: trio.Event | None = None
        #: while the reader waits for room in the hub's ingress with a batch: set once it is in
        self.in_flight: trio.Event | None = None
        #: this attempt's number at the runner's tap (0: not recorded)
        self.tap_id = 0

    async def delivered(self) -> None:
        """Once no batch of this attempt's waits for room in the hub (what it read is in)."""
        while (in_flight := self.in_flight) is not None:
            await in_flight.wait()

    # ---- the lifecycle ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.lifecycle.state

    def fire(self, trigger: Trigger) -> State:
        """Move along the lifecycle table (:class:`LifecycleError` if it does not allow it)."""
        state = self.lifecycle.fire(trigger)
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return state

    async def wait_until(self, ok: Callable[[State], bool]) -> None:
        while not ok(self.lifecycle.state):
            await self._changed.wait()

    def end(self, reason: str, *, planned: bool = False, quiet: bool = False) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self.planned = planned
            self.quiet = quiet
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

    async def run(self) -> Outcome:
        runner = self.runner
        conn = runner.conn
        conn.state = "connected"
        conn.last_message_at = None
        conn.stable = False
        topics = sorted(runner.topics)
        log.info("%s: connected to %s; subscribing %d stream(s)", runner.name, runner.url, len(topics))
        frames = self.session.subscribe(topics)
        if runner.tap is not None:
            self.tap_id = runner.tap.connected(topics, frames)
        for frame in frames:
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
        return Outcome(self.end_reason or "connection ended", self.planned, self.stable,
                       quiet=self.quiet)

    # ---- the tasks ---------------------------------------------------------------------------

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
        deliver_now = DIRECT.get(runner.records)
        now = datetime.now
        feed = self.feed
        conflator = runner.conflator
        backfill = runner.backfill
        lifecycle = self.lifecycle
        standby = State.STANDBY
        stable_at = self.connected_at + runner.settings.stable_after
        tap = runner.tap
        tap_id = self.tap_id
        while True:
            try:
                batch = await receive()
            except TransportError as exc:
                # everything read before the close was returned (and delivered) first
                self.end(str(exc))
                return
            conn.last_message_at = trio.current_time()
            received_at = now(UTC)
            if tap is not None:  # the recorder: one non-blocking put per batch
                tap.received(tap_id, received_at, batch)
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
            status.messages += len(batch)
            # stable = frames kept arriving for stable_after (an idle feed's probe replies count)
            if not self.stable and conn.last_message_at >= stable_at:
                self.stable = True
                runner.mark_stable()
            if data:
                feed.data(conn.last_message_at)
                conn.last_data_at = conn.last_message_at
                if lifecycle.state is standby:
                    self.fire(Trigger.READY)
            if records:
                overlap = runner.overlap
                if overlap is not None:
                    records = overlap.old(records) if self is runner.overlap_old else overlap.new(records)
                    if overlap.caught_up:
                        runner.caught_up.set()
                    if not records:
                        continue
                if self.handed is not None:
                    # a hand-over's held records are still on their way (the hub was full): they
                    # come before anything this connection read after them
                    await self.handed.wait()
                    self.handed = None
                if not runner.delivering and (up := runner.announce_up()) is not None:
                    await to_hub(up)
                if backfill is not None:
                    # each trade once, and a held symbol's trades behind its backfill (backfill.py)
                    records = backfill.sift(records)
                    if not records:
                        continue
                if conflator is not None:
                    # quotes wait for the venue's flush (conflate.py); the rest goes on now
                    records = conflator.absorb(records)
                    if not records:
                        continue
                status.records += len(records)
                # an idle hub fans the batch out here, in this task (no task switch); else the
                # channel, with no checkpoint of its own: the next read is one, and the hub runs
                # meanwhile; a full or closed channel takes the awaiting path (which also sees
                # cancellation)
                if deliver_now is not None and deliver_now(records):
                    continue
                try:
                    to_hub_now(records)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    # a rotation waits for this batch before it hands over and cuts the connection
                    self.in_flight = in_flight = trio.Event()
                    try:
                        await to_hub(records)
                    finally:
                        self.in_flight = None
                        in_flight.set()

    def _on_control(self, event: object) -> None:
        runner = self.runner
        status = runner.status
        name = runner.name
        if isinstance(event, Pong):
            self.pong.set()
            self.feed.last_pong_at = trio.current_time()
        elif isinstance(event, Heartbeat):
            self.feed.last_proof_at = trio.current_time()
        elif isinstance(event, DecodeError):
            status.decode_errors += 1
            if first_of_run(status.decode_errors):
                log.warning("%s: undecodable frame #%d: %s [%s]",
                            name, status.decode_errors, event.reason, event.frame)
        elif isinstance(event, SubscribeRejected):
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
            if runner.backfill is not None:
                runner.backfill.broken(runner.symbols())  # recovered by time (backfill.py)
            if first_of_run(status.sequence_gaps):
                log.warning("%s: sequence gap #%d: %d message(s) missed (%s)",
                            name, status.sequence_gaps, event.missed, event.detail)
        elif isinstance(event, Rotate):
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

    def _build(self, op: Op, names: list[str]) -> list[Message]:
        frames = self.session.subscribe(names) if op == "subscribe" else self.session.unsubscribe(names)
        tap = self.runner.tap
        if tap is not None:
            tap.requested(self.tap_id, op, names, frames)
        return frames

    async def _watchdog(self) -> None:
        """End the attempt when the feed has been silent for ``stale_after`` (times the quiet
        factor): stale, a failure; or quiet, a planned cut (see :mod:`feedd.feed.liveness`)."""
        runner = self.runner
        conn = runner.conn
        base = runner.settings.stale_after
        stale_after = base * self.quiet_factor
        start = self.connected_at
        feed = self.feed
        while True:
            deadline = liveness.deadline(feed, start, stale_after)
            now = trio.current_time()
            if now < deadline:
                await trio.sleep_until(deadline)  # the deadline moves with every data frame
                continue
            verdict = liveness.verdict(feed, now=now, stale_after=stale_after,
                                       last_message_at=conn.last_message_at,
                                       all_acked=self.acked >= runner.topics)
            if verdict.kind == "quiet":
                self.stable = True
                later = base * liveness.next_quiet_factor(self.quiet_factor)
                self.end(f"quiet feed: no data for {stale_after:g} s, the socket alive; checking "
                         f"again after {later:g} s", planned=True, quiet=True)
                return
            alive = " (the socket alive: heartbeats, no data)" if verdict.socket_alive else ""
            self.end(f"stale feed: no data for {stale_after:g} s{alive}")
            return

    async def _rotator(self) -> None:
        """Ask the runner to rotate when :mod:`feedd.feed.rotation` says it is due, or when the
        venue announced a shutdown; a failed rotation is tried again after the wait the runner
        names (and whatever the host asked)."""
        runner = self.runner
        while True:
            rotate_after = runner.rotate_after
            with trio.move_on_at(rotation.due(self.connected_at, rotate_after, runner.rotate_offset)):
                await self.rotate_now.wait()
            reason = self.rotate_reason or f"scheduled, after {rotate_after:g} s"
            await trio.sleep_until(runner.rotations.earliest(runner.settings.reconnect_interval))
            if self.state is not State.CURRENT:
                # still taking over from its predecessor: then its turn
                await self.wait_until(lambda state: state is State.CURRENT)
                continue
            retry = await runner.rotate(self, reason)
            if retry is None:
                return
            # a venue's shutdown notice stands: rotate_now stays set
            await trio.sleep(max(retry, runner.gate.wait()))

    async def _pinger(self, interval: float) -> None:
        """Send the venue's ping as its ``ping_mode`` says; await the pong it owes, if any."""
        venue = self.runner.venue
        conn = self.runner.conn
        idle_only = venue.ping_mode == "idle"
        pong_timeout = venue.pong_timeout
        last_ping = self.connected_at
        while True:
            since = max(conn.last_message_at or self.connected_at, last_ping) if idle_only else last_ping
            due = since + interval
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            frame = self.session.ping()
            if frame is None:
                return
            if (tap := self.runner.tap) is not None:
                tap.pinged(self.tap_id, frame)
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
