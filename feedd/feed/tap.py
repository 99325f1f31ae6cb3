"""The tap: what the feed tells a recorder about each connection, in the order it happened.

The feed layer only defines it; :mod:`feedd.record` implements it. Every call is made from the
trio task that did the thing (the reader for frames, the sender for requests, the runner for
connects and events), synchronously, and must not block or raise: the implementation appends to
its own bounded buffer and returns (one non-blocking put per batch of frames).

``attempt`` numbers are the tap's own (:meth:`ConnectionTap.connected` hands them out): two
attempts of one connection overlap while a rotation runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal, Protocol

from feedd.exchanges.base import Venue
from feedd.model import FeedEvent, Message

#: a step of a make-before-break rotation's overlap (:mod:`feedd.feed.overlap`)
OverlapStep = Literal["start", "switch", "end"]


class ConnectionTap(Protocol):
    """One connection's (a runner's) side of the tap."""

    def connected(self, topics: Sequence[str], frames: Sequence[Message]) -> int:
        """An attempt connected and is subscribing ``topics`` with ``frames``: its number."""
        ...

    def received(self, attempt: int, at: datetime, frames: Sequence[Message]) -> None:
        """A batch of frames read at once; ``at`` is the receive time their decode gets."""
        ...

    def requested(self, attempt: int, op: str, topics: Sequence[str], frames: Sequence[Message]) -> None:
        """A live subscribe or unsubscribe of ``topics`` built into ``frames``, now sent in order."""
        ...

    def pinged(self, attempt: int, frame: Message) -> None:
        """The venue's application ping, built by the session."""
        ...

    def closed(self, attempt: int, reason: str) -> None:
        """The attempt ended (its session's ``connection_lost``)."""
        ...

    def event(self, event: FeedEvent) -> None:
        """A disconnect or reconnect event handed to the hub."""
        ...

    def overlap(self, step: OverlapStep, old: int = 0, new: int = 0) -> None:
        """A rotation's overlap started (between attempts ``old`` and ``new``), switched to the
        new attempt, or ended."""
        ...


class Tap(Protocol):
    """The recorder, as the feed sees it."""

    def connection(self, venue: Venue, name: str, url: str) -> ConnectionTap | None:
        """The tap of one connection (None: this venue is not recorded)."""
        ...

    def known(self, venue: str, symbols: Sequence[str], channels: Mapping[str, Sequence[str]]) -> None:
        """The symbols the venue's validation accepts, after a change, and per channel that
        shares a wire stream (``quotes``, ``ticker``) the symbols subscribed to it."""
        ...
