"""The daemon's task tree (design.md): hub and sinks first, then one supervisor per venue.

    root nursery
    ├─ signals (SIGTERM/SIGINT → stop; SIGHUP/SIGUSR1/SIGUSR2 → logged, ignored)
    ├─ hub → unix publisher
    └─ venue supervisors → connection runners
"""

from __future__ import annotations

import logging
import signal

import trio

from feedd.config import Config
from feedd.connection import RunnerSettings
from feedd.exchanges import make_venue
from feedd.hub import Hub
from feedd.sinks.unix import UnixPublisher
from feedd.status import VenueStatus
from feedd.supervisor import VenueSupervisor
from feedd.transport import TRANSPORTS, OpenTransport

log = logging.getLogger(__name__)


def runner_settings(config: Config) -> RunnerSettings:
    feed = config.feed
    return RunnerSettings(
        reconnect_interval=feed.reconnect_interval,
        max_backoff=feed.max_backoff,
        max_retries=feed.max_retries,
        stale_after=feed.stale_after,
        stable_after=feed.stable_after,
        connect_timeout=feed.connect_timeout,
    )


class Daemon:
    """Everything ``feedd run`` runs; also the handle tests and embedders drive it by."""

    def __init__(self, config: Config, *, open_transport: OpenTransport | None = None) -> None:
        self.config = config
        self.hub = Hub()
        self.publisher = UnixPublisher(
            self.hub,
            config.unix.path,
            client_buffer=config.unix.client_buffer,
            max_clients=config.unix.max_clients,
        )
        self.venues: dict[str, VenueSupervisor] = {}
        self.statuses: dict[str, VenueStatus] = {}
        self._open = open_transport or TRANSPORTS[config.feed.transport]
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        """Start sinks, then venues; ``task_status.started`` once all of them have started.

        A venue counts as started before its instrument list arrives (the supervisor fetches it
        in the background), so a slow or dead REST endpoint delays only its own venue.
        """
        config = self.config
        settings = runner_settings(config)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.hub.run)
            await nursery.start(self.publisher.serve)
            records = self.hub.sender()
            for venue_id, exchange in config.exchanges.items():
                enabled = config.feed.enabled and exchange.enabled
                status = VenueStatus(venue_id, enabled=enabled)
                self.statuses[venue_id] = status
                if not enabled:
                    continue
                supervisor = VenueSupervisor(
                    make_venue(venue_id),
                    exchange,
                    settings,
                    cache_dir=config.feed.cache_dir,
                    records=records.clone(),
                    status=status,
                    open_transport=self._open,
                )
                self.venues[venue_id] = supervisor
                await nursery.start(supervisor.run, name=f"venue {venue_id}")
            await records.aclose()
            if not config.feed.enabled:
                log.warning("the feed is disabled (feed.enabled / ENABLE_WEBSOCKET_FEED): no venue runs")
            log.info(
                "feedd running: %d venue(s), socket %s", len(self.venues), config.unix.path
            )
            task_status.started(self)

    def stop(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()


#: what ``systemctl stop`` and Ctrl-C send
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: SIGHUP is what ``systemctl reload`` sends; until live reload exists these are logged and
#: ignored, since their default action would kill the daemon and leave its socket file behind
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


async def run_until_signalled(config: Config) -> None:
    """``feedd run``: the daemon under signal handling; returns after a clean stop.

    Signals are handled from before the first start-up step, and every start-up step is
    cancellable, so a stop is prompt even while the daemon is still starting.
    """
    with trio.open_signal_receiver(*STOP_SIGNALS, *IGNORED_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:

            async def wait_for_stop() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum in STOP_SIGNALS:
                        log.info("received %s: stopping", name)
                        nursery.cancel_scope.cancel()
                        return
                    why = " (live reload is not implemented yet)" if signum == signal.SIGHUP else ""
                    log.warning("received %s: ignored%s", name, why)

            nursery.start_soon(wait_for_stop)
            nursery.start_soon(Daemon(config).run)
