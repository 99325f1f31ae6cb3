"""End to end with Bybit: simulators → daemon (runner, hub, Unix publisher) → Unix-socket subscribers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd.config import Config
from feedd.exchanges.bybit import BybitLinear
from feedd.model import MarketData
from feedd.sim import BinanceSimulator, BybitSimulator

TIMEOUT = 15
BYBIT_VENUES = ("bybit", "bybit-linear", "bybit-inverse")
ALL_VENUES = {*BYBIT_VENUES, "binance", "binance-usdm"}


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-b-") as path:
        yield path


def write_config(
    workdir: Path,
    bybit: BybitSimulator,
    binance: tuple[BinanceSimulator, BinanceSimulator] | None = None,
    *,
    venues: tuple[str, ...] = BYBIT_VENUES,
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"),
    extra: tuple[str, ...] = (),
) -> Config:
    text = FAST_FEED
    categories = {"bybit": "spot", "bybit-linear": "linear", "bybit-inverse": "inverse"}
    for venue in venues:
        names = ("BTCUSD", "ETHUSD") if venue == "bybit-inverse" else symbols
        text += venue_section(venue, bybit.endpoint(categories[venue]), bybit.rest_url, names, *extra)
    if binance is not None:
        spot, futures = binance
        text += venue_section("binance", spot.ws_url, spot.rest_url, ("BTCUSDT", "ETHUSDT"))
        text += venue_section("binance-usdm", futures.ws_url, futures.rest_url, ("BTCUSDT",))
    return load_text(workdir, text)


def assert_good(record: MarketData) -> None:
    assert record.exchange in ALL_VENUES
    assert record.price > 0
    assert abs((record.received_at - record.timestamp).total_seconds()) < 60
    if record.kind == "trade":
        assert record.side in ("buy", "sell")
        assert record.trade_id
        assert record.volume > 0
    else:
        assert record.kind == "ticker"
        assert record.high_24h is not None and record.low_24h is not None
        assert record.low_24h <= record.high_24h
        assert record.change_24h is not None


async def test_three_bybit_and_two_binance_venues_stream_at_once_through_the_unix_socket(
    workdir: Path,
) -> None:
    bybit = BybitSimulator(speed=20.0)
    spot, futures = BinanceSimulator(speed=20.0), BinanceSimulator(futures=True, speed=20.0)
    wanted = {(venue, kind) for venue in ALL_VENUES for kind in ("trade", "ticker")}
    kinds: set[tuple[str, str]] = set()

    def complete(record: MarketData) -> bool:
        """Every venue has sent both kinds, and now a bybit spot ticker carries its quote."""
        kinds.add((record.exchange, record.kind))
        return kinds >= wanted and record.exchange == "bybit" and record.kind == "ticker" and (
            record.bid is not None
        )

    async with serving(bybit, spot, futures), running(
        write_config(workdir, bybit, (spot, futures))
    ) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            seen = await client.until(complete)
        statuses = {venue: daemon.statuses[venue] for venue in BYBIT_VENUES}
    for record in seen:
        assert_good(record)
    by_venue = {venue: [r for r in seen if r.exchange == venue] for venue in BYBIT_VENUES}
    assert {r.symbol for r in by_venue["bybit-inverse"]} <= {"BTCUSD", "ETHUSD"}
    # linear and inverse tickers are merged state: never a field lost to a delta
    for record in by_venue["bybit-linear"] + by_venue["bybit-inverse"]:
        if record.kind == "ticker":
            assert record.bid is not None and record.ask is not None and record.bid < record.ask
    # inverse trades: whole USD contracts, given in base units
    for record in by_venue["bybit-inverse"]:
        if record.kind == "trade":
            contracts = record.volume * record.price
            assert contracts >= 0.999 and abs(contracts - round(contracts)) < 1e-6 * contracts
    # once the level-1 book has arrived, every spot ticker carries bid and ask
    spot_tickers = [r for r in by_venue["bybit"] if r.kind == "ticker"]
    first_quoted = next(i for i, r in enumerate(spot_tickers) if r.bid is not None)
    for record in spot_tickers[first_quoted:]:
        assert record.bid is not None and record.ask is not None and record.bid < record.ask
    for status in statuses.values():
        assert status.decode_errors == 0
        assert status.subscription_errors == {}
        assert status.reconnects == 0


async def test_an_invalid_symbol_is_refused_by_name_while_its_batch_mates_stream(workdir: Path) -> None:
    bybit = BybitSimulator(speed=20.0)
    refused = {
        "bybit": {"publicTrade.NOPEUSDT", "tickers.NOPEUSDT", "orderbook.1.NOPEUSDT"},
        "bybit-linear": {"publicTrade.NOPEUSDT", "tickers.NOPEUSDT"},
    }
    async with serving(bybit), running(write_config(
        workdir, bybit, venues=("bybit", "bybit-linear"), symbols=("BTCUSDT", "NOPEUSDT"),
        extra=("check_symbols = false",),  # so the unknown symbol reaches the wire
    )) as daemon:
        with trio.fail_after(TIMEOUT):
            await bybit.wait_until(lambda: {c.category: set(c.topics) for c in bybit.connections} == {
                "spot": {"publicTrade.BTCUSDT", "tickers.BTCUSDT", "orderbook.1.BTCUSDT"},
                "linear": {"publicTrade.BTCUSDT", "tickers.BTCUSDT"},
            })
            client = await Subscriber.connect(daemon.config.unix.path)
            records = await client.until(
                lambda r: all(set(daemon.statuses[v].subscription_errors) == refused[v] for v in refused)
                and r.kind == "trade"
            )
            records += [await client.record() for _ in range(20)]
        statuses = dict(daemon.statuses)
        held = {c.category: set(c.topics) for c in bybit.connections}
    assert held == {
        "spot": {"publicTrade.BTCUSDT", "tickers.BTCUSDT", "orderbook.1.BTCUSDT"},
        "linear": {"publicTrade.BTCUSDT", "tickers.BTCUSDT"},
    }
    assert {r.symbol for r in records} == {"BTCUSDT"}
    assert {r.exchange for r in records} == {"bybit", "bybit-linear"}
    spot_errors = statuses["bybit"].subscription_errors
    assert spot_errors["tickers.NOPEUSDT"] == "Invalid symbol :[tickers.NOPEUSDT]"
    assert statuses["bybit-linear"].subscription_errors["publicTrade.NOPEUSDT"] == (
        "error:handler not found,topic:publicTrade.NOPEUSDT"
    )
    assert "subscription refused" in (statuses["bybit"].last_error or "")
    assert bybit.connections_accepted == 2  # one per venue: a refusal never costs a reconnect


async def test_symbols_are_checked_against_every_page_of_the_instrument_list(workdir: Path) -> None:
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT")
    bybit = BybitSimulator(speed=20.0, symbols=symbols, instruments_page_size=1)
    async with serving(bybit), running(
        write_config(workdir, bybit, venues=("bybit-linear",), symbols=("DOGEUSDT", "NOPEUSDT"))
    ) as daemon:
        with trio.fail_after(TIMEOUT):
            conn = await bybit.wait_subscribed({"publicTrade.DOGEUSDT", "tickers.DOGEUSDT"})
            client = await Subscriber.connect(daemon.config.unix.path)
            record = await client.record()
        supervisor = daemon.venues["bybit-linear"]
        errors = dict(daemon.statuses["bybit-linear"].subscription_errors)
    assert supervisor.instruments.source == "rest"
    assert supervisor.instruments.symbols == frozenset(symbols)  # four pages of one
    assert record.symbol == "DOGEUSDT"  # the last page's symbol
    assert set(errors) == {"NOPEUSDT"} and "unknown symbol" in errors["NOPEUSDT"]
    assert set(conn.topics) == {"publicTrade.DOGEUSDT", "tickers.DOGEUSDT"}  # never on the wire
    assert (Path(daemon.config.feed.cache_dir) / "bybit-linear-instruments.json").is_file()


async def test_a_silent_pong_reopens_the_connection(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Bybit's 20 s ping and 10 s pong deadline, shortened so the test runs on the real clock
    monkeypatch.setattr(BybitLinear, "ping_interval", 0.1)
    monkeypatch.setattr(BybitLinear, "pong_timeout", 0.3)
    bybit = BybitSimulator(speed=20.0)
    async with serving(bybit), running(write_config(workdir, bybit, venues=("bybit-linear",))) as daemon:
        with trio.fail_after(TIMEOUT):
            first = await bybit.wait_subscribed("tickers.BTCUSDT")
            # pongs answered: pings go out on their schedule and the connection stays
            await bybit.wait_until(lambda: bybit.pings_received >= 5)
            assert bybit.connections_accepted == 1
            bybit.set_pong_silent(True)  # data and acks go on; only the pong is missing
            await bybit.wait_until(lambda: bybit.connections_accepted >= 2)
            conn = next(iter(daemon.statuses["bybit-linear"].connections.values()))
            assert conn.last_error == "no pong within 0.3 s of a ping"
            bybit.set_pong_silent(False)
            second = await bybit.wait_subscribed({"tickers.BTCUSDT", "publicTrade.ETHUSDT"})
            client = await Subscriber.connect(daemon.config.unix.path, b'{"kind": ["ticker"]}\n')
            await client.record()
    assert second is not first
    assert daemon.statuses["bybit-linear"].reconnects >= 1


async def test_ticker_state_starts_over_with_each_connection(workdir: Path) -> None:
    bybit = BybitSimulator(speed=20.0)
    async with serving(bybit), running(write_config(workdir, bybit, venues=("bybit-linear",))) as daemon:
        status = daemon.statuses["bybit-linear"]
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path, b'{"kind": ["ticker"]}\n')
            old = await bybit.wait_subscribed({"tickers.BTCUSDT", "tickers.ETHUSDT"})
            await client.record()
            bybit.drop_connections()
            await bybit.wait_until(lambda: bool(bybit.connections) and bybit.connections[0] is not old)
            await bybit.wait_subscribed({"tickers.BTCUSDT", "tickers.ETHUSDT"})
            before = status.records
            records = await client.until(lambda r: status.records >= before + 20)
    # the new connection's snapshot starts each symbol's state: no delta arrives without one
    assert status.decode_errors == 0
    assert status.reconnects == 1
    assert all(r.bid is not None and r.ask is not None and r.change_24h is not None for r in records)


async def test_a_spot_ticker_subscribed_live_carries_bid_and_ask_from_its_first_record(workdir: Path) -> None:
    """The session asks for orderbook.1 before tickers, so the book's snapshot comes first."""
    bybit = BybitSimulator(speed=20.0)
    async with serving(bybit), running(write_config(
        workdir, bybit, venues=("bybit",), symbols=("BTCUSDT",), extra=('channels = ["trades"]',)
    )) as daemon:
        supervisor = daemon.venues["bybit"]
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            await client.record()  # a BTCUSDT trade: the subscriber is in place
            await supervisor.subscribe_confirmed("ETHUSDT", ["ticker"], trio.current_time() + TIMEOUT)
            first = (await client.until(lambda r: r.kind == "ticker"))[-1]
    assert (first.exchange, first.symbol) == ("bybit", "ETHUSDT")
    assert first.bid is not None and first.ask is not None and first.bid < first.ask
