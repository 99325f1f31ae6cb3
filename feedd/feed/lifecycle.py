"""The lifecycle of one connection attempt, as a state table apart from the tasks that drive it
(the way h11 keeps ``_state.py`` beside ``_connection.py``). Pure: no trio, no I/O.

An attempt is one connect-to-close of a :class:`~feedd.feed.runner.ConnectionRunner`'s
connection. Its *role* in the connection is one of::

    first connect ──────────────────────────────► CURRENT ──hand_over──► REPLACED
                                                     ▲
    rotation's replacement ─► STANDBY ──ready──► READY
                                 │  └──take_over────►│ (take_over from either: the venue cut
                                 │                   │  the old connection first)
                                 └──abandon──► ABANDONED ◄──abandon── READY

- STANDBY: a rotation's replacement, connected and subscribed, its records held while the
  connection it replaces still delivers.
- READY: the replacement delivered its first data (or, on a quiet feed, every topic was
  acknowledged): it may take over.
- CURRENT: the runner's connection; what it delivers goes to the hub.
- REPLACED: a rotation handed over to its successor; it is closing (a planned end).
- ABANDONED: a replacement the rotation gave up; the current connection carried on.

REPLACED and ABANDONED are final. How an attempt *ends* (its reason, whether planned) is not a
role: any attempt may end at any time (a socket closes), and what the runner does then depends on
the role it had (see ``ConnectionRunner._attempt_ended``).
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    STANDBY = "standby"
    READY = "ready"
    CURRENT = "current"
    REPLACED = "replaced"
    ABANDONED = "abandoned"


class Trigger(enum.Enum):
    #: the first data arrived (or a quiet feed's every topic was acknowledged)
    READY = "ready"
    #: becomes the runner's connection (a rotation's hand-over, or the old one was cut)
    TAKE_OVER = "take_over"
    #: a rotation handed over to this attempt's successor
    HAND_OVER = "hand_over"
    #: a rotation gave this replacement up
    ABANDON = "abandon"


#: (state, trigger) -> the next state; a pair not listed is an illegal transition
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.STANDBY, Trigger.READY): State.READY,
    (State.STANDBY, Trigger.TAKE_OVER): State.CURRENT,
    (State.STANDBY, Trigger.ABANDON): State.ABANDONED,
    (State.READY, Trigger.READY): State.READY,
    (State.READY, Trigger.TAKE_OVER): State.CURRENT,
    (State.READY, Trigger.ABANDON): State.ABANDONED,
    # a current connection's first data: nothing waits for it
    (State.CURRENT, Trigger.READY): State.CURRENT,
    (State.CURRENT, Trigger.HAND_OVER): State.REPLACED,
}

FINAL = frozenset({State.REPLACED, State.ABANDONED})


class LifecycleError(RuntimeError):
    """A transition the table does not allow: a bug in the runner, never the venue's doing."""

    def __init__(self, state: State, trigger: Trigger) -> None:
        super().__init__(f"illegal attempt transition: {trigger.value} in state {state.value}")
        self.state = state
        self.trigger = trigger


def next_state(state: State, trigger: Trigger) -> State:
    """Where ``trigger`` takes an attempt in ``state``; :class:`LifecycleError` if nowhere."""
    try:
        return TRANSITIONS[state, trigger]
    except KeyError:
        raise LifecycleError(state, trigger) from None


class Lifecycle:
    """One attempt's role, moved only along :data:`TRANSITIONS`."""

    __slots__ = ("state",)

    def __init__(self, *, current: bool) -> None:
        self.state = State.CURRENT if current else State.STANDBY

    def fire(self, trigger: Trigger) -> State:
        self.state = next_state(self.state, trigger)
        return self.state

    @property
    def final(self) -> bool:
        return self.state in FINAL
