"""The venue supervisor: subscriptions → wire topics → connections."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from feedd.config import MAX_SYMBOL_LENGTH, ExchangeConfig
from feedd.errors import UnsupportedSymbol
from feedd.exchanges.base import CHANNELS, Subscription, Topic, Venue, topic_list_chars
from feedd.exchanges.binance import BinanceSpot
from feedd.exchanges.bybit import BybitLinear, BybitSession
from feedd.exchanges.coinbase import Coinbase
from feedd.feed.runner import RunnerSettings
from feedd.feed.supervisor import VenueSupervisor
from feedd.sim.bybit import BybitProtocol
from feedd.sim.protocol import Accept
from feedd.wire.transport import Transport


class SharedTopicVenue(BinanceSpot):
    """A venue whose ticker channel needs the trade stream too (as some exchanges' channels do)."""

    def topics(self, subscription: Subscription) -> list[Topic]:
        symbol = subscription.symbol.lower()
        if subscription.channel == "trades":
            return [Topic("", f"{symbol}@trade")]
        return [Topic("", f"{symbol}@trade"), Topic("", f"{symbol}@ticker")]


class BudgetVenue(BinanceSpot):
    """A venue that bounds a connection by the characters of its topic list, not by their count."""

    max_streams_per_connection = 1000
    max_chars_per_connection = 60


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
        [runner] = supervisor.placement.shards("")
        assert runner.topics == {"btcusdt@trade", "btcusdt@ticker"}
        supervisor.unsubscribe("BTCUSDT", ["trades"])
        assert runner.topics == {"btcusdt@trade", "btcusdt@ticker"}  # the ticker still needs it
        supervisor.subscribe("BTCUSDT", ["trades"])
        supervisor.unsubscribe("BTCUSDT", ["ticker"])
        assert runner.topics == {"btcusdt@trade"}
        supervisor.unsubscribe("BTCUSDT", ["trades"])
        assert supervisor.placement.shards("") == []  # the last topic gone: the connection is closed
        nursery.cancel_scope.cancel()


def offline_supervisor(venue: Venue, config: ExchangeConfig | None = None) -> VenueSupervisor:
    send, _ = trio.open_memory_channel[list[object]](1)
    return VenueSupervisor(
        venue,
        config or ExchangeConfig(check_symbols=False),
        RunnerSettings(),
        cache_dir="/nonexistent",
        records=send,  # type: ignore[arg-type]
        open_transport=never_connects,
    )


def test_topic_list_chars_is_the_length_of_the_compact_json_array() -> None:
    for names in (["a"], ["btcusdt@trade", "btcusdt@ticker"], ['q"uote', "back\\slash", "ünï"]):
        assert topic_list_chars(names) == len(json.dumps(names, separators=(",", ":"), ensure_ascii=False))
    assert topic_list_chars([]) == 2


async def test_a_connection_takes_topics_until_its_character_budget_is_spent() -> None:
    supervisor = offline_supervisor(BudgetVenue())
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        for symbol in ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT"):
            supervisor.subscribe(symbol, ["trades"])  # "aaausdt@trade": 15 characters quoted
        # ["aaausdt@trade","bbbusdt@trade","cccusdt@trade"] is 49; a fourth would make it 65
        shards = supervisor.placement.shards("")
        assert [sorted(r.topics) for r in shards] == [
            ["aaausdt@trade", "bbbusdt@trade", "cccusdt@trade"],
            ["dddusdt@trade", "eeeusdt@trade"],
        ]
        # what an unsubscribe frees is taken again
        supervisor.unsubscribe("BBBUSDT", ["trades"])
        supervisor.subscribe("FFFUSDT", ["trades"])
        assert sorted(shards[0].topics) == ["aaausdt@trade", "cccusdt@trade", "fffusdt@trade"]
        assert all(topic_list_chars(r.topics) <= 60 for r in shards)
        nursery.cancel_scope.cancel()


async def test_bybit_topics_of_the_longest_symbols_are_sharded_within_the_args_budget() -> None:
    """400 topics of 64-character symbols take over 29,000 characters of args: more than Bybit
    allows on one connection, though fewer topics than the topic count cap."""
    venue = BybitLinear()
    symbols = [f"{i:03d}".ljust(MAX_SYMBOL_LENGTH, "X") for i in range(200)]
    supervisor = offline_supervisor(venue)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        for symbol in symbols:
            supervisor.subscribe(symbol, CHANNELS)
        shards = supervisor.runners()
        nursery.cancel_scope.cancel()
    wanted = {t.name for s in symbols for c in CHANNELS for t in venue.topics(Subscription(s, c))}
    assert set().union(*(r.topics for r in shards)) == wanted
    assert sum(len(r.topics) for r in shards) == len(wanted) == 400
    assert all(topic_list_chars(r.topics) <= 21_000 for r in shards)
    assert len(shards) == 2
    # and the simulator, which counts a connection's args, accepts every shard whole
    protocol = BybitProtocol(symbols={"linear": symbols})
    for runner in shards:
        opened = protocol.open("/v5/public/linear", "")
        assert isinstance(opened, Accept)
        session = venue.new_session()
        assert isinstance(session, BybitSession)
        for request in session.subscribe(sorted(runner.topics)):
            [answer] = protocol.receive(opened.connection, str(request)).frames
            assert json.loads(answer)["success"] is True, answer
        assert set(opened.connection.topics) == runner.topics


def test_the_configured_quote_max_age_reaches_the_venue_and_a_reload_changes_it() -> None:
    venue = BinanceSpot()
    supervisor = offline_supervisor(venue, ExchangeConfig(check_symbols=False, quote_max_age=1.5))
    assert venue.quote_max_age == 1.5
    supervisor.reconfigure(ExchangeConfig(check_symbols=False, quote_max_age=3.0))
    assert venue.quote_max_age == 3.0


async def test_connections_share_one_send_limiter_only_where_the_venue_limits_per_address() -> None:
    coinbase, binance = Coinbase(), BinanceSpot()
    coinbase.max_streams_per_connection = binance.max_streams_per_connection = 2
    per_address, per_connection = offline_supervisor(coinbase), offline_supervisor(binance)
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
    supervisor = offline_supervisor(Coinbase())  # check_symbols off: no instrument list to ask
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


@pytest.mark.parametrize(
    ("venue", "configured", "expected"),
    [
        (BinanceSpot(), None, 23.5 * 3600),  # before Binance's documented 24 h cut
        (Coinbase(), None, None),  # no lifetime documented: only shutdown notices rotate
        (BinanceSpot(), 0.0, None),  # 0: never
        (Coinbase(), 3600.0, 3600.0),
    ],
)
def test_rotate_after_is_the_configured_lifetime_else_the_venue_s(
    venue: Venue, configured: float | None, expected: float | None
) -> None:
    supervisor = offline_supervisor(venue, ExchangeConfig(check_symbols=False, rotate_after=configured))
    assert supervisor.rotate_after == expected


def test_shards_of_a_venue_rotate_a_minute_apart_and_all_before_the_24_hour_cut() -> None:
    supervisor = offline_supervisor(BinanceSpot())
    offsets = [supervisor._rotate_offset(n) for n in range(1, 41)]
    assert offsets[:3] == [0.0, 60.0, 120.0]
    assert len(set(offsets[:20])) == 20
    assert max(offsets) < 1200  # 23 h 30 min + 20 min < 24 h
    short = offline_supervisor(BinanceSpot(), ExchangeConfig(check_symbols=False, rotate_after=16.0))
    assert [short._rotate_offset(n) for n in range(1, 4)] == [0.0, 1.0, 2.0]
