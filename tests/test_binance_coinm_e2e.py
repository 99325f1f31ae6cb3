"""End to end with Binance COIN-M: its simulator → daemon (runner, hub, Unix publisher) → a
Unix-socket subscriber."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd.config import Config
from feedd.model import MarketData
from feedd.sim.binance_coinm import BinanceCoinmSimulator, contract_size

TIMEOUT = 15
SYMBOLS = ("BTCUSD_PERP", "ETHUSD_PERP", "BTCUSD_261225")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-cm-") as path:
        yield path


def write_config(workdir: Path, sim: BinanceCoinmSimulator, symbols: tuple[str, ...] = SYMBOLS,
                 *extra: str) -> Config:
    return load_text(workdir, FAST_FEED + venue_section("binance-coinm", sim.ws_url, sim.rest_url, symbols,
                                                        *extra))


async def test_perpetual_and_dated_contracts_stream_trades_in_coins_and_quoted_tickers(workdir: Path) -> None:
    sim = BinanceCoinmSimulator(speed=5.0)
    wanted = {(symbol, kind) for symbol in SYMBOLS for kind in ("trade", "ticker")}
    seen_kinds: set[tuple[str, str]] = set()

    def complete(record: MarketData) -> bool:
        seen_kinds.add((record.symbol, record.kind))
        return seen_kinds >= wanted and record.kind == "ticker" and record.bid is not None

    async with serving(sim), running(write_config(workdir, sim)) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            seen = await client.until(complete)
        status = daemon.statuses["binance-coinm"]
        supervisor = daemon.venues["binance-coinm"]
        [conn] = sim.connections
    assert conn.path == "/stream"  # dstream: one unrouted endpoint carries every stream
    assert supervisor.instruments.source == "rest"
    assert "BTCUSD_270924" not in (supervisor.instruments.symbols or ())  # PENDING_TRADING
    for record in seen:
        assert record.exchange == "binance-coinm"
        assert record.price > 0 and record.volume > 0
        assert abs((record.received_at - record.timestamp).total_seconds()) < 60
        if record.kind == "trade":
            # whole contracts of contractSize USD each, given in coins
            contracts = record.volume * record.price / contract_size(record.symbol)
            assert contracts >= 0.999 and abs(contracts - round(contracts)) < 1e-6 * contracts
            assert record.side in ("buy", "sell") and record.trade_id
        else:
            # q, the base volume: a day's turnover of about 1.5 bn USD in coins
            assert 1e8 < record.volume * record.price < 1e10
            assert record.change_24h is not None
    last = seen[-1]
    assert last.bid is not None and last.ask is not None and last.bid < last.ask
    assert status.decode_errors == 0 and status.subscription_errors == {}
    assert status.reconnects == 0


async def test_a_contract_not_trading_is_refused_before_the_wire(workdir: Path) -> None:
    sim = BinanceCoinmSimulator(speed=5.0)
    async with serving(sim), running(write_config(workdir, sim, ("BTCUSD_PERP", "BTCUSD_270924"))) as daemon:
        with trio.fail_after(TIMEOUT):
            conn = await sim.wait_subscribed({"btcusd_perp@aggTrade"})
            client = await Subscriber.connect(daemon.config.unix.path)
            record = await client.record()
        errors = dict(daemon.statuses["binance-coinm"].subscription_errors)
    assert record.symbol == "BTCUSD_PERP"
    assert set(errors) == {"BTCUSD_270924"} and "unknown symbol" in errors["BTCUSD_270924"]
    assert not any("btcusd_270924" in topic for topic in conn.topics)


async def test_without_the_instrument_list_trades_take_binances_contract_size_rule(workdir: Path) -> None:
    sim = BinanceCoinmSimulator(speed=5.0)
    extra = ("check_symbols = false", 'channels = ["trades"]')
    async with serving(sim), running(write_config(workdir, sim, ("ETHUSD_PERP",), *extra)) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            records = [await client.record() for _ in range(20)]
    assert sim.rest_requests == 0
    for record in records:
        contracts = record.volume * record.price / 10  # ETH contracts are 10 USD
        assert abs(contracts - round(contracts)) < 1e-6 * contracts
