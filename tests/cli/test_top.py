"""``feedd top``: the renderer on recorded status documents, and the live view in a real terminal
(tmux) against a daemon fed by the simulators."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section
from tools import require_tool

from feedd.cli.main import main
from feedd.cli.top import SORTS, View, fetch, screen_text, sparkline
from feedd.sim import BinanceSimulator, BybitSimulator

FIXTURES = Path(__file__).parents[1] / "fixtures" / "top"
URL = "http://127.0.0.1:8080"
TIMEOUT = 30


def recorded(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return document


def lines_of(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith(start)]


def test_a_healthy_daemon_shows_one_row_per_venue_and_connection_all_connected() -> None:
    doc = recorded("healthy")
    text = screen_text(View(URL, doc["status"], doc["history"]))
    assert text.splitlines()[0].startswith(f"feedd at {URL}: ok  3 venue(s)")
    for venue in ("binance", "bybit", "coinbase"):
        [row] = [line for line in text.splitlines() if line.split()[:1] == [venue]]
        cells = row.split()
        assert cells[1] == "connected"
        assert cells[2] == "25s"  # uptime
        assert "ms" in row  # p50 / p99
        [conn] = lines_of(text, f"{venue}/stream#1")
        assert conn.split()[1] == "connected"
    [subscriber] = lines_of(text, "unix#1")
    assert subscriber.split() == ["unix#1", "unix", "24884", "0", "0"]


def test_the_rates_are_the_mean_of_the_last_five_seconds_of_history() -> None:
    doc = recorded("healthy")
    records = doc["history"]["venues"]["bybit"]["records"][-5:]
    text = screen_text(View(URL, doc["status"], doc["history"]))
    [row] = [line for line in text.splitlines() if line.split()[:1] == ["bybit"]]
    assert f"{sum(records) / 5:.1f}" in row.split()


def test_a_failed_venue_shows_its_state_its_reconnects_and_its_last_error() -> None:
    doc = recorded("failed")
    text = screen_text(View(URL, doc["status"], doc["history"]), width=200)
    assert "degraded" in text.splitlines()[0]
    assert "bybit/stream#1: failed: cannot connect to ws://127.0.0.1:9" in text  # the reason, in full
    [row] = [line for line in text.splitlines() if line.split()[:1] == ["bybit"]]
    cells = row.split()
    assert cells[1] == "failed" and cells[2] == "-"  # no uptime
    assert str(doc["status"]["exchanges"]["bybit"]["reconnects"]) in cells
    assert "bybit/stream#1: cannot connect to ws://127.0.0.1:9" in row
    [binance] = [line for line in text.splitlines() if line.split()[:1] == ["binance"]]
    assert binance.split()[1] == "connected"


def test_a_narrow_terminal_cuts_the_last_error_not_the_numbers() -> None:
    doc = recorded("failed")
    text = screen_text(View(URL, doc["status"], doc["history"]), width=140)
    [row] = [line for line in text.splitlines() if line.split()[:1] == ["bybit"]]
    assert row.split()[1] == "failed" and "…" in row and len(row.rstrip()) <= 140


def test_a_terminal_under_140_columns_leaves_out_the_sparkline_and_keeps_every_number() -> None:
    doc = recorded("failed")
    wide = screen_text(View(URL, doc["status"], doc["history"]), width=140)
    narrow = screen_text(View(URL, doc["status"], doc["history"]), width=110)
    assert "REC/S LAST 5 MIN" in wide and "REC/S LAST 5 MIN" not in narrow
    [row] = [line for line in narrow.splitlines() if line.split()[:1] == ["bybit"]]
    assert row.split()[:9] == ["bybit", "failed", "-", "2", "0.0", "0.0", "0", "51", "-"]
    assert all(len(line) <= 110 for line in narrow.splitlines())


def test_sorting_by_state_puts_the_failed_venue_first() -> None:
    doc = recorded("failed")
    text = screen_text(View(URL, doc["status"], doc["history"], sort="state"), width=200)
    venues = [line.split()[0] for line in text.splitlines() if line.split()[:1] in (["binance"], ["bybit"],
                                                                                   ["coinbase"])]
    assert venues == ["bybit", "binance", "coinbase"]
    assert "sort: state" in text


def test_sorting_by_records_per_second_puts_the_busiest_first() -> None:
    doc = recorded("healthy")
    text = screen_text(View(URL, doc["status"], doc["history"], sort="records/s"))
    venues = [line.split()[0] for line in text.splitlines() if line.split()[:1] in (["binance"], ["bybit"],
                                                                                   ["coinbase"])]
    rates = {v: sum(doc["history"]["venues"][v]["records"][-5:]) for v in venues}
    assert venues == sorted(venues, key=lambda v: -rates[v])


async def test_an_unreachable_daemon_says_which_address_was_tried() -> None:
    with trio.socket.socket() as sock:  # a port that was free a moment ago, and nothing listens
        await sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with httpx.AsyncClient(base_url=url) as client:
        view = await fetch(client, url)
    assert view.status is None
    text = screen_text(view)
    assert f"cannot reach feedd at {url} (" in text
    assert "retrying every second" in text


def test_the_sparkline_is_padded_while_short_and_scaled_to_its_peak() -> None:
    assert sparkline([], width=4, span=8) == "    "
    assert sparkline([1, 1], width=4, span=8) == "   █"
    assert sparkline([0, 0, 2, 2, 4, 4, 8, 8], width=4, span=8) == "▁▃▅█"
    assert sparkline([0] * 8, width=4, span=8) == "▁▁▁▁"
    assert len(sparkline(list(range(1000)))) == 20


def test_once_against_nothing_exits_1_naming_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--once", "--url", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("feedd top: cannot reach feedd at http://127.0.0.1:9 (")


async def test_once_prints_one_screen_of_a_running_daemon_and_exits_0(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binance = BinanceSimulator(speed=20.0)
    async with serving(binance):
        text = FAST_FEED + venue_section("binance", binance.ws_url, binance.rest_url, ("BTCUSDT",))
        async with running(load_text(workdir, text)) as daemon:
            with trio.fail_after(TIMEOUT):
                code = await trio.to_thread.run_sync(
                    main, ["top", "--once", "--url", f"http://{daemon.http_address}"]
                )
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"feedd at http://{daemon.http_address}: ")
    assert [line.split()[0] for line in out.splitlines() if line.startswith("binance")] == ["binance"]


def test_once_takes_the_address_from_the_configs_http_listen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEEDD_URL", raising=False)
    config = tmp_path / "config.toml"
    config.write_text('[http]\nlisten = "0.0.0.0:9"\n[exchanges.binance]\nsymbols = ["BTCUSDT"]\n')
    assert main(["top", "--once", "--config", str(config)]) == 1
    assert "cannot reach feedd at http://127.0.0.1:9 (" in capsys.readouterr().err


# ---- in a real terminal -------------------------------------------------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-t-") as path:
        yield path


class Tmux:
    """A tmux server of its own (``-L``), so the test touches no other session."""

    def __init__(self, tmux: str, name: str) -> None:
        self.base = [tmux, "-L", name, "-f", "/dev/null"]

    async def __call__(self, *args: str) -> str:
        done = await trio.run_process([*self.base, *args], capture_stdout=True, capture_stderr=True)
        return done.stdout.decode()

    async def screen(self) -> str:
        return await self("capture-pane", "-p", "-t", "top")

    async def until_shown(self, *texts: str) -> str:
        """The screen once it shows every one of ``texts`` (the view redraws every second)."""
        screen = ""
        try:
            while True:
                screen = await self.screen()
                if all(text in screen for text in texts):
                    return screen
                await trio.sleep(0.2)
        except trio.Cancelled:
            print(f"the screen, waiting for {texts}:\n{screen}")
            raise

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, check=False)


async def test_top_in_a_terminal_shows_every_venue_cycles_the_sort_and_quits_on_q(workdir: Path) -> None:
    tmux = Tmux(require_tool("tmux", package="tmux"), f"feedd-test-{os.getpid()}")
    binance, bybit = BinanceSimulator(speed=20.0), BybitSimulator(speed=20.0)
    exit_file = workdir / "exit"
    async with serving(binance, bybit):
        text = FAST_FEED + venue_section("binance", binance.ws_url, binance.rest_url, ("BTCUSDT",))
        text += venue_section("bybit", bybit.endpoint("spot"), bybit.rest_url, ("BTCUSDT",))
        async with running(load_text(workdir, text)) as daemon:
            try:
                with trio.fail_after(TIMEOUT):
                    subscriber = await Subscriber.connect(daemon.config.unix.path)
                    # rich sizes itself from $COLUMNS when set (pytest's may leak into tmux)
                    command = (f"env -u COLUMNS -u LINES {sys.executable} -m feedd top "
                               f"--url http://{daemon.http_address}; echo $? > {exit_file}; "
                               f"tmux -L {tmux.base[2]} wait-for -S top-done")
                    await tmux("new-session", "-d", "-s", "top", "-x", "200", "-y", "40", command)
                    await subscriber.record()
                    screen = await tmux.until_shown("binance ", "bybit ", "unix#1", "connected")
                    assert "sort: venue" in screen
                    rows = [line.split() for line in screen.splitlines()]
                    assert next(r for r in rows if r[:1] == ["binance"])[:2] == ["binance", "connected"]
                    assert next(r for r in rows if r[:1] == ["bybit"])[:2] == ["bybit", "connected"]
                    await tmux("send-keys", "-t", "top", "s")
                    await tmux.until_shown(f"sort: {SORTS[1]}")
                    await tmux("send-keys", "-t", "top", "q")
                    await tmux("wait-for", "top-done")
                    await subscriber.stream.aclose()
            finally:
                tmux.kill()
    assert exit_file.read_text().strip() == "0"


async def test_top_in_a_terminal_keeps_retrying_until_the_daemon_answers(workdir: Path) -> None:
    tmux = Tmux(require_tool("tmux", package="tmux"), f"feedd-test-{os.getpid()}-r")
    with trio.socket.socket() as sock:  # a port free a moment ago: the daemon will take it
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binance = BinanceSimulator(speed=20.0)
    async with serving(binance):
        text = FAST_FEED.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
        config = load_text(workdir, text + venue_section("binance", binance.ws_url, binance.rest_url,
                                                         ("BTCUSDT",)))
        try:
            with trio.fail_after(TIMEOUT):
                await tmux("new-session", "-d", "-s", "top", "-x", "200", "-y", "40",
                           f"env -u COLUMNS -u LINES {sys.executable} -m feedd top --url http://127.0.0.1:{port}")
                await tmux.until_shown(f"cannot reach feedd at http://127.0.0.1:{port} (", "retrying")
                async with running(config):
                    await tmux.until_shown(f"feedd at http://127.0.0.1:{port}: ", "binance/stream#1")
                    await tmux("send-keys", "-t", "top", "q")
        finally:
            tmux.kill()
