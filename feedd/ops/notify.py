"""systemd's notification protocol (sd_notify), and the two tasks that speak it for the daemon.

A notification is one datagram of ``KEY=value`` lines to the Unix socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). It is twenty lines of
socket code, so feedd owns it rather than depending on a binding to libsystemd. Without
``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=`` not ``notify``) every call does nothing.

The watchdog is not a timer: :func:`watchdog` pings only while the hub shows progress, which it
proves by routing an empty batch (a probe) through the hub's ingress each period. A hub that is
stuck (or an event loop that is) stops the pings, and systemd restarts the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import trio

from feedd.errors import describe
from feedd.fanout.hub import Hub

log = logging.getLogger(__name__)

#: how often the one-line ``STATUS=`` is recomputed (sent only when it changed)
STATUS_INTERVAL = 2.0


def notify_address(value: str | None) -> str | None:
    """The socket address ``$NOTIFY_SOCKET`` names: a path, or ``@name`` → abstract ``\\0name``.

    Other forms (``vsock:``, from systemd 254 for VMs) are not supported: None, like no socket.
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds when the watchdog is on for this process, else None.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is for (a child that inherited
    the variables is not it).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` with ``RELOADING=1`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to systemd; a no-op without ``$NOTIFY_SOCKET``.

    A failed send is logged once (the service manager may have gone away) and never raised: the
    daemon's work does not depend on being heard.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_address(env.get("NOTIFY_SOCKET"))
        #: seconds between watchdog pings, or None when systemd does not expect them
        self.watchdog_interval = watchdog_interval(env) if self.address is not None else None
        self._socket: trio.socket.SocketType | None = None
        self._failed = False
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    async def send(self, **fields: object) -> None:
        """One datagram: ``send(READY=1, STATUS="...")`` → ``READY=1\\nSTATUS=...``."""
        if self.address is None:
            return
        text = "\n".join(f"{key}={_one_line(str(value))}" for key, value in fields.items())
        if self._socket is None:
            self._socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            await self._socket.sendto(text.encode(), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at %s: %s (further failures not logged)",
                            self.address.replace("\0", "@"), describe(exc))
            return
        self.sent += 1

    async def ready(self, status: str) -> None:
        await self.send(READY=1, STATUS=status)

    async def reloading(self) -> None:
        await self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), STATUS="reloading the configuration")

    async def stopping(self, status: str = "stopping") -> None:
        await self.send(STOPPING=1, STATUS=status)

    async def status(self, status: str) -> None:
        await self.send(STATUS=status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(value: str) -> str:
    """A value may not carry a newline: it would start a new ``KEY=`` line."""
    return " ".join(value.splitlines())


async def watchdog(
    notifier: Notifier,
    hub: Hub,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``WATCHDOG=1`` every half ``WatchdogSec`` while the event loop and the hub are alive.

    Each period an empty batch is put on the hub's ingress (never waiting: when the ingress is
    full the hub is busy, and its progress counts); the next ping goes out only if the hub has
    handled a batch since, the probe or records. A stuck hub thus stops the pings, and systemd's
    ``WatchdogSec`` ends the daemon.
    """
    interval = notifier.watchdog_interval
    task_status.started()
    if interval is None:
        return
    probe = hub.sender()
    with probe:
        seen = hub.batches
        stuck = False
        while True:
            with contextlib.suppress(trio.WouldBlock):  # full: the hub is busy, its progress counts
                probe.send_nowait([])
            await trio.sleep(interval)
            if hub.batches != seen:
                seen = hub.batches
                if stuck:
                    log.info("watchdog: the hub is making progress again")
                    stuck = False
                await notifier.send(WATCHDOG=1)
            elif not stuck:
                stuck = True
                log.error("watchdog: the hub handled nothing in %.1f s, not even a probe; "
                          "withholding WATCHDOG=1 (systemd restarts feedd if this lasts)", interval)


async def keep_status(
    notifier: Notifier,
    summary: Callable[[], str],
    *,
    interval: float = STATUS_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep ``STATUS=`` current: ``summary()`` every ``interval`` seconds, sent when it changed."""
    task_status.started()
    if not notifier.enabled:
        return
    last = None
    while True:
        text = summary()
        if text != last:
            await notifier.status(text)
            last = text
        await trio.sleep(interval)
