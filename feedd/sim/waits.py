"""What tests synchronise on instead of sleeping: a simulator's changes, and waits for a state.

The server calls :meth:`Changes.notify` on every connection, subscription or counter change;
a ``wait_*`` call re-checks its condition each time, so it returns as soon as the state holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Generic

import trio

from feedd.sim.protocol import C


class Changes(Generic[C]):
    """Wakes the waiters of one simulator on each change; ``live`` gives its live connections."""

    def __init__(self, live: Callable[[], Sequence[C]]) -> None:
        self._live = live
        self._changed = trio.Event()

    def notify(self) -> None:
        """Something observable changed: wake every waiter to re-check."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked on every connection, subscription or
        counter change, so tests need no sleeps."""
        while not predicate():
            await self._changed.wait()

    async def wait_subscribed(self, topics: str | Iterable[str]) -> C:
        """The first live connection that holds every one of ``topics`` (waits for it)."""
        names = {topics} if isinstance(topics, str) else set(topics)
        found: list[C] = []

        def holder() -> bool:
            found[:] = [c for c in self._live() if names.issubset(c.topics)]
            return bool(found)

        await self.wait_until(holder)
        return found[0]

    async def wait_connections(self, count: int = 1) -> list[C]:
        """The live connections, once there are at least ``count``."""
        await self.wait_until(lambda: len(self._live()) >= count)
        return list(self._live())
