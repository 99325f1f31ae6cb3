"""What a configuration reload changes: the difference between two configs, as a plan.

Pure: :func:`plan_reload` compares the config running with the one just read and says, per
venue, whether it starts, stops, restarts (its endpoints changed) or keeps running with symbols
and channels added and removed; which settings apply live; and which need a restart. The
service (:meth:`feedd.control.service.WebSocketService.reload`) carries the plan out.

Settings that need a restart are not applied at all: the plan's :attr:`ReloadPlan.config` is the
new config with them kept as they run, so the status never shows a value that is not in force,
and the next reload reports them again until the daemon is restarted.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import attrs

from feedd.codec import rfc3339
from feedd.config import Config, ExchangeConfig, proxy_of
from feedd.exchanges.base import CHANNELS, Channel, Subscription
from feedd.wire.proxy import ProxySetting

#: settings that take effect only at start (what holds them is bound or opened once)
RESTART_ONLY = (
    ("unix", "path"),
    ("http", "listen"),
    ("http", "token"),
    ("http", "token_file"),
    ("feed", "transport"),
    ("feed", "state_file"),
    ("feed", "cache_dir"),
    ("feed", "backfill_max"),
    ("feed", "backfill_hold"),
    ("feed", "backfill_max_age"),
    ("feed", "instruments_wait"),
    ("feed", "instruments_refresh"),
)
#: settings applied live, and how far
LIVE = {
    ("feed", "reconnect_interval"): "from each connection's next attempt",
    ("feed", "max_backoff"): "from each connection's next attempt",
    ("feed", "max_retries"): "from each connection's next failure",
    ("feed", "stale_after"): "health at once, connections from their next attempt",
    ("feed", "stable_after"): "from each connection's next attempt",
    ("feed", "connect_timeout"): "from each connection's next attempt",
    ("unix", "client_buffer"): "for subscribers connecting from now on",
    ("unix", "max_clients"): "at once",
}
#: per-venue settings whose change restarts that venue (its connections move)
VENUE_RESTART = ("url", "rest_url", "check_symbols", "conflate")

Action = Literal["start", "stop", "restart", "update"]


@attrs.frozen
class VenuePlan:
    venue: str
    action: Action
    why: str
    #: for ``update``: symbol -> channels the config added or removed
    subscribe: dict[str, tuple[Channel, ...]] = attrs.field(factory=dict)
    unsubscribe: dict[str, tuple[Channel, ...]] = attrs.field(factory=dict)


@attrs.frozen
class ReloadPlan:
    #: the config to run from now on: the new one, restart-only settings kept as they run
    config: Config
    venues: tuple[VenuePlan, ...]
    #: ``key: old → new (how it applies)`` for every live setting that changed
    applied: tuple[str, ...]
    #: ``key: old → new`` for every setting left as it runs until a restart
    needs_restart: tuple[str, ...]


def subscriptions_of(exchange: ExchangeConfig) -> set[Subscription]:
    """What a venue's config section subscribes: every symbol on every configured channel."""
    return {Subscription(s, c) for s in exchange.symbols for c in exchange.channels}


def by_symbol(subs: Iterable[Subscription]) -> dict[str, tuple[Channel, ...]]:
    grouped: dict[str, set[Channel]] = {}
    for sub in subs:
        grouped.setdefault(sub.symbol, set()).add(sub.channel)
    return {s: tuple(c for c in CHANNELS if c in grouped[s]) for s in sorted(grouped)}


def _running(config: Config, venue: str) -> bool:
    exchange = config.exchanges.get(venue)
    return exchange is not None and config.feed.enabled and exchange.enabled


def _why_not_running(config: Config, venue: str) -> str:
    if venue not in config.exchanges:
        return "removed from the config"
    if not config.feed.enabled:
        return "the feed is disabled"
    return "enabled = false"


def _proxy_text(setting: ProxySetting) -> str:
    """A proxy setting as a reload's log names it: never with its credentials."""
    return "the environment's" if setting is None else "none" if setting == "" else str(setting)


def _change(key: str, old: Any, new: Any) -> str:
    return f"{key}: {old!r} → {new!r}"


def _venue_plan(old: Config, new: Config, venue: str) -> VenuePlan | None:
    was, now = _running(old, venue), _running(new, venue)
    if was and not now:
        return VenuePlan(venue, "stop", _why_not_running(new, venue))
    if now and not was:
        why = "added to the config" if venue not in old.exchanges else "enabled"
        return VenuePlan(venue, "start", why)
    if not now:
        return None
    before, after = old.exchanges[venue], new.exchanges[venue]
    moved = [_change(key, getattr(before, key), getattr(after, key))
             for key in VENUE_RESTART if getattr(before, key) != getattr(after, key)]
    old_proxy, new_proxy = proxy_of(old, venue), proxy_of(new, venue)
    if old_proxy != new_proxy:  # its own or [feed]'s: every connection of the venue moves
        moved.append(f"proxy: {_proxy_text(old_proxy)} → {_proxy_text(new_proxy)}")
    if moved:
        return VenuePlan(venue, "restart", "; ".join(moved))
    if before == after:
        return None
    old_subs, new_subs = subscriptions_of(before), subscriptions_of(after)
    changes = [_change(key, getattr(before, key), getattr(after, key))
               for key in ("symbols", "channels", "quote_max_age")
               if getattr(before, key) != getattr(after, key)]
    return VenuePlan(
        venue,
        "update",
        "; ".join(changes),
        subscribe=by_symbol(new_subs - old_subs),
        unsubscribe=by_symbol(old_subs - new_subs),
    )


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """The plan that takes a daemon running ``old`` to ``new`` without a restart."""
    applied = []
    needs_restart = []
    kept: dict[str, dict[str, Any]] = {"feed": {}, "http": {}, "unix": {}}
    for section, key in RESTART_ONLY:
        before, after = getattr(getattr(old, section), key), getattr(getattr(new, section), key)
        if before != after:
            name = f"{section}.{key}"
            needs_restart.append(f"{name}: changed" if key == "token" else _change(name, before, after))
            kept[section][key] = before
    for (section, key), how in LIVE.items():
        before, after = getattr(getattr(old, section), key), getattr(getattr(new, section), key)
        if before != after:
            applied.append(f"{_change(f'{section}.{key}', before, after)} ({how})")
    if old.feed.enabled != new.feed.enabled:
        applied.append(_change("feed.enabled", old.feed.enabled, new.feed.enabled))
    for venue, exchange in new.exchanges.items():
        before = old.exchanges.get(venue)
        if before is not None and before.quote_max_age != exchange.quote_max_age:
            key = f"exchanges.{venue}.quote_max_age"
            applied.append(f"{_change(key, before.quote_max_age, exchange.quote_max_age)} (at once)")
    nats = new.nats
    if old.nats != new.nats:  # the sink's connection and stream are set up once, at start
        needs_restart.append("nats: changed")
        nats = old.nats
    record = new.record
    if old.record != new.record:  # the recorder is made once, at start
        needs_restart.append("record: changed")
        record = old.record
    config = attrs.evolve(
        new,
        nats=nats,
        record=record,
        feed=attrs.evolve(new.feed, **kept["feed"]),
        http=attrs.evolve(new.http, **kept["http"]),
        unix=attrs.evolve(new.unix, **kept["unix"]),
    )
    venues = [_venue_plan(old, new, v) for v in dict.fromkeys([*old.exchanges, *new.exchanges])]
    return ReloadPlan(
        config=config,
        venues=tuple(v for v in venues if v is not None),
        applied=tuple(applied),
        needs_restart=tuple(needs_restart),
    )


@attrs.frozen
class ReloadOutcome:
    """What the last reload did, for the log, ``STATUS=`` and the status document."""

    source: str
    at: datetime = attrs.field(factory=lambda: datetime.now(UTC))
    #: the file was refused (unreadable, invalid): nothing changed
    error: str | None = None
    #: what changed, one line each (venues started, symbols subscribed, settings applied)
    applied: tuple[str, ...] = ()
    #: settings that changed in the file but wait for a restart
    needs_restart: tuple[str, ...] = ()
    #: changes that were attempted and did not (fully) succeed: an unknown symbol, no answer
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems

    def summary(self) -> str:
        """One line: what happened, and what still needs attention."""
        if self.error is not None:
            return f"reload failed, running on the previous config: {self.error}"
        parts = [f"{len(self.applied)} change(s) applied" if self.applied else "nothing changed"]
        if self.problems:
            parts.append(f"{len(self.problems)} problem(s): " + "; ".join(self.problems))
        if self.needs_restart:
            keys = (line.split(":", 1)[0] for line in self.needs_restart)
            parts.append("needs a restart: " + ", ".join(keys))
        return "; ".join(parts)

    def snapshot(self) -> dict[str, Any]:
        return {
            "at": rfc3339(self.at),
            "source": self.source,
            "ok": self.ok,
            "error": self.error,
            "applied": list(self.applied),
            "needs_restart": list(self.needs_restart),
            "problems": list(self.problems),
        }
