"""What the process-level tests share: ``feedd run`` in its own process, its log, a simulator, a
Unix-socket subscriber, and a stand-in for systemd's notification socket.

Every wait is on the daemon's log, a socket or the process, bounded by the tests' ``fail_after``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import trio

from feedd.fanout.lines import decode_record
from feedd.model import MarketData
from feedd.sim import BinanceSimulator

#: how long a stop may take at most: a bound against hanging, not a measurement
STOP_BOUND = 5
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID")


def write_config(
    workdir: Path,
    venues: dict[str, tuple[str, str]],
    symbols: tuple[str, ...] = ("BTCUSDT",),
    extra: str = "",
) -> Path:
    """A config with one section per venue id: ``{venue: (ws url, rest url)}``; ``extra`` lines
    go into each venue's section."""
    text = '[feed]\ncache_dir = "cache"\nreconnect_interval = 0.05\nmax_backoff = 0.5\n'
    text += '[http]\nlisten = "127.0.0.1:0"\n[unix]\npath = "feedd.sock"\n'
    listed = ", ".join(f'"{s}"' for s in symbols)
    for venue, (url, rest_url) in venues.items():
        text += f'[exchanges.{venue}]\nsymbols = [{listed}]\nurl = "{url}"\nrest_url = "{rest_url}"\n'
        text += f"{extra}\n"
    path = workdir / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


class FeeddRun:
    """A running ``feedd run`` and what it has logged so far."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log = bytearray()
        self.log_ended = False
        self._changed = trio.Event()

    @property
    def text(self) -> str:
        return self.log.decode(errors="replace")

    async def collect_log(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some(65536):
            self.log += chunk
            self._changed.set()
            self._changed = trio.Event()
        self.log_ended = True
        self._changed.set()

    @property
    def http_url(self) -> str:
        """The HTTP API's address, from the line that says the daemon runs."""
        match = re.search(r"HTTP API (http://\S+)", self.text)
        assert match is not None, f"no HTTP API address logged:\n{self.text}"
        return match.group(1)

    async def wait_for_log(self, text: str, count: int = 1) -> None:
        """Until ``text`` has been logged ``count`` times; fails at once if the daemon ends first."""
        while self.text.count(text) < count:
            assert not self.log_ended, f"feedd ended before logging {text!r}:\n{self.text}"
            await self._changed.wait()

    async def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        with trio.fail_after(STOP_BOUND):
            return await self.process.wait()


@asynccontextmanager
async def feedd_run(config: Path, env: Mapping[str, str] | None = None) -> AsyncIterator[FeeddRun]:
    """``feedd run --config CONFIG`` with ``env`` added to the environment (systemd's variables
    are removed first: the tests themselves may run under systemd)."""
    environ = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES} | dict(env or {})
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "feedd", "run", "--config", str(config)], stderr=subprocess.PIPE, env=environ
    )
    run = FeeddRun(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.collect_log)
            yield run
            if process.returncode is None:
                process.kill()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


@asynccontextmanager
async def simulator(*, flood: bool = False) -> AsyncIterator[BinanceSimulator]:
    """A Binance simulator: paced (twenty times the recorded rate), or with ``flood`` its trade
    streams as fast as feedd reads them."""
    sim = BinanceSimulator(flood=True) if flood else BinanceSimulator(speed=20.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        yield sim
        nursery.cancel_scope.cancel()


class Subscriber:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, path: Path) -> Subscriber:
        stream = await trio.open_unix_socket(str(path))
        await stream.send_all(b"{}\n")
        return cls(stream)

    async def record(self) -> MarketData:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            assert data, "the daemon closed the socket"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return decode_record(line)

    async def record_received_after(self, moment: datetime) -> MarketData:
        """Skips what was buffered before ``moment``: proof the daemon still streams after it."""
        while (record := await self.record()).received_at <= moment:
            pass
        return record




class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``: each datagram as a dict of its ``KEY=value`` lines."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(address)
        self.address = address
        #: every message received by :meth:`collect`, in order
        self.messages: list[dict[str, str]] = []
        self._changed = trio.Event()

    @property
    def env_value(self) -> str:
        """What ``$NOTIFY_SOCKET`` says: ``@name`` for the abstract namespace."""
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    async def message(self) -> dict[str, str]:
        while True:
            try:
                return _fields(self.sock.recv(65536))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)

    def pending(self) -> list[dict[str, str]]:
        """What has arrived and not been read, without waiting."""
        found = []
        while True:
            try:
                found.append(_fields(self.sock.recv(65536)))
            except BlockingIOError:
                return found

    async def collect(self, on_message: Callable[[dict[str, str]], Awaitable[None]] | None = None) -> None:
        """Receive into :attr:`messages` for ever (a background task). ``on_message`` sees each
        message as it arrives, before it is recorded: a check of what holds at that moment."""
        while True:
            message = await self.message()
            if on_message is not None:
                await on_message(message)
            self.messages.append(message)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[dict[str, str]], bool], after: int = 0) -> int:
        """The index of the first message from ``after`` on that satisfies ``predicate``."""
        while True:
            for index in range(after, len(self.messages)):
                if predicate(self.messages[index]):
                    return index
            await self._changed.wait()

    def close(self) -> None:
        self.sock.close()


def _fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().split("\n"))
