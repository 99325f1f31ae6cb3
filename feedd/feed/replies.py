"""The reply ledger: the venue's answer per topic, or the one still awaited. Pure bookkeeping
(a :class:`trio.Event` per reply for whoever awaits it, set synchronously; no I/O).

A carried topic has a subscribe :class:`Reply`; a topic being dropped has an unsubscribe one while
its request is outstanding. The connection runner changes the ledger when the user changes its
topics and when the venue answers; the supervisor reads it (and awaits the replies).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import attrs
import trio

from feedd.exchanges.base import Op


@attrs.define(eq=False)
class Reply:
    """The venue's answer to one topic's subscribe or unsubscribe request, for whoever awaits it.

    ``done`` is set by the matching :class:`SubscribeAck` or :class:`SubscribeRejected`; ``error``
    then holds the venue's reason, or None when it agreed. A subscribe reply stays pending across
    reconnects (the topic is resubscribed on every connect) until the venue answers, or until
    the topic is unsubscribed first: then it is ``withdrawn``, which is no answer of the venue's.
    """

    op: Op
    done: trio.Event = attrs.field(factory=trio.Event)
    error: str | None = None
    withdrawn: bool = False

    def resolve(self, error: str | None) -> None:
        self.error = error
        self.done.set()

    def withdraw(self) -> None:
        self.withdrawn = True
        self.done.set()


class ReplyLedger:
    """Per topic, the venue's latest answer or the one still awaited."""

    def __init__(self, topics: Iterable[str] = ()) -> None:
        self.replies: dict[str, Reply] = {name: Reply("subscribe") for name in topics}

    def replace(self, name: str, reply: Reply | None) -> None:
        """A new request for ``name`` settles the one still awaited: its answer would not say
        anything about the topic any more (an unsubscribe counts as done, a subscribe as
        withdrawn)."""
        old = self.replies.pop(name, None)
        if old is not None and not old.done.is_set():
            if old.op == "unsubscribe":
                old.resolve(None)
            else:
                old.withdraw()
        if reply is not None:
            self.replies[name] = reply

    def record(self, topics: Iterable[str], op: Op | Literal["error"], error: str | None) -> None:
        """Record the venue's answer; an error answers whichever request the topic awaits."""
        replies = self.replies
        for name in topics:
            reply = replies.get(name)
            if reply is None or (op != "error" and reply.op != op):
                continue
            if reply.op == "unsubscribe":
                del replies[name]
            elif reply.done.is_set():  # a later answer (after a reconnect) replaces the old one
                reply = replies[name] = Reply("subscribe")
            reply.resolve(error)

    def connection_gone(self) -> None:
        """Unsubscribes still awaiting an answer are done: the connection that carried them is."""
        for name in [n for n, r in self.replies.items() if r.op == "unsubscribe"]:
            self.replies.pop(name).resolve(None)
