"""Faults on a schedule: what the fault-injection tests and the soak benchmark play on a simulator.

A :class:`FaultSchedule` is a list of :class:`Fault` — at ``at`` seconds (on the simulator's
clock: trio's, so a mock clock in tests), do ``kind`` with ``params`` — and :meth:`FaultSchedule.play`
is the task that applies them. Each kind is one small action of :class:`~feedd.sim.server.SimServer`
(or of one venue's simulator), listed in :data:`FAULTS` with what it does to a client:

==================  ===============================================================================
``abrupt_close``    every connection ends without a close frame (TCP close; what a client calls 1006)
``close_1000`` …    every connection ends with a close frame of that code: 1000 normal, 1001 going
                    away, 1008 policy violation, 1011 internal error
``half_open``       no byte read or written, no FIN, for ``duration`` s; then cut (default 30 s)
``stall``           nothing sent at all (data, replies, pings) for ``duration`` s
``heartbeat_only``  no market data for ``duration`` s; replies, pongs, pings, heartbeats go on
``slow_loris``      frames trickle a byte per ``byte_interval`` s (default 0.1) for ``duration`` s
``malformed``       one frame that is not JSON
``truncated``       one frame of the venue's shape whose JSON is cut short
``oversized``       one frame declaring ``declared`` bytes (default 16 MiB + 1) and never finished
``subscribe_error`` subscribes naming ``symbols`` get the venue's error reply for ``duration`` s;
                    with ``drop`` (default) connections are cut first so the client resubscribes
``swallow_acks``    subscribe requests dropped unanswered for ``duration`` s; ``drop`` as above
``server_shutdown`` the venue's shutdown notice, then a 1001 close ``close_after`` s later
                    (Binance ``serverShutdown`` only)
==================  ===============================================================================

A fault with a ``duration`` is undone by the same task when it is over (faults of one kind do
not overlap: a new one replaces the end of the last).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import attrs
import trio

from feedd.sim.server import SimServer

log = logging.getLogger(__name__)

#: a fault's action on a simulator with its params; returns the undo, if the fault lasts
Action = Callable[[SimServer[Any], Mapping[str, Any]], Callable[[], None] | None]

#: feedd's client frame limit plus one (``feedd.wire.transport.MAX_MESSAGE``)
OVERSIZED: Final = 16 * 1024 * 1024 + 1
#: seconds a lasting fault lasts when its params do not say
DEFAULT_DURATION: Final = 5.0


def _close(code: int | None, reason: str) -> Action:
    def close(sim: SimServer[Any], params: Mapping[str, Any]) -> None:
        sim.drop_connections(code=code, reason=params.get("reason", reason))

    return close


def _half_open(sim: SimServer[Any], params: Mapping[str, Any]) -> None:
    sim.half_open(params.get("duration", 30.0))


def _toggle(name: str) -> Action:
    """A fault that is a switch of the simulator's: on now, off when its duration is over."""

    def toggle(sim: SimServer[Any], params: Mapping[str, Any]) -> Callable[[], None]:
        switch: Callable[[bool], None] = getattr(sim, name)
        switch(True)
        return lambda: switch(False)

    return toggle


def _slow_loris(sim: SimServer[Any], params: Mapping[str, Any]) -> Callable[[], None]:
    sim.trickle(params.get("byte_interval", 0.1))
    return lambda: sim.trickle(None)


def _oversized(sim: SimServer[Any], params: Mapping[str, Any]) -> None:
    sim.send_oversized(params.get("declared", OVERSIZED))


def _subscribe_error(sim: SimServer[Any], params: Mapping[str, Any]) -> Callable[[], None]:
    sim.refuse_symbols(params["symbols"])
    drop = params.get("drop", True)
    if drop:
        sim.drop_connections()

    def undo() -> None:
        sim.refuse_symbols(())
        if drop:
            sim.drop_connections()

    return undo


def _swallow_acks(sim: SimServer[Any], params: Mapping[str, Any]) -> Callable[[], None]:
    sim.swallow_subscribes(True)
    drop = params.get("drop", True)
    if drop:
        sim.drop_connections()

    def undo() -> None:
        sim.swallow_subscribes(False)
        if drop:
            sim.drop_connections()

    return undo


def _server_shutdown(sim: SimServer[Any], params: Mapping[str, Any]) -> None:
    announce = getattr(sim, "send_server_shutdown", None)
    if announce is None:
        raise ValueError(f"{type(sim).__name__} has no shutdown notice")
    announce(params.get("close_after", 1.0))


#: every fault kind, by name (see the module docstring)
FAULTS: Final[dict[str, Action]] = {
    "abrupt_close": _close(None, "dropped"),
    "close_1000": _close(1000, "Normal closure"),
    "close_1001": _close(1001, "Going away"),
    "close_1008": _close(1008, "Policy violation"),
    "close_1011": _close(1011, "Internal error"),
    "half_open": _half_open,
    "stall": _toggle("set_silent"),
    "heartbeat_only": _toggle("stall_data"),
    "slow_loris": _slow_loris,
    "malformed": lambda sim, params: sim.send_invalid(),
    "truncated": lambda sim, params: sim.send_malformed(),
    "oversized": _oversized,
    "subscribe_error": _subscribe_error,
    "swallow_acks": _swallow_acks,
    "server_shutdown": _server_shutdown,
}


def supports(sim: SimServer[Any], kind: str) -> bool:
    """Whether ``sim`` can play ``kind`` (the shutdown notice is one venue's)."""
    return kind in FAULTS and (kind != "server_shutdown" or hasattr(sim, "send_server_shutdown"))


@attrs.frozen(slots=True)
class Fault:
    """At ``at`` seconds after the schedule starts, apply ``kind`` with ``params``."""

    at: float = attrs.field(validator=attrs.validators.ge(0))
    kind: str = attrs.field(validator=attrs.validators.in_(FAULTS))
    params: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    @property
    def duration(self) -> float:
        return float(self.params.get("duration", DEFAULT_DURATION))


def _in_time_order(faults: Iterable[Fault]) -> tuple[Fault, ...]:
    return tuple(sorted(faults, key=lambda fault: fault.at))


@attrs.frozen(slots=True)
class FaultSchedule:
    """Faults in the order they happen; :meth:`play` applies them to one simulator."""

    faults: tuple[Fault, ...] = attrs.field(converter=_in_time_order)

    @classmethod
    def random(
        cls,
        rng: random.Random,
        *,
        seconds: float,
        mean_interval: float,
        kinds: Iterable[str],
        params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> FaultSchedule:
        """Faults of ``kinds`` (uniformly chosen) at exponentially spaced times within
        ``seconds`` (a Poisson process of mean interval ``mean_interval``), each with
        ``params[kind]``; reproducible from ``rng``'s seed."""
        choices = sorted(kinds)
        if not choices:
            raise ValueError("no fault kinds to choose from")
        unknown = [k for k in choices if k not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault kinds: {', '.join(unknown)}")
        faults: list[Fault] = []
        at = rng.expovariate(1.0 / mean_interval)
        while at < seconds:
            kind = rng.choice(choices)
            faults.append(Fault(at, kind, dict((params or {}).get(kind, {}))))
            at += rng.expovariate(1.0 / mean_interval)
        return cls(faults)

    async def play(
        self,
        sim: SimServer[Any],
        *,
        applied: list[Fault] | None = None,
        on_fault: Callable[[Fault], Awaitable[None] | None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Apply every fault at its time (from when this starts), appending each to ``applied``
        and calling ``on_fault`` with it; return once the last is applied and undone."""
        start = trio.current_time()
        undo_scopes: dict[str, trio.CancelScope] = {}
        task_status.started()
        async with trio.open_nursery() as nursery:
            for fault in self.faults:
                await trio.sleep_until(start + fault.at)
                previous = undo_scopes.pop(fault.kind, None)
                if previous is not None:
                    previous.cancel()  # undoes at once, before the same kind starts again
                undo = FAULTS[fault.kind](sim, fault.params)
                log.info("fault %s %s on %s", fault.kind, dict(fault.params) or "", type(sim).__name__)
                if applied is not None:
                    applied.append(fault)
                if on_fault is not None:
                    result = on_fault(fault)
                    if result is not None:
                        await result
                if undo is not None:
                    undo_scopes[fault.kind] = await nursery.start(_undo_after, fault.duration, undo)


async def _undo_after(
    duration: float,
    undo: Callable[[], None],
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Undo a lasting fault after ``duration``, or at once when cancelled (replaced)."""
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await trio.sleep(duration)
    undo()
