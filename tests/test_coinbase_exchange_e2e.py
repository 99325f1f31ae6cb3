"""End to end with Coinbase Exchange: its simulator → daemon → Unix-socket subscribers, beside
Coinbase Advanced Trade (another host, another budget)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd import WebSocketService
from feedd.config import Config
from feedd.model import MarketData
from feedd.sim import CoinbaseExchangeSimulator, CoinbaseSimulator

TIMEOUT = 15
VENUE = "coinbase-exchange"
PRODUCTS = ("BTC-USD", "ETH-USD")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-x-") as path:
        yield path


def exchange_config(workdir: Path, sim: CoinbaseExchangeSimulator, *more: str,
                    products: tuple[str, ...] = PRODUCTS) -> Config:
    own = venue_section(VENUE, sim.ws_url, sim.rest_url, products)
    return load_text(workdir, FAST_FEED + own + "".join(more))


def trade_ids(records: list[MarketData], symbol: str) -> list[int]:
    return [int(r.trade_id or 0) for r in records if r.kind == "trade" and r.symbol == symbol]


async def test_trades_and_tickers_stream_beside_coinbase_advanced_trade(workdir: Path) -> None:
    sim, advanced = CoinbaseExchangeSimulator(speed=20.0), CoinbaseSimulator(speed=20.0)
    async with serving(sim, advanced):
        config = exchange_config(workdir, sim, venue_section("coinbase", advanced.ws_url, advanced.rest_url,
                                                             ("BTC-USD",)))
        async with running(config) as daemon:
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                seen: dict[tuple[str, str, str], MarketData] = {}
                pairs = [(VENUE, "BTC-USD"), (VENUE, "ETH-USD"), ("coinbase", "BTC-USD")]
                wanted = {(v, s, k) for v, s in pairs for k in ("trade", "ticker")}
                records = await client.until(
                    lambda r: bool(seen.setdefault((r.exchange, r.symbol, r.kind), r)) and wanted <= set(seen)
                )
            status = daemon.statuses[VENUE]
    trade, ticker = seen[VENUE, "BTC-USD", "trade"], seen[VENUE, "BTC-USD", "ticker"]
    assert trade.side in ("buy", "sell") and trade.trade_id and trade.volume > 0
    assert ticker.bid is not None and ticker.ask is not None and ticker.bid < ticker.ask
    assert ticker.high_24h is not None and ticker.low_24h is not None and ticker.change_24h is not None
    for product in PRODUCTS:  # every trade once, in order, none missing: the ids count on by one
        ids = trade_ids([r for r in records if r.exchange == VENUE], product)
        assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert status.sequence_gaps == 0 and status.decode_errors == 0
    assert sim.subscribe_timeouts == 0 and sim.rate_limit_closes == 0


async def test_trades_the_feed_drops_are_counted_as_sequence_gaps_and_fetched_back(workdir: Path) -> None:
    sim = CoinbaseExchangeSimulator(speed=20.0)
    async with serving(sim), running(exchange_config(workdir, sim, products=("BTC-USD",))) as daemon:
        status = daemon.statuses[VENUE]
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path, b'{"kind": ["trade"]}\n')
            before = await client.until(lambda r: True)
            sim.skip_trades(3, "BTC-USD")
            after = await client.until(lambda r: status.sequence_gaps > 0)
            after += await client.until(lambda r: True)
            while sum(r.backfilled for r in after) < 3:
                after += await client.until(lambda r: True)
            after += await client.until(lambda r: True)
    assert (status.sequence_gaps, status.messages_missed) == (1, 3)
    ids = trade_ids(before + after, "BTC-USD")
    jumps = [b - a for a, b in itertools.pairwise(ids) if b != a + 1]
    assert jumps == []  # the three left out are fetched from the REST (feedd.feed.backfill)
    assert sum(r.backfilled for r in before + after) == 3 and status.backfilled == 3
    assert status.reconnects == 0


async def test_a_product_coinbase_refuses_is_reported_while_the_rest_of_its_request_streams(
    workdir: Path,
) -> None:
    sim = CoinbaseExchangeSimulator(speed=20.0)
    async with serving(sim):
        products = ("BTC-USD", "BAD-USD")
        section = venue_section(VENUE, sim.ws_url, sim.rest_url, products, "check_symbols = false")
        async with running(load_text(workdir, FAST_FEED + section)) as daemon:
            supervisor = daemon.venues[VENUE]
            with trio.fail_after(TIMEOUT):
                await supervisor.ready.wait()
                for runner in supervisor.runners():
                    for reply in list(runner.replies.values()):
                        await reply.done.wait()  # every request is acknowledged or refused
                client = await Subscriber.connect(daemon.config.unix.path, b'{"kind": ["trade"]}\n')
                await client.until(lambda r: r.symbol == "BTC-USD")
            states = {(s.symbol, s.channel): supervisor.state_of(s) for s in supervisor.subscriptions()}
            errors = dict(daemon.statuses[VENUE].subscription_errors)
            [held] = [set(c.topics) for c in sim.connections]
    assert states == {
        ("BAD-USD", "trades"): "refused", ("BAD-USD", "ticker"): "refused",
        ("BTC-USD", "trades"): "active", ("BTC-USD", "ticker"): "active",
    }
    refusal = "Failed to subscribe: BAD-USD is not a valid product"
    assert errors == {"matches:BAD-USD": refusal, "ticker:BAD-USD": refusal}
    assert held == {"matches:BTC-USD", "ticker:BTC-USD", "heartbeat:BTC-USD"}
    assert sim.connections_accepted == 1  # a refusal never costs a reconnect


async def test_a_live_subscribe_is_acknowledged_and_a_live_unsubscribe_drops_its_heartbeat(
    workdir: Path,
) -> None:
    sim = CoinbaseExchangeSimulator(speed=20.0, products=("BTC-USD", "ETH-USD", "SOL-USD"))
    arrived = trio.Event()

    async def on_data(record: MarketData) -> None:
        if record.symbol == "SOL-USD":
            arrived.set()

    async with serving(sim):
        config = exchange_config(workdir, sim, products=("BTC-USD",))
        async with WebSocketService(config) as ws:
            with trio.fail_after(TIMEOUT):
                await ws.initialize()
                ws.add_data_callback(on_data)
                await ws.subscribe_to_symbol(VENUE, "SOL-USD")  # returns once the venue said yes
                await arrived.wait()
                [conn] = sim.connections
                assert {"matches:SOL-USD", "ticker:SOL-USD", "heartbeat:SOL-USD"} <= set(conn.topics)
                await ws.unsubscribe_from_symbol(VENUE, "SOL-USD")
                await sim.wait_until(lambda: not any("SOL-USD" in t for t in conn.topics))
            assert set(conn.topics) == {"matches:BTC-USD", "ticker:BTC-USD", "heartbeat:BTC-USD"}
            assert "SOL-USD" not in str(await ws.list_subscriptions())


async def test_a_quiet_product_is_kept_alive_by_its_heartbeat(
    autojump_clock: trio.testing.MockClock, workdir: Path
) -> None:
    # a product that never trades sends nothing but heartbeats: the feed is not stale
    sim = CoinbaseExchangeSimulator(products=(), quiet_products=("DOGE-USD",))
    async with serving(sim), running(exchange_config(workdir, sim, products=("DOGE-USD",))) as daemon:
        status = daemon.statuses[VENUE]
        with trio.fail_after(TIMEOUT * 10):
            await sim.wait_subscribed(["matches:DOGE-USD", "heartbeat:DOGE-USD"])
            await trio.sleep(5 * 5.0)  # five times FAST_FEED's stale_after, on the mock clock
    assert status.reconnects == 0 and sim.connections_accepted == 1
    assert status.records == 0 and status.messages >= 20  # heartbeats, a second each
