"""Placement of wire topics onto connections, pure: no trio, no supervisor."""

from __future__ import annotations

from feedd.exchanges.base import Topic, topic_chars
from feedd.feed.placement import Placement, Released


class Opener:
    """Hands out new connections named route#n and remembers the order."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, route: str) -> str:
        name = f"{route or 'stream'}#{len(self.opened) + 1}"
        self.opened.append(name)
        return name


def test_topics_fill_the_first_connection_with_room_then_open_another() -> None:
    placement: Placement[str] = Placement(max_topics=2, max_chars=None)
    opener = Opener()
    placed = [placement.place(Topic(route="", name=f"t{i}"), opener) for i in range(5)]
    assert placed == ["stream#1", "stream#1", "stream#2", "stream#2", "stream#3"]
    assert placement.shards("") == ["stream#1", "stream#2", "stream#3"]


def test_a_character_budget_opens_a_new_connection_before_the_topic_count_does() -> None:
    long = Topic(route="", name="x" * 20)
    budget = 1 + topic_chars(long.name) + topic_chars("short")
    placement: Placement[str] = Placement(max_topics=10, max_chars=budget)
    opener = Opener()
    assert placement.place(long, opener) == "stream#1"
    assert placement.place(Topic(route="", name="short"), opener) == "stream#1"
    assert placement.place(Topic(route="", name="more"), opener) == "stream#2"


def test_routes_never_share_a_connection() -> None:
    placement: Placement[str] = Placement(max_topics=10, max_chars=None)
    opener = Opener()
    assert placement.place(Topic(route="market", name="a"), opener) == "market#1"
    assert placement.place(Topic(route="public", name="b"), opener) == "public#2"
    assert placement.shards("market") == ["market#1"]


def test_a_shared_topic_is_added_once_and_removed_with_its_last_user() -> None:
    placement: Placement[str] = Placement(max_topics=10, max_chars=None)
    topic = Topic(route="", name="btcusdt@bookTicker")
    opener = Opener()
    assert placement.place(topic, opener) == "stream#1"
    assert placement.place(topic, opener) is None  # on the wire already
    placement.place(Topic(route="", name="other"), opener)
    assert placement.release(topic) is None  # another subscription still uses it
    assert placement.release(topic) == Released("stream#1", close=False)
    assert placement.owner(topic) is None


def test_the_last_topic_released_closes_its_connection_and_frees_its_room() -> None:
    placement: Placement[str] = Placement(max_topics=1, max_chars=None)
    opener = Opener()
    first = Topic(route="", name="a")
    placement.place(first, opener)
    assert placement.release(first) == Released("stream#1", close=True)
    assert placement.shards("") == []
    assert placement.place(Topic(route="", name="b"), opener) == "stream#2"


def test_releasing_what_was_never_placed_asks_nothing() -> None:
    placement: Placement[str] = Placement(max_topics=1, max_chars=None)
    assert placement.release(Topic(route="", name="never")) is None
