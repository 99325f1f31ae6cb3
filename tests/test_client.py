"""feedd.client: the sans-IO line decoder on literal lines, then ``subscribe`` under trio and under
asyncio against a running daemon: filters honoured, a daemon restart survived and announced."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section
from tools import DOCS, docs_blocks

from feedd.client import (
    BadLine,
    ClientDisconnected,
    ClientReconnected,
    Gap,
    Item,
    LineDecoder,
    ServerError,
    SubscribeError,
    SubscriptionRefused,
    UnknownEvent,
    VenueDisconnected,
    VenueReconnected,
    filter_line,
    subscribe,
)
from feedd.codec import encode_line, encode_record
from feedd.model import MarketData
from feedd.sim import BinanceSimulator, BybitSimulator

TIMEOUT = 30
T0 = datetime(2024, 8, 8, 23, 54, 15, 343000, tzinfo=UTC)
TRADE = MarketData("binance", "BTCUSDT", "trade", 61837.63, 0.02, T0, T0, side="sell", trade_id="3735683259")
TICKER = MarketData("bybit", "ETHUSDT", "ticker", 2612.5, 181234.5, T0, T0, 2612.4, 2612.6, 2700.1, 2550.3,
                    -1.25)


# ---- the decoder --------------------------------------------------------------------------


def test_a_record_line_becomes_the_daemons_record_with_aware_utc_datetimes() -> None:
    [trade, ticker] = LineDecoder().feed(encode_record(TRADE) + encode_record(TICKER))
    assert trade == TRADE and ticker == TICKER
    assert isinstance(trade, MarketData) and trade.timestamp.tzinfo is UTC


def test_a_line_split_across_reads_waits_for_its_end() -> None:
    decoder = LineDecoder()
    data = encode_record(TRADE) + encode_record(TICKER)
    items: list[Item] = []
    for start in range(0, len(data), 7):
        items += decoder.feed(data[start:start + 7])
    assert items == [TRADE, TICKER]
    assert decoder.end() == []


def test_an_offset_timestamp_is_converted_to_utc() -> None:
    line = encode_record(TRADE).replace(b"2024-08-08T23:54:15.343000Z", b"2024-08-09T01:54:15.343+02:00", 1)
    [record] = LineDecoder().feed(line)
    assert isinstance(record, MarketData)
    assert record.timestamp == T0 and record.timestamp.tzinfo is UTC


def test_every_notice_the_daemon_sends_is_a_typed_event() -> None:
    lines = [
        {"type": "gap", "dropped": 12},
        {"type": "error", "error": "filter 'kind' has unknown value(s) ['book']"},
        {"type": "disconnect", "exchange": "binance", "symbols": ["BTCUSDT", "ETHUSDT"],
         "at": "2024-08-08T23:54:15.343Z", "reason": "no frame for 30 s"},
        {"type": "reconnect", "exchange": "binance", "symbols": ["BTCUSDT"],
         "at": "2024-08-08T23:54:20.343Z", "gap_seconds": 5.0},
    ]
    items = LineDecoder().feed(b"".join(encode_line(line) for line in lines))
    assert items == [
        Gap(12),
        ServerError("filter 'kind' has unknown value(s) ['book']"),
        VenueDisconnected("binance", ("BTCUSDT", "ETHUSDT"), T0, "no frame for 30 s"),
        VenueReconnected("binance", ("BTCUSDT",), T0.replace(second=20), 5.0),
    ]


def test_a_notice_of_an_unknown_type_is_kept_whole_not_dropped() -> None:
    [item] = LineDecoder().feed(b'{"type": "resync", "exchange": "bybit", "n": 3}\n')
    assert item == UnknownEvent("resync", {"type": "resync", "exchange": "bybit", "n": 3})


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"{not json", "JSONDecodeError"),
        (b"[1, 2]", "TypeError"),
        (b'"text"', "TypeError"),
        (b'{"exchange": "binance"}', "missing field 'symbol'"),
        (encode_record(TRADE).rstrip().replace(b"Z", b""), "has no timezone"),
        (b'{"type": "gap"}', "missing field 'dropped'"),
        (b'{"type": "disconnect", "exchange": "x", "symbols": [], "at": "yesterday"}', "ValueError"),
    ],
)
def test_a_line_that_is_neither_record_nor_event_is_a_bad_line_counted(line: bytes, why: str) -> None:
    decoder = LineDecoder()
    [item] = decoder.feed(line + b"\n")
    assert isinstance(item, BadLine)
    assert why in item.error and item.excerpt == line[:120]
    assert decoder.bad_lines == 1
    assert decoder.feed(encode_record(TRADE)) == [TRADE]  # and the next line reads as usual


def test_a_line_cut_off_by_the_end_of_the_connection_is_reported() -> None:
    decoder = LineDecoder()
    assert decoder.feed(encode_record(TRADE)[:30]) == []
    [item] = decoder.end()
    assert isinstance(item, BadLine) and "ended in the middle" in item.error


def test_the_filter_line_names_only_what_is_given_and_refuses_unknown_kinds() -> None:
    assert filter_line() == b"{}\n"
    line = filter_line(["binance"], [], ["trades", "trades"])
    assert line == b'{"exchange":["binance"],"kind":["trades"]}\n'
    with pytest.raises(ValueError, match="unknown \\['book'\\]"):
        filter_line(kind=["book"])
    with pytest.raises(TypeError, match="symbol: expected a list"):
        filter_line(symbol="BTCUSDT")


# ---- against a daemon ---------------------------------------------------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-c-") as path:
        yield path


FILTER = {"exchange": ["binance"], "symbol": ["ETHUSDT"], "kind": ["trade"]}


def wanted(record: MarketData) -> bool:
    return (record.exchange, record.symbol, record.kind) == ("binance", "ETHUSDT", "trade")


async def consume(path: str, notify: Callable[[Item], Awaitable[None]], after_reconnect: int = 5) -> None:
    """Subscribe with FILTER, hand every item to ``notify``; stop ``after_reconnect`` records
    after our own reconnect."""
    reconnected, after = False, 0
    async with subscribe(path, **FILTER, backoff=0.05, max_backoff=0.5) as feed:
        async for item in feed:
            await notify(item)
            reconnected = reconnected or isinstance(item, ClientReconnected)
            if reconnected and isinstance(item, MarketData):
                after += 1
                if after == after_reconnect:
                    return


Consumer = Callable[[str, Callable[[Item], None]], Awaitable[None]]


async def under_trio(path: str, on_item: Callable[[Item], None]) -> None:
    async def notify(item: Item) -> None:
        on_item(item)

    await consume(path, notify)


async def under_asyncio(path: str, on_item: Callable[[Item], None]) -> None:
    """The same consumer on an asyncio loop in a thread of its own; items come back to trio."""

    async def notify(item: Item) -> None:
        trio.from_thread.run_sync(on_item, item)

    def run() -> None:
        asyncio.run(consume(path, notify))

    await trio.to_thread.run_sync(run)


@pytest.mark.parametrize("consumer", [under_trio, under_asyncio], ids=["trio", "asyncio"])
async def test_subscribe_honours_the_filter_and_survives_a_daemon_restart(
    workdir: Path, consumer: Consumer
) -> None:
    binance, bybit = BinanceSimulator(speed=20.0), BybitSimulator(speed=20.0)
    items: list[Item] = []
    first_record, disconnected = trio.Event(), trio.Event()

    def on_item(item: Item) -> None:
        items.append(item)
        if isinstance(item, MarketData):
            first_record.set()
        elif isinstance(item, ClientDisconnected):
            disconnected.set()

    async with serving(binance, bybit):
        text = FAST_FEED + venue_section("binance", binance.ws_url, binance.rest_url, ("BTCUSDT", "ETHUSDT"))
        text += venue_section("bybit", bybit.endpoint("spot"), bybit.rest_url, ("BTCUSDT", "ETHUSDT"))
        config = load_text(workdir, text)
        finished = trio.Event()

        async def consumer_task(path: str) -> None:
            await consumer(path, on_item)
            finished.set()

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                async with running(config) as daemon:
                    nursery.start_soon(consumer_task, daemon.config.unix.path)
                    await first_record.wait()
                await disconnected.wait()  # the first daemon stopped
                async with running(config):
                    await finished.wait()  # reconnected, with its records after the gap

    records = [item for item in items if isinstance(item, MarketData)]
    assert records and all(wanted(r) for r in records), {(r.exchange, r.symbol, r.kind) for r in records}
    assert all(r.timestamp.tzinfo is UTC and r.received_at.tzinfo is UTC for r in records)
    notices = [item for item in items if isinstance(item, ClientDisconnected | ClientReconnected)]
    assert [type(n) for n in notices] == [ClientDisconnected, ClientReconnected]
    assert notices[0].path == config.unix.path and "closed" in notices[0].reason
    assert notices[1].gap_seconds > 0 and notices[1].attempts >= 1
    index = items.index(notices[1])
    assert any(isinstance(i, MarketData) for i in items[:index])
    assert sum(isinstance(i, MarketData) for i in items[index:]) == 5


async def test_no_socket_at_first_is_an_error_naming_the_path(workdir: Path) -> None:
    with pytest.raises(SubscribeError, match=f"no feedd socket at {workdir}/nothing.sock"):
        async for _ in subscribe(str(workdir / "nothing.sock")):
            pass


def test_no_socket_at_first_is_an_error_under_asyncio_too(workdir: Path) -> None:
    async def first() -> None:
        async for _ in subscribe(str(workdir / "nothing.sock")):
            pass

    with pytest.raises(SubscribeError, match="no feedd socket at"):
        asyncio.run(first())


async def test_a_refusal_by_the_daemon_raises_with_its_reason(workdir: Path) -> None:
    binance = BinanceSimulator(speed=20.0)
    async with serving(binance):
        feed = FAST_FEED.replace('path = "feedd.sock"', 'path = "feedd.sock"\nmax_clients = 1')
        config = load_text(workdir, feed + venue_section("binance", binance.ws_url, binance.rest_url,
                                                         ("BTCUSDT",)))
        async with running(config) as daemon:
            with trio.fail_after(TIMEOUT):
                first = await Subscriber.connect(daemon.config.unix.path)
                await first.record()  # the one place is taken
                with pytest.raises(SubscriptionRefused, match="too many subscribers \\(max 1\\)"):
                    async for _ in subscribe(daemon.config.unix.path):
                        pass
                await first.stream.aclose()


PYTHON_API = DOCS / "python-api.md"


def docs_examples() -> list[str]:
    """The two blocks after docs/python-api.md's marker for this test."""
    return docs_blocks(PYTHON_API, "tests/test_client.py runs both blocks", count=2)


@pytest.mark.parametrize("index", [0, 1], ids=["trio", "asyncio"])
async def test_the_python_api_page_examples_print_records(workdir: Path, index: int) -> None:
    code = docs_examples()[index]
    assert ("trio.run(main)" if index == 0 else "asyncio.run(main())") in code
    binance = BinanceSimulator(speed=20.0)
    async with serving(binance):
        config = load_text(workdir, FAST_FEED + venue_section("binance", binance.ws_url, binance.rest_url,
                                                              ("BTCUSDT",)))
        async with running(config) as daemon:
            code = code.replace("/run/feedd/feedd.sock", daemon.config.unix.path)
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", code], stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert process.stdout is not None
            try:
                output = b""
                with trio.fail_after(TIMEOUT):
                    while output.count(b"\n") < 3:
                        chunk = await process.stdout.receive_some(65536)
                        assert chunk, f"the example ended: {output!r}"
                        output += chunk
            finally:
                process.kill()
                await process.wait()
    for line in output.decode().splitlines()[:3]:
        assert line.startswith("MarketData(exchange='binance', symbol='BTCUSDT'"), line
