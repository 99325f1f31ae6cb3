"""What the service tells about itself: the status document, health, the one-line summary, the
subscription list and the history's running totals; all read from the live registries of a
:class:`~feedd.control.service.WebSocketService`, nothing kept here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from feedd.control.history import Totals
from feedd.exchanges.base import ALL_CHANNELS, Channel
from feedd.fanout.hub import SubscriberInfo
from feedd.feed.status import overall
from feedd.feed.supervisor import VenueSupervisor

if TYPE_CHECKING:
    from feedd.control.service import WebSocketService


def by_symbol(supervisor: VenueSupervisor) -> list[dict[str, Any]]:
    """A venue's subscriptions, one entry per symbol and state."""
    groups: dict[tuple[str, str], list[Channel]] = {}
    for sub in supervisor.subscriptions():
        groups.setdefault((sub.symbol, supervisor.state_of(sub)), []).append(sub.channel)
    return [
        {"symbol": symbol, "channels": [c for c in ALL_CHANNELS if c in channels], "state": state}
        for (symbol, state), channels in groups.items()
    ]


def list_subscriptions(service: WebSocketService) -> list[dict[str, Any]]:
    """Every running venue's subscriptions: ``{"exchange", "symbol", "channels", "state"}``."""
    return [
        {"exchange": venue_id, **entry}
        for venue_id, supervisor in service.venues.items()
        for entry in by_symbol(supervisor)
    ]


def subscribers(service: WebSocketService) -> list[SubscriberInfo]:
    """The callbacks', then the Unix socket's subscribers' counters."""
    found = [sink.info() for sink in service.callbacks]
    if service.publisher is not None:
        found += [
            SubscriberInfo("unix", f"unix#{sub.number}", sub.sent, sub.dropped_total, sub.pending)
            for sub in sorted(service.publisher.subscribers, key=lambda s: s.number)
        ]
    return found


def health(service: WebSocketService) -> tuple[str, list[str]]:
    """``ok``/``degraded``/``down`` and why (see :meth:`WebSocketService.health`)."""
    state, reasons = overall(service.statuses.values(), service.config.feed.stale_after)
    if service.nats is not None and (problem := service.nats.problem()) is not None:
        reasons = [*reasons, problem]
        if state == "ok":
            state = "degraded"
    return state, reasons


def totals(service: WebSocketService) -> dict[str, Totals]:
    """Each venue's running totals, for :class:`~feedd.control.history.History`."""
    delays = service.metrics.delay_counts()
    return {
        venue: Totals(
            status.messages, status.records, sum(status.rejected.values()), delays.get(venue, ())
        )
        for venue, status in service.statuses.items()
    }


def connection_status(service: WebSocketService) -> dict[str, Any]:
    """The status document of ``GET /api/v1/websocket/status``."""
    state, reasons = health(service)
    exchanges = {}
    for venue_id, status in service.statuses.items():
        supervisor = service.venues.get(venue_id)
        subs = [] if supervisor is None else by_symbol(supervisor)
        exchanges[venue_id] = status.snapshot(subs)
        exchanges[venue_id]["latency"] = service.history.latency(venue_id)
    nats = service.nats
    last_reload = service.last_reload
    return {
        "state": state,
        "reasons": reasons,
        "exchanges": exchanges,
        "subscribers": [
            {"kind": s.kind, "name": s.name, "delivered": s.delivered, "dropped": s.dropped,
             "pending": s.pending, **({"errors": s.errors} if s.kind == "callback" else {})}
            for s in subscribers(service)
        ],
        "sinks": {
            **({} if nats is None else {"nats": nats.snapshot()}),
            **({} if (recorder := getattr(service, "recorder", None)) is None
               else {"recorder": recorder.snapshot()}),
        },
        "http": {"listen": service.http_address, "token": service.config.http.token is not None},
        "state_file": {"path": str(service.state.path), "problem": service.state.problem},
        "reload": None if last_reload is None else last_reload.snapshot(),
    }


def summary(service: WebSocketService) -> str:
    """The state in one line (systemd's ``STATUS=``), with what the last reload left to do."""
    state, _ = health(service)
    states = [service.statuses[v].state for v in service.venues]
    subscriptions = sum(len(s.subscriptions()) for s in service.venues.values())
    line = f"{state}: {states.count('connected')}/{len(service.venues)} venue(s) connected"
    if "idle" in states:
        line += f", {states.count('idle')} idle (nothing subscribed)"
    line += f", {subscriptions} subscription(s)"
    if service.publisher is not None:
        line += f", {len(service.publisher.subscribers)} socket subscriber(s)"
    if service.nats is not None:
        line += f", nats {'connected' if service.nats.connected else 'not connected'}"
    reload = service.last_reload
    if reload is not None and (not reload.ok or reload.needs_restart):
        line += f"; last reload: {reload.summary()}"
    return line


__all__ = [
    "by_symbol",
    "connection_status",
    "health",
    "list_subscriptions",
    "subscribers",
    "summary",
    "totals",
]
