"""Live subscription changes: the checks a request gets, the change itself, and its saving.

A live subscribe checks the request (venue, channels, symbol), asks the venue's supervisor to
place the stream and waits until the venue acknowledged it, then records what changed relative
to the config in the state file, so the change survives a restart; an unsubscribe is the same
the other way. The checks here raise :class:`ValueError` with the text the caller shows; the
service turns them into its refusals (``InvalidRequest`` and the venue ones), so this module
needs nothing above it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

import trio

from feedd.config import symbol_problem
from feedd.control.state import StateFile
from feedd.errors import NotSubscribed, quoted
from feedd.exchanges import venue_ids
from feedd.exchanges.base import ALL_CHANNELS, Channel, Subscription
from feedd.feed.supervisor import VenueSupervisor


def venue_problem(exchange: str, configured: Collection[str], feed_enabled: bool) -> tuple[bool, str]:
    """Why ``exchange`` has no running supervisor: (whether it is configured but disabled, the
    text). ``configured`` are the venue ids the configuration names."""
    if exchange in configured:
        why = "the feed is disabled" if not feed_enabled else "enabled = false"
        return True, f"venue {quoted(exchange)} is not running ({why})"
    names = ", ".join(configured) or "none"
    if exchange not in venue_ids():
        return False, f"unknown venue {quoted(exchange)} (configured: {names})"
    return False, f"venue {quoted(exchange)} is not configured (configured: {names})"


def wanted_channels(supervisor: VenueSupervisor, channels: Sequence[str] | None) -> list[Channel]:
    """The channels asked for (default: the venue's configured ones), each once, in order;
    ValueError for a malformed list, an unknown channel, or one the venue does not have."""
    if channels is None:
        return list(supervisor.config.channels)
    if isinstance(channels, str) or not channels:
        raise ValueError("channels: expected a non-empty list of " + ", ".join(ALL_CHANNELS))
    wanted: list[Channel] = []
    for channel in channels:
        if channel not in ALL_CHANNELS:
            raise ValueError(f"unknown channel {quoted(channel)} (known: {', '.join(ALL_CHANNELS)})")
        wanted.append(channel)
    for channel in wanted:
        try:
            supervisor.venue.topics(Subscription("X", channel))
        except ValueError:
            raise ValueError(f"{supervisor.venue_id} has no {channel!r} channel") from None
    return list(dict.fromkeys(wanted))


def checked_symbol(symbol: object) -> str:
    """``symbol`` if it is a well-formed symbol; ValueError saying why not."""
    if not isinstance(symbol, str):
        raise ValueError(f"symbol: expected text, got {type(symbol).__name__}")
    problem = symbol_problem(symbol)
    if problem is not None:
        raise ValueError(f"symbol: {problem}")
    return symbol


def channel_list(subs: Iterable[Subscription]) -> list[str]:
    """The channels of ``subs``, each once, in :data:`ALL_CHANNELS` order."""
    channels = {s.channel for s in subs}
    return [c for c in ALL_CHANNELS if c in channels]


async def subscribe(
    supervisor: VenueSupervisor,
    state: StateFile,
    exchange: str,
    symbol: str,
    wanted: Sequence[Channel],
    deadline: float,
) -> dict[str, Any]:
    """Subscribe ``symbol`` to ``wanted`` and wait for the venue's answer until ``deadline``;
    what changed is saved whatever the answer. The API's answer document."""
    before = set(supervisor.subscriptions())
    try:
        added = await supervisor.subscribe_confirmed(symbol, wanted, deadline)
    finally:
        persisted = await record(state, supervisor, before)
    symbol = supervisor.normalize(symbol)
    return {
        "exchange": exchange,
        "symbol": symbol,
        "channels": supervisor.channels_of(symbol),
        "added": channel_list(added),
        "persisted": persisted,
    }


async def unsubscribe(
    supervisor: VenueSupervisor,
    state: StateFile,
    exchange: str,
    symbol: str,
    wanted: Sequence[Channel] | None,
    deadline: float,
) -> dict[str, Any]:
    """Unsubscribe ``symbol`` from ``wanted`` (None: every channel it has) and wait for the
    venue's answer until ``deadline``; NotSubscribed when none of them is subscribed."""
    if wanted is not None and not set(wanted) & set(supervisor.channels_of(symbol)):
        raise NotSubscribed(
            f"{exchange}: {supervisor.normalize(symbol)} is not subscribed to {', '.join(wanted)}"
        )
    before = set(supervisor.subscriptions())
    try:
        removed = await supervisor.unsubscribe_confirmed(symbol, wanted, deadline)
    finally:
        persisted = await record(state, supervisor, before)
    symbol = supervisor.normalize(symbol)
    return {
        "exchange": exchange,
        "symbol": symbol,
        "removed": channel_list(removed),
        "channels": supervisor.channels_of(symbol),
        "persisted": persisted,
    }


async def record(state: StateFile, supervisor: VenueSupervisor, before: set[Subscription]) -> bool:
    """Save what changed relative to the config; whether the state file holds it now."""
    after = set(supervisor.subscriptions())
    exchange = supervisor.config
    base = {Subscription(s, c) for s in exchange.symbols for c in exchange.channels}
    changed = state.changes(supervisor.venue_id).record(before, after, base)
    if not changed:
        return state.writable
    with trio.CancelScope(shield=True):  # a change made is a change saved
        saved = await state.save()
    return saved


__all__ = [
    "channel_list",
    "checked_symbol",
    "record",
    "subscribe",
    "unsubscribe",
    "venue_problem",
    "wanted_channels",
]
