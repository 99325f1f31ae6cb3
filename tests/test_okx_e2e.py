"""End to end with OKX: the simulator → daemon (runner, hub, Unix publisher) → Unix-socket subscribers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd.config import Config
from feedd.exchanges.okx import Okx
from feedd.model import MarketData
from feedd.sim import OkxSimulator

TIMEOUT = 15
SYMBOLS = ("BTC-USDT", "BTC-USDT-SWAP", "BTC-USD-SWAP", "BTC-USD-261225")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-o-") as path:
        yield path


def write_config(workdir: Path, sim: OkxSimulator, symbols: tuple[str, ...] = SYMBOLS, *extra: str) -> Config:
    return load_text(workdir, FAST_FEED + venue_section("okx", sim.ws_url, sim.rest_url, symbols, *extra))


async def test_spot_swaps_and_futures_stream_trades_and_tickers_in_base_units(workdir: Path) -> None:
    sim = OkxSimulator(speed=20.0)
    wanted = {(symbol, kind) for symbol in SYMBOLS for kind in ("trade", "ticker")}
    kinds: set[tuple[str, str]] = set()

    def complete(record: MarketData) -> bool:
        kinds.add((record.symbol, record.kind))
        return kinds >= wanted

    async with serving(sim), running(write_config(workdir, sim)) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            seen = await client.until(complete)
        status = daemon.statuses["okx"]
    for record in seen:
        assert record.exchange == "okx" and record.price > 0 and record.volume > 0
        assert abs((record.received_at - record.timestamp).total_seconds()) < 60
        if record.kind == "trade":
            assert record.side in ("buy", "sell") and record.trade_id
            inst = sim.instruments[record.symbol]
            if inst.inst_type != "SPOT":
                # whole contracts on the wire, base units in the record
                contracts = inst.contracts(record.volume, record.price)
                assert contracts == pytest.approx(round(contracts), rel=1e-9) and contracts >= 1
        else:
            assert record.bid is not None and record.ask is not None and record.bid < record.ask
            assert record.change_24h is not None and record.high_24h is not None
    assert (status.decode_errors, status.subscription_errors, status.reconnects) == (0, {}, 0)
    assert daemon.venues["okx"].instruments.source == "rest"


async def test_an_unknown_instrument_is_refused_by_name_while_the_rest_of_its_request_streams(
    workdir: Path,
) -> None:
    sim = OkxSimulator(speed=20.0)
    async with serving(sim), running(
        write_config(workdir, sim, ("BTC-USDT", "NOPE-USDT"), "check_symbols = false")
    ) as daemon:
        with trio.fail_after(TIMEOUT):
            await sim.wait_until(lambda: bool(sim.connections) and set(sim.connections[0].topics) == {
                "trades:BTC-USDT", "tickers:BTC-USDT"})
            client = await Subscriber.connect(daemon.config.unix.path)
            status = daemon.statuses["okx"]
            records = await client.until(
                lambda r: set(status.subscription_errors) == {"trades:NOPE-USDT", "tickers:NOPE-USDT"}
                and r.kind == "trade"
            )
    assert {r.symbol for r in records} == {"BTC-USDT"}
    assert status.subscription_errors["trades:NOPE-USDT"].startswith("60018: Wrong URL or channel:trades")
    assert sim.connections_accepted == 1  # a refusal never costs a reconnect


async def test_a_silent_pong_reopens_the_connection(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the idle ping after 20 s and the 10 s pong deadline, shortened to run on the real clock (the
    # deadline still above the one request a second a connection sends); the simulator's tape is
    # slow, so the feed goes idle between trades
    monkeypatch.setattr(Okx, "ping_interval", 0.05)
    monkeypatch.setattr(Okx, "pong_timeout", 1.5)
    sim = OkxSimulator(speed=0.5, instruments=("BTC-USDT",))
    async with serving(sim), running(write_config(workdir, sim, ("BTC-USDT",))) as daemon:
        with trio.fail_after(TIMEOUT):
            first = await sim.wait_subscribed("trades:BTC-USDT")
            await sim.wait_until(lambda: sim.pings_received >= 3)
            assert sim.connections_accepted == 1
            sim.set_pong_silent(True)
            await sim.wait_until(lambda: sim.connections_accepted >= 2)
            conn = next(iter(daemon.statuses["okx"].connections.values()))
            assert conn.last_error == "no pong within 1.5 s of a ping"
            sim.set_pong_silent(False)
            second = await sim.wait_subscribed("trades:BTC-USDT")
    assert second is not first


async def test_the_upgrade_notice_replaces_the_connection_without_a_gap(workdir: Path) -> None:
    sim = OkxSimulator(speed=20.0, instruments=("BTC-USDT", "ETH-USDT"))
    async with serving(sim), running(write_config(workdir, sim, ("BTC-USDT", "ETH-USDT"))) as daemon:
        status = daemon.statuses["okx"]
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path, b'{"kind": ["trade"]}\n')
            first = await sim.wait_subscribed({"trades:BTC-USDT", "trades:ETH-USDT"})
            await client.record()
            sim.send_server_shutdown(close_after=2.0)
            seen = await client.until(lambda r: status.rotations >= 1 and first not in sim.connections)
            seen += [await client.record() for _ in range(5)]
    for symbol in ("BTC-USDT", "ETH-USDT"):
        ids = [int(r.trade_id or 0) for r in seen if r.symbol == symbol]
        assert ids == list(range(ids[0], ids[0] + len(ids))), symbol
    assert client.notices == [] and status.reconnects == 0
