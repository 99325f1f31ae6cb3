"""Fan-out of record batches from every connection to every sink.

One ingress memory channel carries batches (``list[MarketData]``, all a connection read in one
wakeup). The hub takes everything already queued as one batch, encodes each record to its JSON
line once (only if some sink wants bytes), and offers the same objects to every sink. Sinks are
synchronous and never block: each keeps its own bounded buffer and its own overflow policy, so a
slow consumer can only hurt itself.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

import attrs
import trio

from feedd.codec import encode_record
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
        #: records and batches fanned out, and hub wakeups (each drains everything queued)
        self.records = 0
        self.batches = 0
        self.wakeups = 0
        #: feed events (disconnects, reconnects) passed on
        self.events = 0

    def sender(self) -> trio.MemorySendChannel[Ingress]:
        """A send channel of its own for one producer, which closes it when done."""
        return self._send.clone()

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


Callback = Callable[[MarketData], Awaitable[None] | None]
#: a callback that also (or only) hears feed events: ``MarketData | Disconnected | Reconnected``
AnyCallback = Callable[[Any], Awaitable[None] | None]


_FAILED = "data callback %r raised (%d failures so far, %d not logged)"


def _is_async(callback: Callback) -> bool:
    """An ``async def`` function (or partial of one, or an object with an ``async def __call__``)."""
    return inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(type(callback).__call__)


class CallbackSink:
    """Delivers records to an in-process callback (``WebSocketService.add_data_callback``).

    The hub only appends to a bounded buffer; :meth:`run`, a task of its own, hands the records
    to the callback. When the callback falls behind, the oldest records are dropped and counted
    in :attr:`dropped`. A raising callback is logged and counted, and the next record is
    delivered as usual.

    An ``async def`` callback is awaited on the event loop, one record at a time, and must not
    block. A plain function runs in a worker thread: feedd uses no thread unless something
    forces one, and user code that may block is such a thing, since only a thread keeps a
    blocking function off the event loop. One ``trio.to_thread.run_sync`` per batch of pending
    records, which the thread takes from the buffer one by one, with a capacity limiter of its
    own so a stuck callback holds one thread and never starves another's. It must be thread-safe
    with respect to its own state (and reach trio objects through ``trio.from_thread``). When
    the sink stops (the service stops, or :meth:`WebSocketService.remove_data_callback`), a call
    still running is abandoned, not awaited: the stop never waits for user code, the call ends
    in its thread, and no further record is passed to it.
    """

    wants_encoded = False
    #: after the first failure, at most one log line per this many seconds
    error_log_interval = 10.0

    def __init__(
        self,
        callback: Callback | AnyCallback,
        buffer: int = 10_000,
        name: str | None = None,
        *,
        data: bool = True,
        events: bool = False,
    ) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be positive, got {buffer}")
        self._callback: AnyCallback = callback
        #: what the callback is handed: records, feed events (in order with records), or both
        self._data = data
        self._events = events
        self.name = name or getattr(callback, "__qualname__", None) or repr(callback)
        self._buffer = buffer
        self._pending: deque[MarketData | FeedEvent] = deque(maxlen=buffer)
        #: the hub's offers (event loop) and a sync callback's takes (its thread) on the buffer
        #: take turns, so the drop count stays exact
        self._lock = threading.Lock()
        self._wakeup = trio.Event()
        self._is_async = _is_async(callback)
        #: set when :meth:`run` ends: an abandoned worker thread passes no further record
        self._stopped = False
        self.delivered = 0
        self.dropped = 0
        self.errors = 0
        self._last_error_log = -float("inf")
        self._unlogged_errors = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def info(self) -> SubscriberInfo:
        return SubscriberInfo("callback", self.name, self.delivered, self.dropped, self.pending, self.errors)

    def offer(self, records: Sequence[MarketData], encoded: Sequence[bytes]) -> None:
        if not self._data:
            return
        with self._lock:
            overflow = len(self._pending) + len(records) - self._buffer
            self._pending.extend(records)  # the deque's maxlen drops the oldest
        if overflow > 0:
            self.dropped += overflow
        self._wakeup.set()

    def notice(self, event: FeedEvent) -> None:
        if self._events:
            self._take_one(event)

    def _take_one(self, item: MarketData | FeedEvent) -> None:
        with self._lock:
            overflow = len(self._pending) + 1 - self._buffer
            self._pending.append(item)
        if overflow > 0:
            self.dropped += overflow
        self._wakeup.set()

    def close(self) -> None:
        """Pass no further record to the callback, from now on (a sync call in progress ends
        in its thread); then cancel :meth:`run`."""
        self._stopped = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Call the callback for every buffered record, until cancelled or closed."""
        task_status.started()
        try:
            if self._is_async:
                await self._run_async()
            else:
                await self._run_in_thread()
        finally:
            self._stopped = True

    async def _run_async(self) -> None:
        pending = self._pending
        callback = self._callback
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while pending and not self._stopped:
                record = pending.popleft()  # only this thread takes from it
                try:
                    result = callback(record)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    if (unlogged := self._failed(trio.current_time())) is not None:
                        logger.exception(_FAILED, callback, self.errors, unlogged)
                else:
                    self.delivered += 1

    async def _run_in_thread(self) -> None:
        limiter = trio.CapacityLimiter(1)
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()  # records offered during the call set this one
            if self._pending:
                await trio.to_thread.run_sync(
                    self._deliver_pending, limiter=limiter, abandon_on_cancel=True,
                    thread_name=f"feedd {self.name}",
                )

    def _deliver_pending(self) -> None:
        """In the worker thread: call the callback for each record until the buffer is empty."""
        pending, lock, callback = self._pending, self._lock, self._callback
        while not self._stopped:
            with lock:
                if not pending:
                    return
                record = pending.popleft()
            try:
                result = callback(record)
                if inspect.isawaitable(result):
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()  # a coroutine never awaited would warn later, far from here
                    raise TypeError("a plain callback runs in a thread and returned an awaitable: "
                                    "make it `async def` to have it awaited on the event loop")
            except Exception:
                if (unlogged := self._failed(time.monotonic())) is not None:
                    logger.exception(_FAILED, callback, self.errors, unlogged)
            else:
                self.delivered += 1

    def _failed(self, now: float) -> int | None:
        """Count a failure; whether to log it, rate-limited so that a callback failing on every
        record does not flood the log: None not now, else how many went unlogged before it."""
        self.errors += 1
        if now - self._last_error_log < self.error_log_interval:
            self._unlogged_errors += 1
            return None
        self._last_error_log = now
        unlogged, self._unlogged_errors = self._unlogged_errors, 0
        return unlogged
