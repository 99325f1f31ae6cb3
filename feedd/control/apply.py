"""A live reload's apply step: carry out :func:`~feedd.control.reload.plan_reload`'s plan on a
running service.

Venues start, stop or (when their endpoints changed) restart through the service's venue steps;
symbols and channels the edit added are subscribed and those it removed unsubscribed, through
the same calls as the API, concurrently, each waiting at most the ack timeout; settings that can
change live do. The service serializes reloads and cancels one on stop
(:meth:`~feedd.control.service.WebSocketService.reload`); this module only applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from feedd.config import Config
from feedd.control.reload import ReloadOutcome, VenuePlan, plan_reload, subscriptions_of
from feedd.errors import NoAnswer, NotSubscribed, SubscriptionRefused
from feedd.exchanges.base import Channel
from feedd.feed.runner import RunnerSettings

if TYPE_CHECKING:
    from feedd.control.service import WebSocketService

_DONE = {"start": "started", "stop": "stopped", "restart": "restarted"}


def runner_settings(config: Config) -> RunnerSettings:
    """The connection runners' settings from ``[feed]``."""
    feed = config.feed
    return RunnerSettings(
        reconnect_interval=feed.reconnect_interval,
        max_backoff=feed.max_backoff,
        max_retries=feed.max_retries,
        stale_after=feed.stale_after,
        stable_after=feed.stable_after,
        connect_timeout=feed.connect_timeout,
    )


async def apply_reload(service: WebSocketService, new: Config) -> ReloadOutcome:
    """Apply the difference between ``service.config`` and ``new``; what was done and what not."""
    old = service.config
    plan = plan_reload(old, new)
    service.config = config = plan.config
    applied = list(plan.applied)
    problems: list[str] = []
    settings = runner_settings(config)
    if settings != runner_settings(old):
        for supervisor in service.venues.values():
            supervisor.update_settings(settings)
    if service.publisher is not None:
        service.publisher.client_buffer = config.unix.client_buffer
        service.publisher.max_clients = config.unix.max_clients
    updates: list[VenuePlan] = []
    live: list[VenuePlan] = []  # updates made through live subscribes and unsubscribes
    for step in plan.venues:
        if step.action in ("stop", "restart"):
            await service.stop_venue(step.venue)
        if step.action in ("start", "restart"):
            service.add_venue(step.venue, config.exchanges[step.venue])
            await service.start_venue(step.venue)
        if step.action == "update":
            supervisor = service.venues[step.venue]
            supervisor.reconfigure(config.exchanges[step.venue])
            if supervisor.amend_initial(step.subscribe, step.unsubscribe):
                applied.append(f"{step.venue}: {step.why} (applied once its instrument list is in)")
            else:
                live.append(step)
            updates.append(step)
        else:
            applied.append(f"{step.venue}: {_DONE[step.action]} ({step.why})")
    for venue_id in config.exchanges:
        if venue_id not in service.venues:
            service.new_status(venue_id, enabled=False)
    for venue_id in [v for v in service.statuses if v not in config.exchanges]:
        del service.statuses[venue_id]
    async with trio.open_nursery() as nursery:
        for step in live:
            for symbol, channels in step.unsubscribe.items():
                nursery.start_soon(_change, service, False, step.venue, symbol, channels, applied, problems)
            for symbol, channels in step.subscribe.items():
                nursery.start_soon(_change, service, True, step.venue, symbol, channels, applied, problems)
    if [step for step in updates if _forget_config_changes(service, step.venue, old)]:
        with trio.CancelScope(shield=True):
            await service.state.save()
    return ReloadOutcome(new.source, applied=tuple(applied),
                         needs_restart=plan.needs_restart, problems=tuple(problems))


async def _change(
    service: WebSocketService,
    subscribe: bool,
    venue_id: str,
    symbol: str,
    channels: Sequence[Channel],
    applied: list[str],
    problems: list[str],
) -> None:
    """One live subscribe (or unsubscribe) of the edit, its outcome noted in ``applied`` or
    ``problems``."""
    call = service.subscribe_to_symbol if subscribe else service.unsubscribe_from_symbol
    verb = "subscribed" if subscribe else "unsubscribed"
    what = f"{venue_id}: {symbol} {'+'.join(channels)}"
    try:
        answer = await call(venue_id, symbol, channels)
    except NotSubscribed:
        return  # removed through the API already
    except NoAnswer as exc:  # the change stands; the venue may still confirm it
        problems.append(f"{what}: {verb}, but {str(exc).removeprefix(f'{venue_id}: ')}")
    except SubscriptionRefused as exc:
        problems.append(f"{what}: not {verb}: {str(exc).removeprefix(f'{venue_id}: ')}")
    else:
        done = answer["added" if subscribe else "removed"]
        if done:  # nothing when the API had made the change already
            applied.append(f"{venue_id}: {symbol} {'+'.join(done)}: {verb}")


def _forget_config_changes(service: WebSocketService, venue_id: str, old: Config) -> bool:
    """Drop runtime changes the edit made moot: an API subscription the config now has, an
    API unsubscription of a subscription the config no longer has, or has again (the edit
    that adds it is the newer wish). Whether anything was dropped."""
    changes = service.state.venues.get(venue_id)
    if changes is None:
        return False
    base = subscriptions_of(service.config.exchanges[venue_id])
    added = base - subscriptions_of(old.exchanges[venue_id])
    before = (set(changes.subscribed), set(changes.unsubscribed))
    changes.subscribed -= base
    changes.unsubscribed &= base - added
    return (changes.subscribed, changes.unsubscribed) != before


__all__ = ["apply_reload", "runner_settings"]
