"""`feedd run` as systemd runs it: its own process, stray signals, a stop during start-up, few fds.

Each test watches the daemon's log (stderr) for the line that says it got there, and bounds every
wait with ``fail_after`` so a regression fails instead of hanging; no wait is a sleep.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from feedd.codec import decode_record
from feedd.model import MarketData
from feedd.sim import BinanceSimulator

TIMEOUT = 20
#: how long a stop may take at most: a bound against hanging, not a measurement
STOP_BOUND = 5


@pytest.fixture
def workdir() -> Iterator[Path]:
    # short: AF_UNIX paths are limited to ~107 bytes, and pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="feedd-p-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(workdir: Path, venues: dict[str, tuple[str, str]]) -> Path:
    """A config with one section per venue id: ``{venue: (ws url, rest url)}``."""
    text = '[feed]\ncache_dir = "cache"\nreconnect_interval = 0.05\nmax_backoff = 0.5\n'
    text += '[http]\nlisten = "127.0.0.1:0"\n[unix]\npath = "feedd.sock"\n'
    for venue, (url, rest_url) in venues.items():
        text += f'[exchanges.{venue}]\nsymbols = ["BTCUSDT"]\nurl = "{url}"\nrest_url = "{rest_url}"\n'
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
async def feedd_run(config: Path) -> AsyncIterator[FeeddRun]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "feedd", "run", "--config", str(config)], stderr=subprocess.PIPE
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
async def simulator() -> AsyncIterator[BinanceSimulator]:
    sim = BinanceSimulator(speed=20.0)
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


async def test_stray_signals_are_logged_and_ignored_and_sigterm_still_removes_the_socket(
    workdir: Path,
) -> None:
    socket_path = workdir / "feedd.sock"
    async with simulator() as sim:
        config = write_config(workdir, {"binance": (sim.ws_url, sim.rest_url)})
        async with feedd_run(config) as run:
            with trio.fail_after(TIMEOUT):
                await run.wait_for_log("feedd running")
                for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
                    run.process.send_signal(signum)
                    await run.wait_for_log(f"received {signum.name}")
                    client = await Subscriber.connect(socket_path)
                    record = await client.record()
                    assert record.exchange == "binance"
                    await client.stream.aclose()
            code = await run.stop(signal.SIGTERM)
    assert code == 0, run.text
    assert not socket_path.exists()
    assert "Traceback" not in run.text
    assert "ignored" in run.text


async def test_sigterm_while_instrument_lists_hang_stops_promptly_without_a_socket_file(
    workdir: Path,
) -> None:
    socket_path = workdir / "feedd.sock"
    rest = trio.socket.socket()  # accepts, reads nothing, never answers
    await rest.bind(("127.0.0.1", 0))
    rest.listen()
    host, port = rest.getsockname()
    # nothing listens on the WebSocket URLs: the daemon must not get that far anyway
    venues = {
        "binance": ("ws://127.0.0.1:9/stream", f"http://{host}:{port}"),
        "binance-usdm": ("ws://127.0.0.1:9/market/stream", f"http://{host}:{port}"),
    }
    held = []
    with rest:
        async with feedd_run(write_config(workdir, venues)) as run:
            with trio.fail_after(TIMEOUT):
                conn, _ = await rest.accept()  # a venue is waiting for its instrument list
                held.append(conn)
            code = await run.stop(signal.SIGTERM)
    for conn in held:
        conn.close()
    assert code == 0, run.text
    assert not socket_path.exists()
    assert "Traceback" not in run.text


async def test_running_out_of_file_descriptors_pauses_accepting_and_keeps_serving(
    workdir: Path,
) -> None:
    socket_path = workdir / "feedd.sock"
    async with simulator() as sim:
        config = write_config(workdir, {"binance": (sim.ws_url, sim.rest_url)})
        async with feedd_run(config) as run:
            with trio.fail_after(TIMEOUT):
                await run.wait_for_log("feedd running")
                existing = await Subscriber.connect(socket_path)
                await existing.record()

                # No free descriptor below the limit but the holes the daemon left: 32 more
                # clients wait in the listen backlog and `accept` fails with EMFILE.
                pid = run.process.pid
                limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
                highest = max(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (highest + 1, limits[1]))
                waiting = [await Subscriber.connect(socket_path) for _ in range(32)]
                await run.wait_for_log("cannot accept subscribers")
                starved = datetime.now(UTC)
                await existing.record_received_after(starved)

                resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
                for client in waiting:
                    await client.record()
                later = await Subscriber.connect(socket_path)
                await later.record_received_after(starved)
                await run.wait_for_log("accepting subscribers again")
            code = await run.stop(signal.SIGTERM)
    assert code == 0, run.text
    assert run.text.count("cannot accept subscribers") == 1  # logged once, not once per retry
    assert "Too many open files" in run.text
    assert "cannot start" not in run.text
    assert not socket_path.exists()
