"""The one overflow policy of feedd's sinks: a bounded buffer that drops its oldest and says how many.

Every sink that cannot wait (the hub never blocks on a consumer) keeps its pending items in a
:class:`DropOldest`: the callback sink, each Unix-socket subscriber, the NATS sink. Each counts
the drops its own way (a gap notice, a log line, a metric); the buffer only tells how many.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldest(Generic[T]):
    """At most ``capacity`` items, oldest first: adding to a full buffer drops its oldest.

    :attr:`items` is a plain :class:`collections.deque` (its ``maxlen`` does the dropping), so a
    consumer's per-item ``popleft`` costs what it did; :meth:`add` takes a whole batch in one call
    and returns how many of the oldest items it dropped to make room, which ``maxlen`` does
    silently.
    """

    __slots__ = ("capacity", "items")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.items: deque[T] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def add(self, items: Iterable[T], count: int) -> int:
        """Append ``items`` (``count`` of them, so an iterator is never measured); the number of
        the oldest items dropped to make room (0 when there was room)."""
        pending = self.items
        overflow = len(pending) + count - self.capacity
        pending.extend(items)
        return overflow if overflow > 0 else 0

    def add_one(self, item: T) -> int:
        """Append one item; 1 when the oldest was dropped for it, else 0."""
        pending = self.items
        full = len(pending) >= self.capacity
        pending.append(item)
        return 1 if full else 0

    def take_all(self) -> deque[T]:
        """Everything buffered, oldest first; the buffer is empty afterwards."""
        items, self.items = self.items, deque(maxlen=self.capacity)
        return items
