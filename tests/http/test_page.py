"""The status page (``GET /``) and the history it charts (``GET /api/v1/websocket/history``):
served by a daemon fed by the simulators, and the page rendered by headless Chromium."""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section
from tools import require_tool

from feedd.control.service import WebSocketService
from feedd.sim import BinanceSimulator, BybitSimulator

TIMEOUT = 30
VENUES = ("binance", "bybit")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-p-") as path:
        yield path


@asynccontextmanager
async def fed_daemon(workdir: Path) -> AsyncIterator[WebSocketService]:
    """A daemon on Binance and Bybit simulators, once both delivered records and the history
    took a snapshot of them."""
    binance, bybit = BinanceSimulator(speed=20.0), BybitSimulator(speed=20.0)
    async with serving(binance, bybit):
        text = FAST_FEED + venue_section("binance", binance.ws_url, binance.rest_url, ("BTCUSDT",))
        text += venue_section("bybit", bybit.endpoint("spot"), bybit.rest_url, ("BTCUSDT",))
        async with running(load_text(workdir, text)) as daemon:
            with trio.fail_after(TIMEOUT):
                subscriber = await Subscriber.connect(daemon.config.unix.path)
                async with subscriber.stream:
                    seen: set[str] = set()
                    while seen != set(VENUES):
                        seen.add((await subscriber.record()).exchange)
                    await daemon.history.next_sample()
                    await daemon.history.next_sample()
                yield daemon


async def test_history_has_the_documented_shape_with_a_record_count_per_second(workdir: Path) -> None:
    async with fed_daemon(workdir) as daemon, httpx.AsyncClient() as http:
        with trio.fail_after(TIMEOUT):
            answer = await http.get(f"http://{daemon.http_address}/api/v1/websocket/history")
    assert answer.status_code == 200
    history = answer.json()
    assert history["interval"] == 1
    assert set(history["venues"]) == set(VENUES)
    for venue in VENUES:
        series = history["venues"][venue]
        assert set(series) == {"records", "messages", "rejected"}
        assert len(series["records"]) == len(series["messages"]) == len(series["rejected"]) >= 1
        assert all(type(n) is int and n >= 0 for n in series["records"])
    assert sum(sum(v["records"]) for v in history["venues"].values()) > 0


async def test_status_gives_uptime_and_delay_percentiles_per_venue(workdir: Path) -> None:
    async with fed_daemon(workdir) as daemon, httpx.AsyncClient() as http:
        with trio.fail_after(TIMEOUT):
            status = (await http.get(f"http://{daemon.http_address}/api/v1/websocket/status")).json()
    for venue in VENUES:
        entry = status["exchanges"][venue]
        assert entry["uptime"] > 0
        assert entry["connections"][0]["uptime"] > 0
        assert entry["latency"]["observations"] >= 1
        assert 0 <= entry["latency"]["p50"] <= entry["latency"]["p99"]


async def test_the_page_is_one_self_contained_html_file(workdir: Path) -> None:
    async with fed_daemon(workdir) as daemon, httpx.AsyncClient() as http:
        with trio.fail_after(TIMEOUT):
            answer = await http.get(f"http://{daemon.http_address}/")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert "<script>" in page and "<style>" in page
    # nothing loaded from elsewhere: no src/href attributes, no absolute URLs, no @import
    assert not re.search(r"""\b(src|href)\s*=|https?://|@import""", page)


class _VenueRows(HTMLParser):
    """The text of each cell of each ``<tr class="venue">`` of the dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr":
            self._row = None
            if found.get("class") == "venue":
                self._row = self.rows.setdefault(found.get("data-venue") or "", [])
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row:
            self._row[-1] += data


def chromium_command(chromium: str, profile: str, *extra: str) -> list[str]:
    """Headless Chromium as root in a container, with nothing that reaches beyond localhost."""
    return [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", *extra,
    ]


async def test_chromium_renders_one_row_per_venue_after_the_script_ran(workdir: Path) -> None:
    chromium = require_tool("chromium", "chromium-browser", "google-chrome", package="chromium")
    async with fed_daemon(workdir) as daemon:
        with tempfile.TemporaryDirectory(prefix="feedd-chromium-") as profile, trio.fail_after(60):
            done = await trio.run_process(
                chromium_command(chromium, profile, "--virtual-time-budget=5000", "--dump-dom",
                                 f"http://{daemon.http_address}/"),
                capture_stdout=True, capture_stderr=True,
            )
    parser = _VenueRows()
    parser.feed(done.stdout.decode())
    assert sorted(parser.rows) == sorted(VENUES), done.stdout.decode()[-2000:]
    for venue, cells in parser.rows.items():
        assert cells[0] == venue
        assert cells[1] == "connected", cells
        assert re.fullmatch(r"\d+(\.\d)?", cells[5]), cells  # records/s, from the history
