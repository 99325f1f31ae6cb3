"""``feedd run``: the service with its Unix socket and HTTP API, under signals and systemd.

    root nursery
    ├─ signals: SIGTERM/SIGINT → graceful stop (a second one: stop at once);
    │           SIGHUP → reload the config file; SIGUSR1/SIGUSR2 → logged, ignored
    ├─ reloader: one reload at a time; SIGHUPs meanwhile make one more
    ├─ systemd: READY=1 once started, STATUS= kept current, WATCHDOG=1 while the hub is alive
    └─ the service (feedd.control.service): hub and sinks, HTTP API, venue supervisors
"""

from __future__ import annotations

import contextlib
import logging
import signal

import trio

from feedd.config import Config, ConfigError, config_warnings, load_config
from feedd.control.reload import ReloadOutcome
from feedd.control.service import WebSocketService
from feedd.fanout.unix import UnixPublisher
from feedd.ops.notify import Notifier, keep_status, watchdog
from feedd.wire.transport import OpenTransport

log = logging.getLogger(__name__)

__all__ = ["Daemon", "run_until_signalled"]


class Daemon:
    """The service as ``feedd run`` runs it: a :class:`WebSocketService` with the Unix publisher
    and the HTTP API on (:attr:`service`), and what the daemon adds to it: reading the config
    file again on SIGHUP (:meth:`reload_file`).

    Also the handle tests drive it by: ``service = await nursery.start(Daemon(config).run)``
    hands on the running service; ``service.stop()`` (or :meth:`stop`) ends it.
    """

    def __init__(
        self, config: Config, *, open_transport: OpenTransport | None = None, ack_timeout: float | None = None
    ) -> None:
        extra = {} if ack_timeout is None else {"ack_timeout": ack_timeout}
        self.service = WebSocketService(
            config, serve_unix=True, serve_http=True, open_transport=open_transport, **extra
        )
        assert self.service.publisher is not None
        self.publisher: UnixPublisher = self.service.publisher

    async def run(
        self, *, task_status: trio.TaskStatus[WebSocketService] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The service's task tree; ``task_status.started(service)`` once it runs."""
        await self.service.run(task_status=task_status)

    def stop(self) -> None:
        """Stop gracefully (see :meth:`WebSocketService.stop`)."""
        self.service.stop()

    def summary(self) -> str:
        """The service's state in one line, systemd's ``STATUS=``."""
        return self.service.summary()

    async def reload_file(self, path: str) -> ReloadOutcome:
        """Read ``path`` again (and the environment's overrides) and apply it; a file that cannot
        be used changes nothing and is reported (log, status, ``STATUS=``)."""
        try:
            config = load_config(path)
        except ConfigError as exc:
            log.error("reload failed, still running on the previous configuration: %s", exc)
            return self.service.reload_refused(path, str(exc))
        for warning in config_warnings(config):
            log.warning("%s", warning)
        outcome = await self.service.reload(config)
        for line in outcome.applied:
            log.info("reload: %s", line)
        for line in outcome.problems:
            log.error("reload: %s", line)
        for line in outcome.needs_restart:
            log.warning("reload: %s: needs a restart to take effect; still running with the old value", line)
        log.info("reloaded %s: %s", path, outcome.summary())
        return outcome


#: what ``systemctl stop`` and Ctrl-C send
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: what ``systemctl reload`` sends
RELOAD_SIGNAL = signal.SIGHUP
#: their default action would kill the daemon and leave its socket file behind
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class _Started:
    """A ``task_status`` that only says so: :attr:`event` is set once the daemon has started."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def started(self, value: object = None) -> None:
        self.event.set()


async def run_until_signalled(
    config: Config, path: str | None = None, *, notifier: Notifier | None = None
) -> int:
    """``feedd run``: the daemon under signal handling; its exit code once stopped.

    Signals are handled from before the first start-up step, and every start-up step is
    cancellable, so a stop is prompt even while the daemon is still starting. ``path`` is the
    config file SIGHUP reads again (default: the one ``config`` came from). The exit code is 0
    after a graceful stop, 128 + the signal's number after a second stop signal.
    """
    daemon = Daemon(config)
    path = path or config.source
    notifier = notifier or Notifier()
    code = 0
    started = trio.Event()
    reloads_send, reloads = trio.open_memory_channel[None](1)  # a full channel: one is queued
    helpers = trio.CancelScope()  # the systemd tasks and the reloader: cancelled on stop

    running = _Started()

    async def run_daemon() -> None:
        # Not nursery.start(): a stop signal in the middle of start-up ends the daemon before it
        # says it started, which is no error (start() then never gets further).
        await daemon.run(task_status=running)
        nursery.cancel_scope.cancel()  # stopped: stop listening for signals too

    async def start() -> None:
        await running.event.wait()
        with helpers:
            await notifier.ready(daemon.summary())
            started.set()
            async with trio.open_nursery() as tasks:
                await tasks.start(watchdog, notifier, daemon.service.hub)
                await tasks.start(keep_status, notifier, daemon.summary)
                async for _ in reloads:
                    log.info("received SIGHUP: reloading %s", path)
                    await notifier.reloading()
                    await daemon.reload_file(path)
                    await notifier.ready(daemon.summary())

    try:
        with trio.open_signal_receiver(*STOP_SIGNALS, RELOAD_SIGNAL, *IGNORED_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_daemon)
                nursery.start_soon(start)
                stopping = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum in STOP_SIGNALS and not stopping:
                        stopping = True
                        log.info("received %s: stopping (a second one stops at once)", name)
                        helpers.cancel()
                        await notifier.stopping()
                        daemon.stop()
                    elif signum in STOP_SIGNALS:
                        log.warning("received %s again: stopping at once; records the sinks held are lost",
                                    name)
                        code = 128 + signum
                        nursery.cancel_scope.cancel()
                    elif signum == RELOAD_SIGNAL and stopping:
                        log.warning("received %s while stopping: ignored", name)
                    elif signum == RELOAD_SIGNAL:
                        if not started.is_set():
                            log.info("received %s while starting: reloading once started", name)
                        # a reload queued already will read the file as it is by then
                        with contextlib.suppress(trio.WouldBlock):
                            reloads_send.send_nowait(None)
                    else:
                        log.warning("received %s: ignored", name)
    finally:
        notifier.close()
    if code == 0:
        log.info("stopped")
    return code
