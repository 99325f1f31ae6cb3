"""What the embedding tests share: the Binance and Bybit simulators in processes of their own (so
an asyncio test's thread count is its own, and a program under test reaches them as it would the
exchanges), a ``$FEEDD_CONFIG`` file for them, and a Python program run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

#: a bound against hanging, not a measurement: start-up of a program, its data, its stop
PROGRAM_TIMEOUT = 60
#: how long a program may take to exit once its main returned ("a few seconds at most")
EXIT_BOUND = 5.0


@attrs.frozen
class Simulated:
    """The two simulators' endpoints: ``{venue: (ws url, rest url)}``."""

    endpoints: dict[str, tuple[str, str]]


def _start(venue: str) -> tuple[subprocess.Popen[str], str, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "feedd.sim", venue, "--speed", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    found = {}
    for _ in range(2):
        key, _, value = process.stdout.readline().strip().partition(" ")
        found[key] = value
    assert set(found) == {"ws_url", "rest_url"}, f"the {venue} simulator did not start: {found}"
    return process, found["ws_url"], found["rest_url"]


@pytest.fixture(scope="module")
def simulated() -> Iterator[Simulated]:
    """``python -m feedd.sim binance`` and ``... bybit``, replaying at 20x, for the module."""
    started = [(_start(venue), venue) for venue in ("binance", "bybit")]
    try:
        yield Simulated({venue: (ws, rest) for (_, ws, rest), venue in started})
    finally:
        for (process, _, _), _ in started:
            process.terminate()
            process.wait(timeout=10)


def write_config(workdir: Path, simulated: Simulated) -> Path:
    """Both venues at their simulators, no symbols (the programs subscribe), nothing served."""
    text = '[feed]\ncache_dir = "cache"\nreconnect_interval = 0.05\nmax_backoff = 0.5\n'
    for venue, (url, rest_url) in simulated.endpoints.items():
        text += f'[exchanges.{venue}]\nurl = "{url}"\nrest_url = "{rest_url}"\n'
    path = workdir / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def program_environment(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ENABLE_WEBSOCKET_FEED", "WEBSOCKET_RECONNECT_INTERVAL", "MAX_WEBSOCKET_RETRIES")}
    env["FEEDD_CONFIG"] = str(config)
    env["PYTHONWARNINGS"] = "default"  # a RuntimeWarning at exit (a guest run abandoned) is shown
    return env


@attrs.frozen
class Finished:
    returncode: int
    stdout: str
    stderr: str
    #: monotonic time at which the process had exited
    ended: float


def run_program(workdir: Path, source: str, config: Path) -> Finished:
    """``source`` as ``python program.py`` in ``workdir``, with ``$FEEDD_CONFIG`` set."""
    program = workdir / "program.py"
    program.write_text(source, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(program)], cwd=workdir, env=program_environment(config),
        capture_output=True, text=True, timeout=PROGRAM_TIMEOUT, check=False,
    )
    return Finished(done.returncode, done.stdout, done.stderr, time.monotonic())


def to_trio(source: str) -> str:
    """The asyncio program as the README says it runs under trio."""
    replaced = (source.replace("import asyncio", "import trio")
                .replace("asyncio.sleep(", "trio.sleep(")
                .replace("asyncio.run(main())", "trio.run(main)"))
    assert "asyncio" not in replaced
    return replaced
