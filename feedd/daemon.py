"""``feedd run``: the service with its Unix socket and HTTP API, under signal handling.

    root nursery
    ├─ signals (SIGTERM/SIGINT → graceful stop; SIGHUP/SIGUSR1/SIGUSR2 → logged, ignored)
    └─ the service (feedd.service): hub and sinks, HTTP API, venue supervisors
"""

from __future__ import annotations

import logging
import signal

import trio

from feedd.config import Config
from feedd.service import WebSocketService
from feedd.sinks.unix import UnixPublisher
from feedd.transport import OpenTransport

log = logging.getLogger(__name__)

__all__ = ["Daemon", "run_until_signalled"]


class Daemon(WebSocketService):
    """The service as ``feedd run`` runs it: the Unix publisher and the HTTP API on.

    Also the handle tests drive it by: ``daemon = await nursery.start(Daemon(config).run)``,
    ``daemon.stop()``.
    """

    def __init__(
        self, config: Config, *, open_transport: OpenTransport | None = None, ack_timeout: float | None = None
    ) -> None:
        extra = {} if ack_timeout is None else {"ack_timeout": ack_timeout}
        super().__init__(config, serve_unix=True, serve_http=True, open_transport=open_transport, **extra)
        assert self.publisher is not None
        self.publisher: UnixPublisher = self.publisher


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
    daemon = Daemon(config)
    with trio.open_signal_receiver(*STOP_SIGNALS, *IGNORED_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:

            async def wait_for_stop() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum in STOP_SIGNALS:
                        log.info("received %s: stopping", name)
                        daemon.stop()
                        return
                    why = " (live reload is not implemented yet)" if signum == signal.SIGHUP else ""
                    log.warning("received %s: ignored%s", name, why)

            async def run() -> None:
                await daemon.run()
                nursery.cancel_scope.cancel()  # stopped: stop listening for signals too

            nursery.start_soon(wait_for_stop)
            nursery.start_soon(run)
