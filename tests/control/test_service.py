"""The embeddable service: the Python API page's example, callbacks that misbehave, the lifecycle."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from tools import DOCS, docs_blocks

from feedd import MarketData, WebSocketService
from feedd.config import load_config
from feedd.errors import NotSubscribed, ServiceNotRunning, UnknownSymbol, UnknownVenue
from feedd.model import Disconnected, Reconnected
from feedd.sim import BinanceSimulator

TIMEOUT = 15
PYTHON_API = DOCS / "python-api.md"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="feedd-s-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def simulator() -> AsyncIterator[BinanceSimulator]:
    sim = BinanceSimulator(speed=20.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        yield sim
        nursery.cancel_scope.cancel()


def config_file(workdir: Path, spot: BinanceSimulator) -> Path:
    # no [unix] or [http] section: embedded, the service serves neither
    path = workdir / "config.toml"
    path.write_text(f"""
[feed]
cache_dir = "cache"
reconnect_interval = 0.05
max_backoff = 0.5

[exchanges.binance]
symbols = ["BTCUSDT"]
url = "{spot.ws_url}"
rest_url = "{spot.rest_url}"
""", encoding="utf-8")
    return path


def sockets(workdir: Path) -> list[Path]:
    return list(workdir.glob("*.sock"))


def docs_example() -> str:
    """The block after docs/python-api.md's marker for this test."""
    return docs_blocks(PYTHON_API, "tests/control/test_service.py runs this block")[0]


async def test_the_python_api_page_example_streams_the_symbol_it_subscribed(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(docs_example(), str(PYTHON_API), "exec"), namespace)
    async with simulator() as spot:
        with trio.fail_after(TIMEOUT):
            seen: list[MarketData] = await namespace["watch"](str(config_file(workdir, spot)))
    assert len(seen) >= 5
    assert all(isinstance(r, MarketData) and r.exchange == "binance" for r in seen)
    assert {r.symbol for r in seen} <= {"BTCUSDT", "ETHUSDT"}
    printed = capsys.readouterr().out.splitlines()
    assert "connected" in printed  # the state the example prints
    assert printed[0].startswith("binance ")
    assert not sockets(workdir)  # no Unix socket when embedded


async def test_a_callback_that_raises_or_blocks_does_not_disturb_the_others(workdir: Path) -> None:
    trades: list[MarketData] = []
    enough, more, never = trio.Event(), trio.Event(), trio.Event()
    inside = trio.Event()
    release = threading.Event()  # a plain callback blocked in its call until the very end

    async def collect(record: MarketData) -> None:
        if record.kind == "trade":
            trades.append(record)
            if len(trades) >= 40:
                enough.set()
            if len(trades) >= 60:
                more.set()

    failures: list[MarketData] = []
    exploded = trio.Event()

    def explode(record: MarketData) -> None:
        failures.append(record)
        if len(failures) == 41:  # the 40 before it are counted: the calls come one after another
            trio.from_thread.run_sync(exploded.set)
        raise ValueError("a bug in someone's callback")

    async def stuck(record: MarketData) -> None:
        await never.wait()

    def blocking(record: MarketData) -> None:
        trio.from_thread.run_sync(inside.set)
        release.wait()

    try:
        async with simulator() as spot:
            config = load_config(config_file(workdir, spot), environ={})
            async with WebSocketService(config) as ws:
                raising = ws.add_data_callback(explode)
                blocked = ws.add_data_callback(stuck, buffer=3)
                sleeper = ws.add_data_callback(blocking, buffer=3)
                good = ws.add_data_callback(collect)
                with trio.fail_after(TIMEOUT):
                    await inside.wait()
                    await enough.wait()
                    await exploded.wait()
                status = await ws.get_connection_status()
                ws.remove_data_callback(raising)
                calls = len(failures)
                with trio.fail_after(TIMEOUT):
                    await more.wait()  # records keep coming; none goes to the removed callback
            # the service stopped with the plain callback still in its call: it was abandoned
            abandoned = not release.is_set() and sleeper.delivered == 0
    finally:
        release.set()
    ids = [int(t.trade_id or 0) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # in order, none lost
    assert raising.errors >= 40 and raising.delivered == 0
    assert blocked.dropped > 0 and blocked.pending == 3
    assert sleeper.dropped > 0 and sleeper.pending == 3 and abandoned
    assert good.dropped == 0 and good.errors == 0
    names = {s["name"]: s for s in status["subscribers"]}
    assert 0 < names[blocked.name]["dropped"] <= blocked.dropped
    assert names[raising.name]["errors"] >= 40
    # no record is passed to a removed callback: at most the call in progress ends
    assert len(failures) <= calls + 1 and raising not in ws.hub.sinks


async def test_the_python_calls_answer_like_the_http_api(workdir: Path) -> None:
    async with simulator() as spot:
        config = load_config(config_file(workdir, spot), environ={})
        async with WebSocketService(config) as ws:
            with trio.fail_after(TIMEOUT):
                await ws.initialize()
                added = await ws.subscribe_to_symbol("binance", "solusdt", channels=["ticker"])
                listed = await ws.list_subscriptions()
                with pytest.raises(UnknownSymbol, match="NOPEUSDT"):
                    await ws.subscribe_to_symbol("binance", "NOPEUSDT")
                with pytest.raises(UnknownVenue, match="unknown venue 'kraken'"):
                    await ws.subscribe_to_symbol("kraken", "XBTUSD")
                removed = await ws.unsubscribe_from_symbol("binance", "SOLUSDT")
                with pytest.raises(NotSubscribed):
                    await ws.unsubscribe_from_symbol("binance", "SOLUSDT")
    assert added == {"exchange": "binance", "symbol": "SOLUSDT", "channels": ["ticker"],
                     "added": ["ticker"], "persisted": True}
    assert {"exchange": "binance", "symbol": "SOLUSDT", "channels": ["ticker"], "state": "active"} in listed
    assert removed["removed"] == ["ticker"] and removed["channels"] == []


async def test_an_exception_in_the_body_comes_out_as_raised_and_stops_the_service(workdir: Path) -> None:
    async with simulator() as spot:
        config = load_config(config_file(workdir, spot), environ={})
        service = WebSocketService(config)
        with pytest.raises(KeyError, match="mine"):
            async with service:
                await service.initialize()
                raise KeyError("mine")
        with trio.fail_after(TIMEOUT):
            await spot.wait_until(lambda: not spot.connections)  # its connection was closed
    with pytest.raises(RuntimeError, match="not running"):
        await service.initialize()


async def test_initialize_outside_async_with_runs_the_service_until_close(workdir: Path) -> None:
    async with simulator() as spot:
        ws = WebSocketService(load_config(config_file(workdir, spot), environ={}))
        with pytest.raises(ServiceNotRunning, match="initialize"):
            await ws.subscribe_to_symbol("binance", "ETHUSDT")
        with trio.fail_after(TIMEOUT):
            await ws.initialize()  # started in the background: a system task of this run
            await ws.subscribe_to_symbol("binance", "ETHUSDT", channels=["trades"])
            await spot.wait_until(lambda: len(spot.connections) == 1)
            await ws.close()
            await spot.wait_until(lambda: not spot.connections)  # closed gracefully
        assert "binance" in (await ws.get_connection_status())["exchanges"]  # still answers, under trio
        await ws.close()  # idempotent
        with pytest.raises(ServiceNotRunning, match="runs once"):
            await ws.initialize()
        with pytest.raises(ServiceNotRunning):
            await ws.subscribe_to_symbol("binance", "ETHUSDT")


async def test_callbacks_hear_of_a_lost_connection_and_of_data_flowing_again(workdir: Path) -> None:
    events: list[object] = []
    both: list[object] = []
    back = trio.Event()
    flowing = trio.Event()

    async def on_event(event: object) -> None:
        events.append(event)
        if isinstance(event, Reconnected):
            back.set()

    async def on_any(item: object) -> None:
        both.append(item)
        if isinstance(item, MarketData):
            flowing.set()

    async with simulator() as spot:
        config = load_config(config_file(workdir, spot), environ={})
        async with WebSocketService(config) as ws:
            ws.add_event_callback(on_event)
            ws.add_data_callback(on_any, events=True)
            with trio.fail_after(TIMEOUT):
                await ws.initialize()
                await flowing.wait()
                spot.drop_connections(code=1011, reason="internal error")
                await back.wait()
    down, up = events
    assert isinstance(down, Disconnected) and isinstance(up, Reconnected)
    assert (down.exchange, down.symbols, up.symbols) == ("binance", ("BTCUSDT",), ("BTCUSDT",))
    assert "1011" in down.reason
    assert 0 < up.gap_seconds < TIMEOUT
    where = both.index(down)
    assert both.index(up) > where and all(isinstance(i, MarketData) for i in both[:where])
