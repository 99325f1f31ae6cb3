"""WebSocketService embedded in a program, under asyncio and under trio: the README's blocks (the
product spec's block among them) as programs against the simulators, a program that forgets
``close()``, the threads asyncio gets, the exceptions, the async callbacks on asyncio's loop."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sniffio
import trio
from embedded import EXIT_BOUND, Simulated, run_program, simulated, to_trio, write_config
from tools import ROOT, docs_blocks

from feedd import MarketData, WebSocketService
from feedd.errors import (
    InvalidRequest,
    NotSubscribed,
    ServiceNotRunning,
    UnknownSymbol,
    UnknownVenue,
)

__all__ = ["simulated"]  # the fixture, imported

README = ROOT / "README.md"
MARKER = "tests/control/test_embedding.py runs these blocks"
TIMEOUT = 20


def readme_blocks() -> list[str]:
    """The README's Python API blocks: trio with ``async with``, the spec's under asyncio, ASGI."""
    return docs_blocks(README, MARKER, count=3)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="feedd-e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config(workdir: Path, simulated: Simulated, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$FEEDD_CONFIG`` for this test (and its programs): both simulators, no symbols."""
    path = write_config(workdir, simulated)
    monkeypatch.setenv("FEEDD_CONFIG", str(path))
    for name in ("ENABLE_WEBSOCKET_FEED", "WEBSOCKET_RECONNECT_INTERVAL", "MAX_WEBSOCKET_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    return path


def printed_symbols(stdout: str) -> set[str]:
    return set(re.findall(r"^New data: (\w+) - [\d.]+$", stdout, re.M))


def clean(stderr: str) -> bool:
    """Nothing on stderr that a user would take for a failure."""
    return not re.search(r"Traceback|Error|Warning|never awaited|abandoned", stderr)


# ---- the README's blocks, as programs ---------------------------------------------------


def test_the_readme_first_block_streams_inside_async_with_under_trio(workdir: Path, config: Path) -> None:
    done = run_program(workdir, readme_blocks()[0], config)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(re.fullmatch(r"binance ETHUSDT trade [\d.]+", line) for line in lines)
    assert clean(done.stderr), done.stderr


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_the_specs_block_streams_both_venues_and_reports_their_status(
    workdir: Path, config: Path, loop: str
) -> None:
    source = readme_blocks()[1]
    spec = "# Initialize service\n    ws_service = WebSocketService()\n    await ws_service.initialize()"
    assert spec in source
    done = run_program(workdir, source if loop == "asyncio" else to_trio(source), config)
    assert done.returncode == 0, done.stderr
    # the callback saw records of both venues: BTCUSDT is Bybit's here, ETHUSDT Binance's
    assert printed_symbols(done.stdout) == {"BTCUSDT", "ETHUSDT"}
    assert "{'binance': 'connected', 'bybit': 'connected'}" in done.stdout.splitlines()
    assert clean(done.stderr), done.stderr


FORGETFUL = """
import {loop}, time
from feedd import WebSocketService

async def main():
    ws = WebSocketService()
    await ws.initialize()
    await ws.subscribe_to_symbol("bybit", "BTCUSDT", channels=["trades"])
    await ws.subscribe_to_symbol("binance", "ETHUSDT", channels=["trades"])
    seen = {event}

    async def on_data(data):
        print(data.exchange, data.symbol, flush=True)
        seen.set()

    ws.add_data_callback(on_data)
    await seen.wait()
    print("returning", time.monotonic(), flush=True)  # without ws.close()

{run}
"""


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_a_program_that_forgets_close_exits_at_once_and_cleanly(
    workdir: Path, config: Path, loop: str
) -> None:
    source = FORGETFUL.format(
        loop=loop,
        event=f"{loop}.Event()",
        run="asyncio.run(main())" if loop == "asyncio" else "trio.run(main)",
    )
    done = run_program(workdir, source, config)
    assert done.returncode == 0, done.stderr
    returned = re.search(r"^returning ([\d.]+)$", done.stdout, re.M)
    assert returned is not None, done.stdout
    assert done.ended - float(returned.group(1)) < EXIT_BOUND
    assert clean(done.stderr), done.stderr


# ---- asyncio in this process: threads, callbacks ------------------------------------------


def test_under_asyncio_feedd_runs_on_the_loops_thread_and_adds_none_of_its_own(config: Path) -> None:
    main = threading.get_ident()
    before = {t.ident for t in threading.enumerate()}
    callback_threads: set[int] = set()
    during: list[threading.Thread] = []

    async def program() -> None:
        ws = WebSocketService()
        await ws.initialize()
        await ws.subscribe_to_symbol("binance", "ETHUSDT", channels=["trades"])
        enough = asyncio.Event()
        count = 0

        async def on_data(data: MarketData) -> None:
            nonlocal count
            callback_threads.add(threading.get_ident())
            assert asyncio.current_task() is not None  # an asyncio task, not a trio one
            count += 1
            if count >= 20:
                enough.set()

        ws.add_data_callback(on_data)
        await asyncio.wait_for(enough.wait(), TIMEOUT)
        during.extend(threading.enumerate())
        await ws.close()

    asyncio.run(program())
    assert callback_threads == {main}
    added = [t for t in during if t.ident not in before]
    # trio's guest mode waits for I/O in a worker of trio's own thread cache (at most two, one
    # handing over to the next): no thread runs feedd's code or a second loop
    assert len(added) <= 2 and all(t.name.startswith("Trio thread") and t.daemon for t in added), added
    assert threading.active_count() <= len(before) + 2


def test_under_asyncio_callbacks_get_records_in_order_and_a_slow_one_loses_its_oldest(config: Path) -> None:
    async def program() -> dict[str, Any]:
        ws = WebSocketService()
        await ws.initialize()
        await ws.subscribe_to_symbol("binance", "ETHUSDT", channels=["trades"])
        trades: list[MarketData] = []
        enough, never = asyncio.Event(), asyncio.Event()
        in_thread: list[str] = []

        async def collect(data: MarketData) -> None:
            trades.append(data)
            if len(trades) >= 60:
                enough.set()

        async def stuck(data: MarketData) -> None:
            await never.wait()

        def plain(data: MarketData) -> None:  # a plain function keeps its worker thread
            in_thread.append(threading.current_thread().name)

        async def raising(data: MarketData) -> None:
            raise ValueError("a bug in someone's callback")

        good = ws.add_data_callback(collect)
        slow = ws.add_data_callback(stuck, buffer=3)
        failing = ws.add_data_callback(raising)
        ws.add_data_callback(plain)
        await asyncio.wait_for(enough.wait(), TIMEOUT)
        ws.remove_data_callback(good)
        kept = len(trades)
        status = await ws.get_connection_status()
        await ws.close()
        return {"trades": trades, "kept": kept, "good": good, "slow": slow, "failing": failing,
                "in_thread": in_thread, "status": status}

    out = asyncio.run(program())
    ids = [int(t.trade_id or 0) for t in out["trades"]]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # in order, none lost
    assert len(out["trades"]) == out["kept"]  # nothing after removal
    assert out["good"].dropped == 0 and out["good"].errors == 0
    assert out["slow"].dropped > 0 and out["slow"].pending == 3
    assert out["failing"].errors >= 60 and out["failing"].delivered == 0
    assert out["in_thread"] and all(name.startswith("feedd callback#") for name in out["in_thread"])
    names = {s["name"]: s for s in out["status"]["subscribers"]}
    assert names[out["slow"].name]["dropped"] > 0


def test_under_asyncio_a_callback_added_before_the_start_runs_on_the_loop(config: Path) -> None:
    async def program() -> tuple[list[object], set[str]]:
        seen: list[object] = []
        first = asyncio.Event()

        async def on_any(item: object) -> None:
            assert asyncio.current_task() is not None
            seen.append(item)
            first.set()

        ws = WebSocketService()
        sinks = [ws.add_data_callback(on_any, events=True), ws.add_data_callback(on_any)]
        await ws.initialize()
        await ws.subscribe_to_symbol("bybit", "BTCUSDT", channels=["trades"])
        await asyncio.wait_for(first.wait(), TIMEOUT)
        await ws.close()
        return seen, {sink.name for sink in sinks}

    seen, names = asyncio.run(program())
    assert seen and all(isinstance(item, MarketData) and item.exchange == "bybit" for item in seen)
    assert sorted(name.partition(":")[0] for name in names) == ["callback#1", "callback#2"]


# ---- the same exceptions under both loops -------------------------------------------------


async def refusals(ws: WebSocketService) -> list[tuple[str, str]]:
    """What each wrong call raises: (class, message), before the start, while running, after."""
    seen: list[tuple[str, str]] = []

    async def attempt(call: Callable[[], Awaitable[object]]) -> None:
        try:
            await call()
        except Exception as exc:  # noqa: BLE001 (what is raised is what the test compares)
            seen.append((type(exc).__name__, str(exc)))
        else:
            seen.append(("no exception", ""))

    await attempt(lambda: ws.subscribe_to_symbol("binance", "ETHUSDT"))
    await ws.initialize()
    await attempt(lambda: ws.subscribe_to_symbol("kraken", "XBTUSD"))
    await attempt(lambda: ws.subscribe_to_symbol("binance", "NOPEUSDT"))
    await attempt(lambda: ws.subscribe_to_symbol("binance", "ETH USDT"))
    await attempt(lambda: ws.subscribe_to_symbol("binance", "ETHUSDT", channels=["book"]))
    await attempt(lambda: ws.unsubscribe_from_symbol("binance", "SOLUSDT"))
    await ws.close()
    await attempt(lambda: ws.subscribe_to_symbol("binance", "ETHUSDT"))
    await attempt(ws.initialize)
    return seen


def test_the_same_calls_raise_the_same_exceptions_under_asyncio_and_trio(config: Path) -> None:
    under_asyncio = asyncio.run(refusals(WebSocketService()))
    under_trio = trio.run(refusals, WebSocketService())
    assert under_asyncio == under_trio
    assert [kind for kind, _ in under_trio] == [
        ServiceNotRunning.__name__, UnknownVenue.__name__, UnknownSymbol.__name__,
        InvalidRequest.__name__, InvalidRequest.__name__, NotSubscribed.__name__,
        ServiceNotRunning.__name__, ServiceNotRunning.__name__,
    ]


async def start_twice_then_fail_to_start(ws: WebSocketService, taken: WebSocketService) -> list[str]:
    """Two initialize() at once start one service; a start that fails raises its reason."""
    await gather(ws.initialize(), ws.initialize())
    status = await ws.get_connection_status()
    await ws.close()
    try:
        await taken.initialize()
    except Exception as exc:  # noqa: BLE001 (what is raised is what the test compares)
        return [*sorted(status["exchanges"]), type(exc).__name__, str(exc)]
    return ["no exception"]


async def gather(*calls: Awaitable[None]) -> None:
    """``calls`` concurrently, on whichever loop runs."""
    if sniffio.current_async_library() == "asyncio":
        await asyncio.gather(*calls)
        return
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(lambda c=call: c)


def test_concurrent_starts_and_a_failed_start_behave_alike_under_asyncio_and_trio(
    config: Path, workdir: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        busy = workdir / "busy.toml"
        busy.write_text(config.read_text(encoding="utf-8") + f'[http]\nlisten = "127.0.0.1:{port}"\n',
                        encoding="utf-8")
        under_asyncio = asyncio.run(start_twice_then_fail_to_start(
            WebSocketService(), WebSocketService(busy, serve_http=True)))
        under_trio = trio.run(start_twice_then_fail_to_start,
                              WebSocketService(), WebSocketService(busy, serve_http=True))
    assert under_asyncio == under_trio
    assert under_trio[:3] == ["binance", "bybit", "ListenError"]
    assert f"127.0.0.1:{port}" in under_trio[3]


def test_an_asyncio_call_cancelled_while_it_waits_leaves_the_service_running(config: Path) -> None:
    async def program() -> tuple[bool, dict[str, Any]]:
        async with WebSocketService() as ws:
            await ws.initialize()
            call = asyncio.ensure_future(ws.subscribe_to_symbol("binance", "ETHUSDT", ack_timeout=30))
            await asyncio.sleep(0)  # on its way to the venue, in the trio guest
            call.cancel()
            try:
                await call
            except asyncio.CancelledError:
                cancelled = True
            else:
                cancelled = False
            added = await ws.subscribe_to_symbol("binance", "BNBUSDT", channels=["trades"])
        return cancelled, added

    cancelled, added = asyncio.run(program())
    assert cancelled
    assert added["added"] == ["trades"]


def test_the_block_forms_and_the_methods_are_the_same_under_asyncio(config: Path) -> None:
    async def program() -> list[dict[str, Any]]:
        async with WebSocketService() as ws:
            await ws.initialize()
            await ws.subscribe_to_symbol("bybit", "BTCUSDT", channels=["ticker"])
            listed = await ws.list_subscriptions()
            removed = await ws.unsubscribe_from_symbol("bybit", "BTCUSDT")
        return [*listed, removed]

    *listed, removed = asyncio.run(program())
    assert {"exchange": "bybit", "symbol": "BTCUSDT", "channels": ["ticker"], "state": "active"} in listed
    assert removed["removed"] == ["ticker"]

