"""The command line as a user runs it: `feedd run` in its own process, stopped by a signal."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from feedd.cli.demo import feedd_command
from feedd.cli.main import build_parser, setup_logging
from feedd.fanout.lines import decode_record
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
[http]
listen = "127.0.0.1:0"
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
    venues = ("binance", "binance-usdm", "bybit", "bybit-linear", "bybit-inverse", "coinbase")
    lines = [line for line in result.stdout.splitlines() if any(f" {v} " in line for v in venues)]
    assert len(lines) == 3
    for venue in venues:
        assert re.search(rf" {venue}/\w+#1: connected to ", result.stderr), venue
    assert "socket:" in result.stderr and f"{feedd_command()} tail --socket" in result.stderr


def test_run_refuses_a_socket_another_daemon_owns_without_a_traceback(workdir: Path) -> None:
    import socket

    owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owner.bind(str(workdir / "feedd.sock"))
    owner.listen()
    config = workdir / "config.toml"
    config.write_text(
        '[http]\nlisten = "127.0.0.1:0"\n'
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


def test_check_config_refuses_a_bad_port_in_one_line_without_a_traceback(workdir: Path) -> None:
    config = workdir / "config.toml"
    config.write_text("[exchanges.binance]\nsymbols = ['BTCUSDT']\nurl = 'ws://127.0.0.1:abc/stream'\n")
    result = subprocess.run(
        [sys.executable, "-m", "feedd", "check-config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"feedd: {config}: exchanges.binance.url: port must be a number from 1 to 65535 in "
        "'ws://127.0.0.1:abc/stream'"
    ]


def test_check_config_refuses_a_file_that_is_not_utf8_without_a_traceback(workdir: Path) -> None:
    config = workdir / "config.toml"
    config.write_bytes(b"[exchanges.binance]\nsymbols = ['BTC\xa3']\n")
    result = subprocess.run(
        [sys.executable, "-m", "feedd", "check-config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"feedd: {config}: not UTF-8 text")


def parsers() -> Iterator[argparse.ArgumentParser]:
    """The top parser and each command's (argparse offers no public way to list its actions)."""
    parser = build_parser()
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.values()


def test_every_command_and_option_has_a_help_text_in_plain_words() -> None:
    seen = []
    for parser in parsers():
        seen.append(parser.prog)
        text = parser.format_help()
        assert "``" not in text, parser.prog
        assert parser.description, parser.prog
        for action in parser._actions:
            assert action.help, f"{parser.prog}: {action.option_strings or action.dest} has no help"
    assert seen == ["feedd", "feedd run", "feedd check-config", "feedd demo", "feedd tail",
                    "feedd replay", "feedd status", "feedd subscribe", "feedd unsubscribe", "feedd top"]


@pytest.fixture
def logging_levels() -> Iterator[None]:
    loggers = [logging.getLogger(), logging.getLogger("feedd")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


LIBRARIES = ["httpx", "httpcore", "hpack.hpack", "trio-websocket", "trio_websocket"]


@pytest.mark.usefixtures("logging_levels")
@pytest.mark.parametrize(
    ("argv", "feedd_debug", "library_debug"),
    [
        (["check-config", "x.toml"], False, False),
        (["-v", "check-config", "x.toml"], True, False),
        (["check-config", "-v", "x.toml"], True, False),
        (["-vv", "check-config", "x.toml"], True, True),
        (["-v", "check-config", "-v", "x.toml"], True, True),
    ],
)
def test_verbose_shows_feedd_debug_and_keeps_libraries_quiet_unless_twice(
    argv: list[str], feedd_debug: bool, library_debug: bool
) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose + args.command_verbose)
    assert logging.getLogger("feedd.feed.runner").isEnabledFor(logging.DEBUG) is feedd_debug
    assert logging.getLogger("feedd.feed.runner").isEnabledFor(logging.INFO)
    for name in LIBRARIES:
        assert logging.getLogger(name).isEnabledFor(logging.DEBUG) is library_debug, name
        assert logging.getLogger(name).isEnabledFor(logging.INFO) is library_debug, name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name


def test_demo_prints_a_tail_command_that_works_without_feedd_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    command = shlex.split(feedd_command())
    result = subprocess.run(
        [*command, "--version"], capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("feedd ")


def test_project_license_is_an_spdx_string_that_setuptools_reads_without_a_warning() -> None:
    """A TOML table here makes every install print setuptools' deprecation banner (>= 77 reads SPDX)."""
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"
    (requirement,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", requirement)
    assert match is not None and int(match.group(1)) >= 77
