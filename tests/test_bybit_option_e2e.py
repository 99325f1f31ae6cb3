"""End to end with Bybit options: its simulator → daemon (runner, hub, Unix publisher) → a
Unix-socket subscriber."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd.config import Config
from feedd.exchanges.bybit_option import BybitOption
from feedd.model import MarketData
from feedd.sim.bybit_option import BybitOptionSimulator

TIMEOUT = 15
CALL, PUT, USDT_CALL = "BTC-25DEC26-100000-C", "BTC-25DEC26-90000-P", "BTC-25DEC26-110000-C-USDT"
ETH_CALL = "ETH-25DEC26-3500-C"


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-o-") as path:
        yield path


def write_config(workdir: Path, sim: BybitOptionSimulator, symbols: tuple[str, ...], *extra: str) -> Config:
    section = venue_section("bybit-option", sim.ws_url, sim.rest_url, symbols, *extra)
    return load_text(workdir, FAST_FEED + section)


async def test_options_of_two_coins_stream_their_own_trades_and_tickers(workdir: Path) -> None:
    sim = BybitOptionSimulator(speed=20.0, instruments_page_size=1)
    symbols = (CALL, USDT_CALL, ETH_CALL)  # the put is listed and trades, but is not subscribed
    wanted = {(symbol, kind) for symbol in symbols for kind in ("trade", "ticker")}
    seen_kinds: set[tuple[str, str]] = set()

    def complete(record: MarketData) -> bool:
        seen_kinds.add((record.symbol, record.kind))
        return seen_kinds >= wanted

    async with serving(sim), running(write_config(workdir, sim, symbols)) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            seen = await client.until(complete)
        status = daemon.statuses["bybit-option"]
        supervisor = daemon.venues["bybit-option"]
        held = {topic for conn in sim.connections for topic in conn.topics}
    # one trade topic per coin on the wire; every page of every coin read
    assert held == {"publicTrade.BTC", "publicTrade.ETH", *(f"tickers.{s}" for s in symbols)}
    assert supervisor.instruments.symbols == frozenset(sim.option_symbols)
    assert {r.symbol for r in seen} == set(symbols)  # the put's trades were dropped
    for record in seen:
        assert record.exchange == "bybit-option" and record.price > 0 and record.volume > 0
        assert abs((record.received_at - record.timestamp).total_seconds()) < 60
        if record.kind == "ticker":
            assert record.bid is not None and record.ask is not None and record.bid < record.ask
            assert record.change_24h is not None and abs(record.change_24h) < 100
        else:
            assert record.side in ("buy", "sell") and record.trade_id
    assert status.decode_errors == 0 and status.subscription_errors == {}
    assert status.reconnects == 0


async def test_a_live_subscribe_on_a_held_coin_topic_is_acknowledged_and_streams(workdir: Path) -> None:
    sim = BybitOptionSimulator(speed=20.0)
    async with serving(sim), running(write_config(workdir, sim, (CALL,), 'channels = ["trades"]')) as daemon:
        supervisor = daemon.venues["bybit-option"]
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            await client.record()
            await supervisor.subscribe_confirmed(PUT, ["trades"], trio.current_time() + TIMEOUT)
            await client.until(lambda r: r.symbol == PUT)
            await supervisor.unsubscribe_confirmed(CALL, ["trades"], trio.current_time() + TIMEOUT)
            await sim.wait_until(lambda: bool(sim.connections) and set(sim.connections[0].topics) == {
                "publicTrade.BTC"})
            after = await client.until(lambda r: r.symbol == PUT)
        held = set(sim.connections[0].topics)
    assert held == {"publicTrade.BTC"}  # the coin topic stays for the put
    assert after[-1].symbol == PUT
    assert daemon.statuses["bybit-option"].subscription_errors == {}


async def test_a_refused_ticker_fails_alone_and_its_request_mates_stream(workdir: Path) -> None:
    sim = BybitOptionSimulator(speed=20.0)
    nope = "BTC-25DEC26-1-C"
    config = (CALL, nope)
    async with serving(sim), running(write_config(workdir, sim, config, "check_symbols = false")) as daemon:
        status = daemon.statuses["bybit-option"]
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            records = await client.until(
                lambda r: f"tickers.{nope}" in status.subscription_errors and r.kind == "ticker"
            )
        errors = dict(status.subscription_errors)
    assert set(errors) == {f"tickers.{nope}"}
    assert {r.symbol for r in records} == {CALL}
    assert sim.connections_accepted == 1  # a refused topic never costs a reconnect


async def test_pings_get_the_option_pong(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BybitOption, "ping_interval", 0.1)
    monkeypatch.setattr(BybitOption, "pong_timeout", 0.3)
    sim = BybitOptionSimulator(speed=20.0)
    async with serving(sim), running(write_config(workdir, sim, (CALL,))) as daemon:
        with trio.fail_after(TIMEOUT):
            await sim.wait_until(lambda: sim.pings_received >= 5)
            sim.set_pong_silent(True)
            await sim.wait_until(lambda: sim.connections_accepted >= 2)
            conn = next(iter(daemon.statuses["bybit-option"].connections.values()))
    assert conn.last_error == "no pong within 0.3 s of a ping"
