"""End to end with Hyperliquid: simulators → daemon (runner, hub, Unix publisher) → Unix-socket
subscribers, for perpetuals and spot pairs, across reconnects and refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd import WebSocketService
from feedd.config import Config
from feedd.exchanges.hyperliquid import Hyperliquid
from feedd.model import MarketData
from feedd.sim import BinanceSimulator, HyperliquidSimulator

TIMEOUT = 15
COINS = ("BTC", "ETH", "PURR/USDC", "@107")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-h-") as path:
        yield path


def write_config(workdir: Path, sim: HyperliquidSimulator, coins: tuple[str, ...], *extra: str) -> Config:
    section = venue_section("hyperliquid", sim.ws_url, sim.rest_url, coins, *extra)
    return load_text(workdir, FAST_FEED + section)


def in_sequence(records: list[MarketData]) -> dict[str, list[int]]:
    """Each coin's trade ids, checked to follow on one by one (the simulator numbers them)."""
    runs: dict[str, list[int]] = {}
    for record in records:
        if record.kind == "trade":
            runs.setdefault(record.symbol, []).append(int(record.trade_id or 0))
    for coin, ids in runs.items():
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{coin}: a trade lost or repeated"
    return runs


async def test_perpetuals_and_spot_pairs_stream_beside_binance_through_the_unix_socket(
    workdir: Path,
) -> None:
    sim, binance = HyperliquidSimulator(speed=20.0), BinanceSimulator(speed=20.0)
    wanted = {(coin, kind) for coin in COINS for kind in ("trade", "ticker")} | {("binance", "trade")}
    kinds: set[tuple[str, str]] = set()

    def complete(record: MarketData) -> bool:
        """Both kinds of every coin (a ticker with its quote), and a Binance trade."""
        if record.exchange == "binance":
            kinds.add(("binance", record.kind))
        elif record.kind == "trade" or record.bid is not None:
            kinds.add((record.symbol, record.kind))
        return kinds >= wanted

    async with serving(sim, binance):
        text = FAST_FEED + venue_section("hyperliquid", sim.ws_url, sim.rest_url, COINS)
        text += venue_section("binance", binance.ws_url, binance.rest_url, ("BTCUSDT",))
        async with running(load_text(workdir, text)) as daemon:
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                seen = await client.until(complete)
            status = daemon.statuses["hyperliquid"]
            instruments = daemon.venues["hyperliquid"].instruments
    records = [r for r in seen if r.exchange == "hyperliquid"]
    for record in records:
        assert record.price > 0 and record.volume > 0
        assert abs((record.received_at - record.timestamp).total_seconds()) < 60
        if record.kind == "trade":
            assert record.side in ("buy", "sell") and record.trade_id
        else:
            assert record.change_24h is not None and record.high_24h is None
            if record.bid is not None:
                assert record.ask is not None and record.bid < record.ask
    in_sequence(records)
    assert (status.decode_errors, status.subscription_errors, status.reconnects) == (0, {}, 0)
    assert instruments.source == "rest"  # both info pages, POSTed
    assert instruments.symbols == frozenset({"BTC", "ETH", "SOL", "PURR/USDC", "@107"})


async def test_a_reconnect_publishes_every_trade_once(workdir: Path) -> None:
    sim = HyperliquidSimulator(speed=20.0)
    async with serving(sim), running(write_config(workdir, sim, ("BTC", "ETH"))) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path, b'{"kind": ["trade"]}\n')
            before = await client.until(lambda r: int(r.trade_id or 0) >= 40)
            first = sim.connections[0]
            sim.drop_connections()  # its replacement's snapshot repeats the last trades
            await sim.wait_until(lambda: bool(sim.connections) and sim.connections[0] is not first)
            after = await client.until(lambda r: int(r.trade_id or 0) > 80)
    runs = in_sequence(before + after)
    assert set(runs) == {"BTC", "ETH"}
    assert daemon.statuses["hyperliquid"].reconnects >= 1


async def test_an_unknown_coin_is_refused_by_name_while_the_rest_streams(workdir: Path) -> None:
    sim = HyperliquidSimulator(speed=20.0)
    # check_symbols off, so the unknown coin reaches the wire
    async with serving(sim), running(write_config(
        workdir, sim, ("BTC", "NOPE"), "check_symbols = false"
    )) as daemon:
        status = daemon.statuses["hyperliquid"]
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            records = await client.until(lambda r: len(status.subscription_errors) == 3)
    assert set(status.subscription_errors) == {"trades:NOPE", "activeAssetCtx:NOPE", "bbo:NOPE"}
    assert status.subscription_errors["trades:NOPE"] == 'Invalid subscription {"type":"trades","coin":"NOPE"}'
    assert {r.symbol for r in records} == {"BTC"}
    assert sim.connections_accepted == 1  # a refusal costs no reconnect


async def test_a_coin_missing_from_both_info_pages_is_unknown(workdir: Path) -> None:
    sim = HyperliquidSimulator(speed=20.0)
    async with serving(sim), running(write_config(workdir, sim, ("@107", "HYPE/USDC"))) as daemon:
        with trio.fail_after(TIMEOUT):
            await sim.wait_subscribed({"trades:@107", "bbo:@107", "activeAssetCtx:@107"})
            client = await Subscriber.connect(daemon.config.unix.path)
            record = await client.record()
        errors = dict(daemon.statuses["hyperliquid"].subscription_errors)
    assert record.symbol == "@107"
    assert set(errors) == {"HYPE/USDC"} and "unknown symbol" in errors["HYPE/USDC"]
    assert (Path(daemon.config.feed.cache_dir) / "hyperliquid-instruments.json").is_file()


async def test_a_quiet_feed_is_pinged_and_a_missing_pong_reopens_the_connection(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the 20 s idle ping and 10 s pong deadline, shortened so the test runs on the real clock;
    # a tape this slow sends nothing after the snapshots, so the feed is idle
    monkeypatch.setattr(Hyperliquid, "ping_interval", 0.2)
    monkeypatch.setattr(Hyperliquid, "pong_timeout", 0.3)
    sim = HyperliquidSimulator(speed=0.001)
    async with serving(sim), running(write_config(workdir, sim, ("BTC",))) as daemon:
        with trio.fail_after(TIMEOUT):
            first = await sim.wait_subscribed("trades:BTC")
            await sim.wait_until(lambda: sim.pings_received >= 3)
            assert sim.connections_accepted == 1  # answered: the quiet connection stays
            sim.set_pong_silent(True)
            await sim.wait_until(lambda: sim.connections_accepted >= 2)
            conn = next(iter(daemon.statuses["hyperliquid"].connections.values()))
            assert conn.last_error == "no pong within 0.3 s of a ping"
            sim.set_pong_silent(False)
            second = await sim.wait_subscribed("trades:BTC")
    assert second is not first


async def test_a_live_subscribe_returns_once_acknowledged_and_its_coin_streams(workdir: Path) -> None:
    sim = HyperliquidSimulator(speed=20.0)
    records: list[MarketData] = []
    arrived = trio.Event()

    async def on_data(record: MarketData) -> None:
        if record.symbol == "@107":
            records.append(record)
            arrived.set()

    async with serving(sim), WebSocketService(write_config(workdir, sim, ("BTC",))) as ws:
        with trio.fail_after(TIMEOUT):
            await ws.initialize()
            ws.add_data_callback(on_data)
            await ws.subscribe_to_symbol("hyperliquid", "@107")  # returns once the venue said yes
            held = set(sim.connections[0].topics)
            await arrived.wait()
    assert {"trades:@107", "bbo:@107", "activeAssetCtx:@107"} <= held
    assert records[0].exchange == "hyperliquid"
