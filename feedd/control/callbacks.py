"""The data and event callbacks registry: each callback's sink and the cancel scope of its task.

A callback added before the service runs is registered and started with it; one added while it
runs starts at once; one removed stops at once (its sink is detached from the hub, closed, and
its task cancelled). The delivery itself, a buffer and a task per callback, is
:class:`~feedd.fanout.callback.CallbackSink`'s; an ``async def`` callback of a service that runs
under asyncio (a trio guest, :mod:`feedd.control.guest`) is awaited on the asyncio loop instead,
by :class:`LoopCallbackSink`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence

import trio

from feedd.fanout.callback import _FAILED, AnyCallback, CallbackSink
from feedd.fanout.hub import Hub
from feedd.model import FeedEvent, MarketData

logger = logging.getLogger("feedd.fanout.callback")


class LoopCallbackSink(CallbackSink):
    """An ``async def`` callback, awaited on the loop the program runs: asyncio's when the
    service is a trio guest there (``host()`` gives that loop), else trio's (as
    :class:`CallbackSink`).

    Under asyncio it is the trio sink's contract on the other loop: the hub appends to the same
    bounded drop-oldest buffer (never waiting), and one asyncio task awaits the callback for each
    record, in order; a raising callback is logged (rate-limited) and counted. The trio task
    :meth:`run` owns that asyncio task: when it is cancelled (the service stops, the callback is
    removed) the asyncio task is cancelled too, and a call in progress is abandoned.
    """

    def __init__(
        self,
        callback: AnyCallback,
        buffer: int,
        name: str,
        *,
        host: Callable[[], asyncio.AbstractEventLoop | None],
        data: bool = True,
        events: bool = False,
    ) -> None:
        super().__init__(callback, buffer, name, data=data, events=events)
        self._host = host
        self._ready: asyncio.Event | None = None

    def offer(self, records: Sequence[MarketData], encoded: Sequence[bytes]) -> None:
        super().offer(records, encoded)
        if self._ready is not None:
            self._ready.set()

    def _take_one(self, item: MarketData | FeedEvent) -> None:
        super()._take_one(item)
        if self._ready is not None:
            self._ready.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        loop = self._host()
        if loop is None:
            await super().run(task_status=task_status)
            return
        self._ready = asyncio.Event()
        self._ready.set()  # records offered before this task ran
        delivery = loop.create_task(self._deliver_on_asyncio(), name=f"feedd {self.name}")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._stopped = True
            delivery.cancel()

    async def _deliver_on_asyncio(self) -> None:
        """The asyncio task: await the callback for each buffered record, oldest first."""
        pending, callback, ready = self._pending.items, self._callback, self._ready
        assert ready is not None
        loop = asyncio.get_running_loop()
        while True:
            await ready.wait()
            ready.clear()
            while pending and not self._stopped:
                record = pending.popleft()  # one thread: the hub appends between our awaits
                try:
                    result = callback(record)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    if (unlogged := self._failed(loop.time())) is not None:
                        logger.exception(_FAILED, callback, self.errors, unlogged)
                else:
                    self.delivered += 1


class Callbacks:
    """The service's callbacks, each a :class:`CallbackSink` with its task's cancel scope."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.sinks: dict[CallbackSink, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._named = 0

    def __iter__(self) -> Iterator[CallbackSink]:
        return iter(self.sinks)

    def __len__(self) -> int:
        return len(self.sinks)

    def name(self, callback: object) -> str:
        """``callback#N:qualname``, numbered in the order they were added (a number is never
        given twice, even after a removal, or for adds from asyncio registered later)."""
        name = getattr(callback, "__qualname__", type(callback).__name__)
        self._named += 1
        return f"callback#{self._named}:{name}"

    def add(self, sink: CallbackSink) -> CallbackSink:
        """Register ``sink``; started now if the service runs, else when it starts."""
        scope = trio.CancelScope()
        self.sinks[sink] = scope
        if self._nursery is not None:
            self._start(sink, scope)
        return sink

    def remove(self, sink: CallbackSink) -> None:
        """Stop ``sink``: detached from the hub, closed, its task cancelled (if it is known)."""
        scope = self.sinks.pop(sink, None)
        if scope is not None:
            self.hub.detach(sink)
            sink.close()
            scope.cancel()

    def start(self, nursery: trio.Nursery) -> None:
        """The service runs: start every callback registered so far, and later ones at once."""
        self._nursery = nursery
        for sink, scope in self.sinks.items():
            self._start(sink, scope)

    def stopped(self) -> None:
        """The service's nursery is gone: callbacks added from now on are only registered."""
        self._nursery = None

    def _start(self, sink: CallbackSink, scope: trio.CancelScope) -> None:
        async def deliver() -> None:
            with scope:
                await sink.run()

        assert self._nursery is not None
        self.hub.attach(sink)
        self._nursery.start_soon(deliver, name=sink.name)


__all__ = ["Callbacks", "LoopCallbackSink"]
