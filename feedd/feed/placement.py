"""Which connection carries which wire topic: the supervisor's bookkeeping, without trio.

A venue caps what one connection may carry (a topic count and, at Bybit, a character budget
of the compact JSON args); channels of one exchange may share a wire topic (the topic leaves
the wire only when the last subscription using it goes). :class:`Placement` keeps those three
facts consistent and says what the I/O side has to do: open a connection, add or remove a
topic on one, close one that is left empty. The supervisor does it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

import attrs

from feedd.exchanges.base import Topic, topic_chars

#: a connection, as placement sees it: something to count topics against
C = TypeVar("C", bound=Hashable)


@attrs.frozen
class Released(Generic[C]):
    """What releasing a topic asks of the I/O side: ``remove`` it from ``carrier`` (the topic
    has no other user), and ``close`` the carrier too when it carried nothing else."""

    carrier: C
    close: bool


class Placement(Generic[C]):
    """Topics onto connections: first fit by the venue's topic count and character budget."""

    def __init__(self, max_topics: int, max_chars: int | None) -> None:
        self.max_topics = max_topics
        self.max_chars = max_chars
        self._shards: dict[str, list[C]] = {}
        self._owner: dict[Topic, C] = {}
        #: each connection's topics as the venue's character budget counts them (compact JSON)
        self._chars: dict[C, int] = {}
        #: how many topics each connection carries
        self._count: Counter[C] = Counter()
        #: subscriptions using each wire topic
        self._refs: Counter[Topic] = Counter()

    def carriers(self) -> Iterator[C]:
        for shards in self._shards.values():
            yield from shards

    def shards(self, route: str) -> list[C]:
        """The connections of one route, oldest first."""
        return list(self._shards.get(route, ()))

    def owner(self, topic: Topic) -> C | None:
        return self._owner.get(topic)

    def place(self, topic: Topic, open_carrier: Callable[[str], C]) -> C | None:
        """Count one more user of ``topic``; the connection that must now add it to the wire,
        or None when it is there already. ``open_carrier(route)`` makes a new, empty connection
        when no connection of the route has room."""
        self._refs[topic] += 1
        if topic in self._owner:
            return None
        shards = self._shards.setdefault(topic.route, [])
        cost = topic_chars(topic.name)
        carrier = next((c for c in shards if self._has_room(c, cost)), None)
        if carrier is None:
            carrier = open_carrier(topic.route)
            shards.append(carrier)
            self._chars[carrier] = 1  # the opening bracket; each topic adds its closing separator
        self._chars[carrier] += cost
        self._count[carrier] += 1
        self._owner[topic] = carrier
        return carrier

    def release(self, topic: Topic) -> Released[C] | None:
        """Count one user of ``topic`` less; what the I/O side must do, or None when another
        subscription still uses it (or it was never placed)."""
        self._refs[topic] -= 1
        if self._refs[topic] > 0:
            return None
        del self._refs[topic]
        carrier = self._owner.pop(topic, None)
        if carrier is None:
            return None
        self._chars[carrier] -= topic_chars(topic.name)
        self._count[carrier] -= 1
        empty = self._count[carrier] == 0
        if empty:
            self._shards[topic.route].remove(carrier)
            del self._chars[carrier], self._count[carrier]
        return Released(carrier, close=empty)

    def _has_room(self, carrier: C, cost: int) -> bool:
        if self._count[carrier] >= self.max_topics:
            return False
        return self.max_chars is None or self._chars[carrier] + cost <= self.max_chars
