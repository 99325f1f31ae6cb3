"""The venue supervisor: subscriptions → wire topics → connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from feedd.config import ExchangeConfig
from feedd.connection import RunnerSettings
from feedd.exchanges.base import Subscription, Topic, Venue
from feedd.exchanges.binance import BinanceSpot
from feedd.exchanges.coinbase import Coinbase
from feedd.supervisor import UnsupportedSymbol, VenueSupervisor
from feedd.transport import Transport


class SharedTopicVenue(BinanceSpot):
    """A venue whose ticker channel needs the trade stream too (as some exchanges' channels do)."""

    def topics(self, subscription: Subscription) -> list[Topic]:
        symbol = subscription.symbol.lower()
        if subscription.channel == "trades":
            return [Topic("", f"{symbol}@trade")]
        return [Topic("", f"{symbol}@trade"), Topic("", f"{symbol}@ticker")]


@asynccontextmanager
async def never_connects(url: str, *, connect_timeout: float) -> AsyncIterator[Transport]:
    await trio.sleep_forever()
    yield  # type: ignore[misc]  # pragma: no cover


async def test_a_topic_shared_by_two_subscriptions_stays_until_the_last_one_goes() -> None:
    send, _ = trio.open_memory_channel[list[object]](1)
    supervisor = VenueSupervisor(
        SharedTopicVenue(),
        ExchangeConfig(check_symbols=False),
        RunnerSettings(),
        cache_dir="/nonexistent",
        records=send,  # type: ignore[arg-type]
        open_transport=never_connects,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        supervisor.subscribe("BTCUSDT", ["trades", "ticker"])
        [runner] = supervisor._runners[""]
        assert runner.topics == {"btcusdt@trade", "btcusdt@ticker"}
        supervisor.unsubscribe("BTCUSDT", ["trades"])
        assert runner.topics == {"btcusdt@trade", "btcusdt@ticker"}  # the ticker still needs it
        supervisor.subscribe("BTCUSDT", ["trades"])
        supervisor.unsubscribe("BTCUSDT", ["ticker"])
        assert runner.topics == {"btcusdt@trade"}
        supervisor.unsubscribe("BTCUSDT", ["trades"])
        assert supervisor._runners[""] == []  # the last topic gone: the connection is closed
        nursery.cancel_scope.cancel()


def supervisor_of(venue: Venue) -> VenueSupervisor:
    send, _ = trio.open_memory_channel[list[object]](1)
    return VenueSupervisor(
        venue,
        ExchangeConfig(check_symbols=False),
        RunnerSettings(),
        cache_dir="/nonexistent",
        records=send,  # type: ignore[arg-type]
        open_transport=never_connects,
    )


async def test_connections_share_one_send_limiter_only_where_the_venue_limits_per_address() -> None:
    coinbase, binance = Coinbase(), BinanceSpot()
    coinbase.max_streams_per_connection = binance.max_streams_per_connection = 2
    per_address, per_connection = supervisor_of(coinbase), supervisor_of(binance)
    async with trio.open_nursery() as nursery:
        await nursery.start(per_address.run)
        await nursery.start(per_connection.run)
        for symbol in ("BTC-USD", "ETH-USD", "SOL-USD"):
            per_address.subscribe(symbol, ["trades", "ticker"])
        for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
            per_connection.subscribe(symbol, ["trades", "ticker"])
        nursery.cancel_scope.cancel()
    shared = [runner.send_limiter for runner in per_address.runners()]
    assert len(shared) == 3 and shared[0] is not None
    assert all(limiter is shared[0] for limiter in shared)  # 8 per second per IP, for all of them
    assert shared[0].limit == 7  # one kept free for control frames, as on every venue
    assert [runner.send_limiter for runner in per_connection.runners()] == [None] * 3  # their own


async def test_a_usdc_product_is_refused_even_unchecked_and_reported_in_the_status() -> None:
    supervisor = supervisor_of(Coinbase())  # check_symbols off: no instrument list to ask
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        with pytest.raises(UnsupportedSymbol, match=r"^coinbase: BTC-USDC .*subscribe BTC-USD instead"):
            supervisor.subscribe("btc-usdc", ["trades", "ticker"])
        with pytest.raises(UnsupportedSymbol, match="subscribe ETH-USD instead"):  # a live API call
            await supervisor.subscribe_confirmed("ETH-USDC", ["trades"], trio.current_time() + 1)
        assert supervisor.subscribe("USDT-USDC", ["trades"])  # documented to stream as itself
        nursery.cancel_scope.cancel()
    assert [s.symbol for s in supervisor.subscriptions()] == ["USDT-USDC"]
    assert "subscribe BTC-USD instead" in supervisor.status.subscription_errors["BTC-USDC"]
