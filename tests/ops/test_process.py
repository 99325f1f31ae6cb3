"""`feedd run` as systemd runs it: its own process, stray signals, a stop during start-up, few fds.

Each test watches the daemon's log (stderr) for the line that says it got there, and bounds every
wait with ``fail_after`` so a regression fails instead of hanging; no wait is a sleep.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from processes import Subscriber, feedd_run, simulator, write_config

TIMEOUT = 20


@pytest.fixture
def workdir() -> Iterator[Path]:
    # short: AF_UNIX paths are limited to ~107 bytes, and pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="feedd-p-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_stray_signals_are_logged_and_ignored_and_sigterm_still_removes_the_socket(
    workdir: Path,
) -> None:
    socket_path = workdir / "feedd.sock"
    async with simulator() as sim:
        config = write_config(workdir, {"binance": (sim.ws_url, sim.rest_url)})
        async with feedd_run(config) as run:
            with trio.fail_after(TIMEOUT):
                await run.wait_for_log("feedd running")
                for signum in (signal.SIGUSR1, signal.SIGUSR2):  # SIGHUP reloads: test_systemd.py
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
