"""The generic connection runner: the one place where WebSocket I/O, deadlines, heartbeats and
reconnects live, for every venue.

One :class:`ConnectionRunner` owns one connection (a shard of a venue's topics) for the life of
the daemon. Each attempt is a *session* in its own cancel scope, with four tasks:

- reader: only receives; stamps ``received_at`` once per batch and hands the batch on with
  ``send_nowait`` — it never waits on anyone, so the transport keeps answering pings. When the
  decoder falls behind by ``frame_buffer`` batches, the newest batch is dropped and counted.
- decoder: decodes, validates and sends records to the hub, a batch at a time.
- sender: the only writer; paces every outgoing frame to the venue's message limit, and turns
  the subscription changes queued meanwhile into as few requests as the venue allows.
- watchdog: ends the session when no frame has arrived for ``stale_after`` seconds.

Any of them ends the session by naming a reason and cancelling its scope; the runner then waits
out an exponential backoff with jitter and connects again, resubscribing every topic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import groupby
from operator import itemgetter
from typing import Literal

import attrs
import trio

from feedd.backoff import Backoff
from feedd.exchanges.base import (
    DecodeError,
    Frame,
    Reconnect,
    Session,
    SubscribeAck,
    SubscribeError,
    Venue,
)
from feedd.model import MarketData
from feedd.ratelimit import SlidingWindowLimiter
from feedd.status import ConnectionStatus, VenueStatus
from feedd.transport import OpenTransport, Transport, TransportError, open_transport
from feedd.validate import Validator

log = logging.getLogger(__name__)

Batch = list[MarketData]

#: outgoing frames a session may have queued (subscribe batches and pings: a handful)
OUTGOING_BUFFER = 1024
#: sends per window left free for the transport's own control frames (pongs count at Binance)
CONTROL_HEADROOM = 1


@attrs.frozen
class RunnerSettings:
    reconnect_interval: float = 5.0
    max_backoff: float = 300.0
    max_retries: int = 10
    stale_after: float = 30.0
    stable_after: float = 10.0
    connect_timeout: float = 10.0
    #: batches queued between reader and decoder before the reader drops (never blocks)
    frame_buffer: int = 256


Op = Literal["subscribe", "unsubscribe"]
#: on the outgoing channel: "build requests from the queued subscription changes now"
_FLUSH = None


class _Live:
    """What exists only while a session is connected."""

    def __init__(
        self, protocol: Session, outgoing: trio.MemorySendChannel[Frame | None], scope: trio.CancelScope
    ):
        self.protocol = protocol
        self.outgoing = outgoing
        #: live subscription changes not yet sent, in order
        self.changes: list[tuple[Op, str]] = []
        self.flush_queued = False
        self.scope = scope
        self.end_reason: str | None = None
        self.planned = False
        self.connected_at = trio.current_time()
        self.last_ping = -math.inf
        self.stable = False

    def end(self, reason: str, *, planned: bool = False) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self.planned = planned
        self.scope.cancel()


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
        records: trio.MemorySendChannel[Batch],
        validator: Validator,
        open_transport: OpenTransport = open_transport,
        backoff: Backoff | None = None,
    ) -> None:
        self.venue = venue
        self.url = url
        self.name = name
        self.topics: set[str] = set(topics)
        self.settings = settings
        self.status = status
        self.conn = ConnectionStatus(name=name, url=url, topics=len(self.topics))
        status.connections[name] = self.conn
        self._records = records
        self._validator = validator
        self._open = open_transport
        self._backoff = backoff or Backoff(settings.reconnect_interval, settings.max_backoff)
        self._live: _Live | None = None
        limit = max(1, math.floor(venue.max_messages_per_second) - CONTROL_HEADROOM)
        self._limit = limit

    # ---- live subscription changes ----------------------------------------------------

    def add_topics(self, names: Iterable[str]) -> None:
        """Carry more topics; subscribed at once when connected, else on the next connect."""
        new = [n for n in names if n not in self.topics]
        self.topics.update(new)
        self.conn.topics = len(self.topics)
        self._queue_changes("subscribe", new)

    def remove_topics(self, names: Iterable[str]) -> None:
        gone = [n for n in names if n in self.topics]
        self.topics.difference_update(gone)
        self.conn.topics = len(self.topics)
        self._queue_changes("unsubscribe", gone)

    def _queue_changes(self, op: Op, names: list[str]) -> None:
        """Hand live changes to the sender, which batches whatever accumulated by its next slot.

        Subscribing symbols one API call at a time thus costs a handful of requests, not one per
        symbol paced at the venue's few messages per second.
        """
        live = self._live
        if not names or live is None:
            return
        live.changes.extend((op, name) for name in names)
        if live.flush_queued:
            return
        try:
            live.outgoing.send_nowait(_FLUSH)
            live.flush_queued = True
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            # the session is ending or hopelessly behind: the next connect sends every topic
            live.end("outgoing queue full")

    # ---- the supervision loop -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        settings = self.settings
        conn = self.conn
        failed_logged = False
        while True:
            conn.state = "connecting"
            try:
                reason, planned = await self._session()
            except Exception as exc:  # an adapter bug must not take the venue, or the daemon, down
                log.exception("%s: internal error; treating it as a connection failure", self.name)
                reason, planned = f"internal error: {exc!r}", False
            if self._backoff.failures == 0:
                failed_logged = False  # the session was stable: a new run of failures starts
            conn.reconnects += 1
            conn.last_error = reason
            self.status.last_error = f"{self.name}: {reason}"
            if planned:
                log.info("%s: reconnecting (%s)", self.name, reason)
                continue
            delay = self._backoff.next_delay()
            conn.consecutive_failures = self._backoff.failures
            if settings.max_retries and self._backoff.failures >= settings.max_retries:
                conn.state = "failed"
                delay = settings.max_backoff
                if not failed_logged:
                    log.error(
                        "%s: failed after %d consecutive attempts (last: %s); retrying every %.0f s",
                        self.name, self._backoff.failures, reason, delay,
                    )
                    failed_logged = True
            else:
                conn.state = "backoff"
                log.warning("%s: %s; reconnecting in %.1f s", self.name, reason, delay)
            await trio.sleep(delay)

    async def _session(self) -> tuple[str, bool]:
        """One connection attempt, from connect to its end; returns (reason, planned)."""
        settings = self.settings
        try:
            async with self._open(self.url, connect_timeout=settings.connect_timeout) as transport:
                return await self._connected(transport)
        except TransportError as exc:
            return str(exc), False

    async def _connected(self, transport: Transport) -> tuple[str, bool]:
        protocol = self.venue.new_session()
        outgoing, to_send = trio.open_memory_channel[Frame | None](OUTGOING_BUFFER)
        frames_in, frames_out = trio.open_memory_channel[tuple[datetime, list[Frame]]](
            self.settings.frame_buffer
        )
        live = _Live(protocol, outgoing, trio.CancelScope())
        self._live = live
        self.conn.state = "connected"
        self.conn.last_frame_at = None
        try:
            for frame in protocol.subscribe(sorted(self.topics)):
                outgoing.send_nowait(frame)
            with live.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, transport, frames_in, live)
                    nursery.start_soon(self._decoder, frames_out, live)
                    nursery.start_soon(self._sender, transport, to_send, live)
                    nursery.start_soon(self._watchdog, live)
                    if self.venue.ping_interval is not None:
                        # idle pings must come well before the watchdog would give up
                        interval = min(self.venue.ping_interval, self.settings.stale_after / 2)
                        nursery.start_soon(self._pinger, interval, live)
        finally:
            self._live = None
        return live.end_reason or "session ended", live.planned

    async def _reader(
        self,
        transport: Transport,
        out: trio.MemorySendChannel[tuple[datetime, list[Frame]]],
        live: _Live,
    ) -> None:
        conn = self.conn
        status = self.status
        receive = transport.receive_batch
        send = out.send_nowait
        now = datetime.now
        while True:
            try:
                batch = await receive()
            except TransportError as exc:
                # let the decoder finish what was read before the close, then it ends the session
                live.end_reason = live.end_reason or str(exc)
                await out.aclose()
                return
            conn.last_frame_at = trio.current_time()
            try:
                send((now(UTC), batch))
            except trio.WouldBlock:
                status.frames_dropped += len(batch)

    async def _decoder(
        self, frames: trio.MemoryReceiveChannel[tuple[datetime, list[Frame]]], live: _Live
    ) -> None:
        status = self.status
        rejected = status.rejected
        check = self._validator.reason
        decode = live.protocol.decode
        to_hub = self._records
        stable_at = live.connected_at + self.settings.stable_after
        while True:
            try:
                pending = [await frames.receive()]
            except trio.EndOfChannel:
                live.end(live.end_reason or "connection closed")
                return
            try:
                while True:
                    pending.append(frames.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                pass
            records: Batch = []
            keep = records.append
            count = 0
            for received_at, batch in pending:
                count += len(batch)
                for frame in batch:
                    for event in decode(frame, received_at):
                        if type(event) is MarketData:
                            reason = check(event)
                            if reason is None:
                                keep(event)
                            else:
                                rejected[reason] += 1
                        else:
                            self._on_control(event, live)
            status.frames += count
            # stable = frames kept arriving for stable_after (an idle feed's probe replies count)
            if not live.stable and trio.current_time() >= stable_at:
                self._mark_stable(live)
            if records:
                status.messages += len(records)
                await to_hub.send(records)

    def _mark_stable(self, live: _Live) -> None:
        live.stable = True
        if self._backoff.failures:
            log.info("%s: stable again after %d failures", self.name, self._backoff.failures)
        self._backoff.reset()
        self.conn.consecutive_failures = 0

    def _on_control(self, event: object, live: _Live) -> None:
        status = self.status
        if isinstance(event, DecodeError):
            status.decode_errors += 1
            if status.decode_errors & (status.decode_errors - 1) == 0:  # 1, 2, 4, 8...: no log flood
                log.warning("%s: undecodable frame #%d: %s [%s]",
                            self.name, status.decode_errors, event.reason, event.frame)
        elif isinstance(event, SubscribeError):
            status.last_error = f"{self.name}: subscription refused: {event.reason}"
            for topic in event.topics or ("<unattributed>",):
                status.subscription_errors[topic] = event.reason
            log.warning("%s: subscription refused (%s): %s",
                        self.name, ", ".join(event.topics) or "request unknown", event.reason)
        elif isinstance(event, Reconnect):
            live.end(f"venue asked to reconnect: {event.reason}", planned=True)
        elif isinstance(event, SubscribeAck) and event.op == "subscribe":
            for topic in event.topics:
                status.subscription_errors.pop(topic, None)
        # Pong, Heartbeat and Ignored only prove liveness, which the reader already noted.

    async def _sender(
        self, transport: Transport, frames: trio.MemoryReceiveChannel[Frame | None], live: _Live
    ) -> None:
        limiter = SlidingWindowLimiter(self._limit)
        try:
            async for item in frames:
                await limiter.acquire()
                if item is not _FLUSH:
                    await transport.send(item)
                    continue
                # changes queued while we waited for this slot all go out together
                live.flush_queued = False
                changes, live.changes = live.changes, []
                requests = [
                    frame
                    for op, run in groupby(changes, key=itemgetter(0))
                    for frame in self._build(live.protocol, op, [name for _, name in run])
                ]
                for index, frame in enumerate(requests):
                    if index:
                        await limiter.acquire()
                    await transport.send(frame)
        except TransportError as exc:
            live.end(str(exc))

    @staticmethod
    def _build(protocol: Session, op: Op, names: list[str]) -> list[Frame]:
        return protocol.subscribe(names) if op == "subscribe" else protocol.unsubscribe(names)

    async def _watchdog(self, live: _Live) -> None:
        stale_after = self.settings.stale_after
        while True:
            last = self.conn.last_frame_at or live.connected_at
            deadline = last + stale_after
            if trio.current_time() >= deadline:
                live.end(f"stale feed: no frame for {stale_after:g} s")
                return
            await trio.sleep_until(deadline)  # the deadline moves with every frame

    async def _pinger(self, interval: float, live: _Live) -> None:
        """Send the venue's ping whenever no frame has arrived for ``interval`` seconds."""
        while True:
            last = self.conn.last_frame_at or live.connected_at
            due = max(last, live.last_ping) + interval
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            frame = live.protocol.ping()
            if frame is None:
                return
            live.last_ping = trio.current_time()
            try:
                live.outgoing.send_nowait(frame)
            except trio.WouldBlock:
                live.end("outgoing queue full")
                return
