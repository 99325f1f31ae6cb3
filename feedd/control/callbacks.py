"""The data and event callbacks registry: each callback's sink and the cancel scope of its task.

A callback added before the service runs is registered and started with it; one added while it
runs starts at once; one removed stops at once (its sink is detached from the hub, closed, and
its task cancelled). The delivery itself, a buffer and a task per callback, is
:class:`~feedd.fanout.hub.CallbackSink`'s.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio

from feedd.fanout.callback import CallbackSink
from feedd.fanout.hub import Hub


class Callbacks:
    """The service's callbacks, each a :class:`CallbackSink` with its task's cancel scope."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.sinks: dict[CallbackSink, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    def __iter__(self) -> Iterator[CallbackSink]:
        return iter(self.sinks)

    def __len__(self) -> int:
        return len(self.sinks)

    def name(self, callback: object) -> str:
        """``callback#N:qualname``, numbered in the order they were added."""
        name = getattr(callback, "__qualname__", type(callback).__name__)
        return f"callback#{len(self.sinks) + 1}:{name}"

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


__all__ = ["Callbacks"]
