"""A sink that hands records (and, if asked, feed events) to an in-process callback:
``WebSocketService.add_data_callback`` and ``add_event_callback``."""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from feedd.fanout.buffer import DropOldest
from feedd.fanout.hub import SubscriberInfo
from feedd.model import FeedEvent, MarketData

logger = logging.getLogger(__name__)


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
        self._pending: DropOldest[MarketData | FeedEvent] = DropOldest(buffer)
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
            overflow = self._pending.add(records, len(records))
        if overflow:
            self.dropped += overflow
        self._wakeup.set()

    def notice(self, event: FeedEvent) -> None:
        if self._events:
            self._take_one(event)

    def _take_one(self, item: MarketData | FeedEvent) -> None:
        with self._lock:
            overflow = self._pending.add_one(item)
        if overflow:
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
        pending = self._pending.items  # never replaced
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
        pending, lock, callback = self._pending.items, self._lock, self._callback
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
