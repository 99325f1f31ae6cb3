"""Fan-out of record batches from every connection to every sink.

One ingress memory channel carries batches (``list[MarketData]``, all a connection read in one
wakeup). When the hub is idle (its task waits on an empty channel), a connection's reader
hands its batch over in its own task instead (:meth:`Hub.deliver_now`, registered for every
:meth:`Hub.sender` in :data:`feedd.feed.attempt.DIRECT`): the same dispatch, in the same
order, without the task switch and the extra pass of the run loop a channel hop costs per
batch. The channel stays the path whenever anything is queued or on its way to the hub, and
when the hub is behind (its bound is the backpressure). The hub takes everything already
queued as one batch, encodes each record to its JSON line once (only if some sink wants
bytes), and offers the same objects to every sink. Sinks are synchronous and never block: each
keeps its own bounded buffer and its own overflow policy, so a slow consumer can only hurt
itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Protocol

import attrs
import trio

from feedd.codec import encode_record
from feedd.feed.attempt import DIRECT
from feedd.model import Batch, FeedEvent, Ingress, MarketData

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """A consumer of records, fed synchronously by the hub."""

    @property
    def wants_encoded(self) -> bool:
        """Whether :meth:`offer` needs the JSON lines; when no attached sink does, none are made."""
        ...

    def offer(self, records: Sequence[MarketData], encoded: Sequence[bytes]) -> None:
        """Take ``records`` (and ``encoded[i]``, the line of ``records[i]``) without awaiting.

        ``encoded`` is empty when no attached sink wants bytes. Must never block: buffer, drop by
        the sink's own policy, and wake the sink's own task.
        """
        ...

    def notice(self, event: FeedEvent) -> None:
        """Take a feed event (a disconnect or reconnect), in order with the records offered
        around it; same rules as :meth:`offer`."""
        ...


class Hub:
    """Receives batches from producers and fans them out to the attached sinks.

    Backpressure: sinks never block the hub, so a producer's ``await send(batch)`` waits only
    when ``buffer`` batches are queued, i.e. when the hub itself cannot keep up on CPU. That
    waiting is deliberate; it slows the readers instead of growing memory without bound.
    """

    def __init__(self, buffer: int = 1024) -> None:
        self._send, self._receive = trio.open_memory_channel[Ingress](buffer)
        self._sinks: tuple[Sink, ...] = ()
        self._encode = False
        #: records and batches fanned out, hub wakeups (each drains everything queued), and the
        #: batches a producer handed over in its own task (:meth:`deliver_now`)
        self.records = 0
        self.batches = 0
        self.wakeups = 0
        self.direct = 0
        #: feed events (disconnects, reconnects) passed on
        self.events = 0

    def sender(self) -> trio.MemorySendChannel[Ingress]:
        """A send channel of its own for one producer, which closes it when done; a reader that
        finds it in :data:`~feedd.feed.attempt.DIRECT` may hand batches over with
        :meth:`deliver_now` first."""
        channel = self._send.clone()
        DIRECT[channel] = self.deliver_now
        return channel

    def deliver_now(self, batch: Batch) -> bool:
        """Fan ``batch`` out now, in the caller's task, if the hub is idle; False if not (then
        the caller sends it on the channel, as it would have without this).

        Idle is: the hub's task waits to receive and nothing is queued. A batch sent on the
        channel to a waiting hub leaves it not waiting until it has run, so whatever is queued
        or on its way goes out first and the order is the channel's. Sinks never block (see
        :class:`Sink`), so this never waits either.
        """
        stats = self._receive.statistics()
        if stats.tasks_waiting_receive != 1 or stats.current_buffer_used:
            return False
        self.direct += 1
        self._dispatch(batch)
        return True

    def close(self) -> None:
        """Accept no new producers; :meth:`run` returns once every existing sender is closed."""
        self._send.close()

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return self._sinks

    def attach(self, sink: Sink) -> None:
        """Start offering records to ``sink`` (from the next batch on)."""
        if sink not in self._sinks:
            self._set_sinks((*self._sinks, sink))

    def detach(self, sink: Sink) -> None:
        """Stop offering to ``sink``; unknown sinks are ignored so cleanup can be unconditional."""
        if sink in self._sinks:
            self._set_sinks(tuple(s for s in self._sinks if s is not sink))

    def _set_sinks(self, sinks: tuple[Sink, ...]) -> None:
        # A fresh tuple on every change: dispatch iterates a snapshot, and the "encode or not"
        # decision is made once here instead of per batch.
        self._sinks = sinks
        self._encode = any(s.wants_encoded for s in sinks)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fan out until the channel is closed (:meth:`close` and every sender), or cancelled.

        Each wakeup takes every batch already queued (from any connection) and offers them to
        the sinks as one, so a sink writes once per wakeup however many batches it carried. A
        feed event among them splits the run: the records before it, the event, the rest, so
        each consumer sees it exactly where it happened.
        """
        receive = self._receive
        task_status.started()
        async with receive:
            while True:
                try:
                    item = await receive.receive()
                except trio.EndOfChannel:
                    return
                self.wakeups += 1
                batch: Batch | None = None
                batches = 0
                merged = False
                closed = False
                while True:
                    if isinstance(item, list):
                        if batch is None:
                            batch = item
                        else:
                            if not merged:
                                batch = list(batch)  # never the producer's own list
                                merged = True
                            batch.extend(item)
                        batches += 1
                    else:
                        if batch is not None:
                            self._dispatch(batch, batches)
                            batch, batches, merged = None, 0, False
                        self._announce(item)
                    try:
                        item = receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    except trio.EndOfChannel:
                        closed = True
                        break
                if batch is not None:
                    self._dispatch(batch, batches)
                if closed:
                    return

    def _announce(self, event: FeedEvent) -> None:
        self.events += 1
        for sink in self._sinks:
            try:
                sink.notice(event)
            except Exception:
                logger.exception("sink %r failed; detaching it", sink)
                self.detach(sink)

    def _dispatch(self, batch: Batch, batches: int = 1) -> None:
        self.batches += batches
        self.records += len(batch)
        sinks = self._sinks
        if not sinks or not batch:
            return
        encoded: Sequence[bytes] = [_line(r) for r in batch] if self._encode else ()
        for sink in sinks:
            try:
                sink.offer(batch, encoded)
            except Exception:
                # A sink bug must not take every other consumer down with it.
                logger.exception("sink %r failed; detaching it", sink)
                self.detach(sink)


def _line(record: MarketData) -> bytes:
    """The record's JSON line, as a compact copy.

    orjson's result keeps all of its working buffer (4-8 KiB, measured with tracemalloc on
    orjson 3.13) however short the line: lines waiting in a subscriber's buffer would take 15-25
    times their size, and a batch's worth of them evicts everything else from the CPU cache
    (encoding a kept batch measured 3.0 µs a record, 1.2 µs with this copy).
    """
    return bytes(memoryview(encode_record(record)))


@attrs.frozen
class SubscriberInfo:
    """One consumer of the hub as the status and metrics show it."""

    kind: Literal["unix", "callback"]
    name: str
    delivered: int
    dropped: int
    pending: int
    errors: int = 0
