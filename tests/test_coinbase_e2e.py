"""End to end with Coinbase: simulators → daemon → Unix-socket subscribers, beside Binance and Bybit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd.config import Config
from feedd.exchanges.coinbase import Coinbase
from feedd.model import MarketData
from feedd.sim import BinanceSimulator, BybitSimulator, CoinbaseSimulator

TIMEOUT = 15
PRODUCTS = ("BTC-USD", "ETH-USD")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-c-") as path:
        yield path


def coinbase_config(workdir: Path, coinbase: CoinbaseSimulator, *more: str) -> Config:
    own = venue_section("coinbase", coinbase.ws_url, coinbase.rest_url, PRODUCTS)
    return load_text(workdir, FAST_FEED + own + "".join(more))


def no_duplicate_trades(records: list[MarketData]) -> None:
    ids = [(r.symbol, r.trade_id) for r in records if r.kind == "trade"]
    assert len(ids) == len(set(ids)), "a trade was published twice"


async def test_coinbase_streams_beside_binance_and_bybit_through_the_unix_socket(workdir: Path) -> None:
    coinbase = CoinbaseSimulator(speed=20.0)
    bybit = BybitSimulator(speed=20.0)
    spot, futures = BinanceSimulator(speed=20.0), BinanceSimulator(futures=True, speed=20.0)
    async with serving(coinbase, bybit, spot, futures):
        config = coinbase_config(
            workdir, coinbase,
            venue_section("binance", spot.ws_url, spot.rest_url, ("BTCUSDT",)),
            venue_section("binance-usdm", futures.ws_url, futures.rest_url, ("BTCUSDT",)),
            venue_section("bybit", bybit.endpoint("spot"), bybit.rest_url, ("BTCUSDT",)),
            venue_section("bybit-linear", bybit.endpoint("linear"), bybit.rest_url, ("BTCUSDT",)),
            venue_section("bybit-inverse", bybit.endpoint("inverse"), bybit.rest_url, ("BTCUSD",)),
        )
        async with running(config) as daemon:
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                seen: dict[tuple[str, str], MarketData] = {}
                wanted = {(venue, kind) for venue in daemon.venues for kind in ("trade", "ticker")}
                records = await client.until(
                    lambda r: bool(seen.setdefault((r.exchange, r.kind), r)) and wanted <= set(seen)
                )
    trade, ticker = seen["coinbase", "trade"], seen["coinbase", "ticker"]
    assert trade.symbol in PRODUCTS and trade.side in ("buy", "sell") and trade.trade_id
    assert ticker.bid is not None and ticker.ask is not None and ticker.bid <= ticker.ask
    assert ticker.high_24h is not None and ticker.change_24h is not None
    no_duplicate_trades([r for r in records if r.exchange == "coinbase"])
    assert coinbase.subscribe_timeouts == 0  # subscribed well within Coinbase's 5 s


async def test_no_coinbase_trade_is_published_twice_across_a_reconnect(workdir: Path) -> None:
    coinbase = CoinbaseSimulator(speed=20.0)
    async with serving(coinbase), running(coinbase_config(workdir, coinbase)) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path, b'{"kind": ["trade"]}\n')
            before = await client.until(lambda r: r.symbol == "BTC-USD")
            # the new connection's first updates repeat the last trades the old one was sent
            coinbase.overlap_trades(10)
            coinbase.drop_connections()
            await coinbase.wait_until(lambda: {p for p, _ in coinbase.trades_repeated} == set(PRODUCTS))
            last_repeated = {p: max(int(i) for q, i in coinbase.trades_repeated if q == p) for p in PRODUCTS}
            past: set[str] = set()

            def beyond_the_repeats(record: MarketData) -> bool:
                # a trade newer than the repeated ones: each product's repeats are behind it
                if int(record.trade_id or 0) > last_repeated[record.symbol]:
                    past.add(record.symbol)
                return past == set(PRODUCTS)

            after = await client.until(beyond_the_repeats)
    assert {(r.symbol, r.trade_id) for r in before} & set(coinbase.trades_repeated)  # work to do
    no_duplicate_trades(before + after)
    assert daemon.statuses["coinbase"].reconnects >= 1


async def test_a_sequence_gap_is_counted_in_the_status(workdir: Path) -> None:
    coinbase = CoinbaseSimulator(speed=20.0)
    async with serving(coinbase), running(coinbase_config(workdir, coinbase)) as daemon:
        status = daemon.statuses["coinbase"]
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            await client.record()
            coinbase.skip_sequence(5)
            while status.sequence_gaps == 0:
                await client.record()
    assert status.sequence_gaps == 1
    assert status.messages_missed == 5


async def test_coinbase_connections_share_the_per_ip_message_limit_so_none_is_closed_for_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one connection per product: four connections subscribe at once, three messages each, 12
    # in all against Coinbase's 8 per second per IP address
    monkeypatch.setattr(Coinbase, "max_streams_per_connection", 2)
    products = ("BTC-USD", "ETH-USD", "SOL-USD", "LTC-USD")
    coinbase = CoinbaseSimulator(products=products[:2], quiet_products=products[2:])
    async with serving(coinbase):
        section = venue_section("coinbase", coinbase.ws_url, coinbase.rest_url, products)
        async with running(load_text(workdir, FAST_FEED + section)):

            def settled() -> bool:
                held = sum(len(c.topics) for c in coinbase.connections)
                return coinbase.rate_limit_closes > 0 or held == 3 * len(products)

            with trio.fail_after(TIMEOUT):
                await coinbase.wait_until(settled)
    assert coinbase.rate_limit_closes == 0
    assert coinbase.connections_accepted == len(products)  # and no reconnect


async def test_a_product_coinbase_refuses_is_reported_while_the_rest_of_its_requests_streams(
    workdir: Path,
) -> None:
    # each channel's subscribe holds BTC-USD and BAD-USD; Coinbase fails both with an error alone
    coinbase = CoinbaseSimulator(speed=20.0)
    async with serving(coinbase):
        section = venue_section("coinbase", coinbase.ws_url, coinbase.rest_url, ("BTC-USD", "BAD-USD"),
                                "check_symbols = false")
        async with running(load_text(workdir, FAST_FEED + section)) as daemon:
            supervisor = daemon.venues["coinbase"]
            with trio.fail_after(TIMEOUT):
                await supervisor.ready.wait()
                for runner in supervisor.runners():
                    for reply in list(runner.replies.values()):
                        await reply.done.wait()  # every request is acknowledged or refused
                client = await Subscriber.connect(daemon.config.unix.path, b'{"kind": ["trade"]}\n')
                await client.until(lambda r: r.symbol == "BTC-USD")
            states = {(s.symbol, s.channel): supervisor.state_of(s) for s in supervisor.subscriptions()}
            errors = dict(daemon.statuses["coinbase"].subscription_errors)
            [held] = [set(c.topics) for c in coinbase.connections]
    assert states == {
        ("BAD-USD", "trades"): "refused", ("BAD-USD", "ticker"): "refused",
        ("BTC-USD", "trades"): "active", ("BTC-USD", "ticker"): "active",
    }
    refusal = "Failed to subscribe: BAD-USD is not a valid product"
    assert errors == {"market_trades:BAD-USD": refusal, "ticker:BAD-USD": refusal}  # no heartbeats
    assert held == {"market_trades:BTC-USD", "ticker:BTC-USD", "heartbeats"}
    assert coinbase.connections_accepted == 1  # a refusal never costs a reconnect
