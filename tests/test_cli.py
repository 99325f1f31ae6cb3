"""The command line as a user runs it: `feedd run` in its own process, stopped by a signal."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from feedd.codec import decode_record
from feedd.sim import BinanceSimulator


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="feedd-c-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, seen: bytearray) -> None:
    while marker not in seen:
        chunk = await stream.receive_some(4096)
        assert chunk, f"stream ended before {marker!r}: {seen.decode(errors='replace')}"
        seen += chunk


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_streams_then_stops_cleanly_on_a_signal_within_5_seconds(
    workdir: Path, signum: signal.Signals
) -> None:
    sim = BinanceSimulator(speed=20.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        config = workdir / "config.toml"
        config.write_text(f"""
[feed]
cache_dir = "cache"
[unix]
path = "feedd.sock"
[exchanges.binance]
symbols = ["BTCUSDT"]
url = "{sim.ws_url}"
rest_url = "{sim.rest_url}"
""")
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "feedd", "run", "--config", str(config)],
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        log = bytearray()
        try:
            with trio.fail_after(20):
                await read_until(process.stderr, b"feedd running", log)
                stream = await trio.open_unix_socket(str(workdir / "feedd.sock"))
                await stream.send_all(b"{}\n")
                data = b""
                while b"\n" not in data:
                    data += await stream.receive_some(65536)
                record = decode_record(data.split(b"\n", 1)[0])
                await sim.wait_connections(1)
            process.send_signal(signum)
            start = trio.current_time()
            with trio.fail_after(5):
                code = await process.wait()
            elapsed = trio.current_time() - start
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        with trio.move_on_after(5):  # the rest of the log, for the assertions below
            while chunk := await process.stderr.receive_some(4096):
                log += chunk
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert code == 0, log.decode(errors="replace")
    assert elapsed < 5
    assert record.exchange == "binance" and record.symbol == "BTCUSDT"
    assert not (workdir / "feedd.sock").exists()
    assert b"Traceback" not in log


def test_bad_config_exits_2_naming_file_and_key(workdir: Path) -> None:
    config = workdir / "config.toml"
    config.write_text("[exchanges.binance]\nsymbols = ['BTCUSDT']\nchanels = ['trades']\n")
    result = subprocess.run(
        [sys.executable, "-m", "feedd", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert f"{config}: exchanges.binance.chanels: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_the_daemon_against_the_simulators_and_shows_records() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "feedd", "demo", "--duration", "4", "--show", "3"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " binance" in line]
    assert len(lines) == 3
    assert "socket:" in result.stderr and "feedd tail --socket" in result.stderr


def test_run_refuses_a_socket_another_daemon_owns_without_a_traceback(workdir: Path) -> None:
    import socket

    owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owner.bind(str(workdir / "feedd.sock"))
    owner.listen()
    config = workdir / "config.toml"
    config.write_text(
        '[unix]\npath = "feedd.sock"\n[exchanges.binance]\nsymbols = ["BTCUSDT"]\ncheck_symbols = false\n'
    )
    try:
        result = subprocess.run(
            [sys.executable, "-m", "feedd", "run", "--config", str(config)],
            capture_output=True, text=True, timeout=30, check=False,
        )
    finally:
        owner.close()
    assert result.returncode == 1
    assert "another feedd owns it" in result.stderr
    assert "Traceback" not in result.stderr
    assert (workdir / "feedd.sock").exists()  # the other daemon's socket is left alone
