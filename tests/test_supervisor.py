"""The venue supervisor: subscriptions → wire topics → connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from feedd.config import ExchangeConfig
from feedd.connection import RunnerSettings
from feedd.exchanges.base import Subscription, Topic
from feedd.exchanges.binance import BinanceSpot
from feedd.supervisor import VenueSupervisor
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


def test_the_configured_quote_max_age_reaches_the_venue_and_a_reload_changes_it() -> None:
    send, _ = trio.open_memory_channel[list[object]](1)
    venue = BinanceSpot()
    supervisor = VenueSupervisor(
        venue,
        ExchangeConfig(check_symbols=False, quote_max_age=1.5),
        RunnerSettings(),
        cache_dir="/nonexistent",
        records=send,  # type: ignore[arg-type]
        open_transport=never_connects,
    )
    assert venue.quote_max_age == 1.5
    supervisor.reconfigure(ExchangeConfig(check_symbols=False, quote_max_age=3.0))
    assert venue.quote_max_age == 3.0
