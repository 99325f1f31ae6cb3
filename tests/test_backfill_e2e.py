"""No trade lost across a gap, end to end against the simulators of the venues whose trade ids
are consecutive (Binance spot ``@trade`` ids, USD-M and COIN-M ``@aggTrade`` ids, Coinbase
Exchange ``trade_id``): trades the stream skips and trades made while the connection is down
reach a socket subscriber exactly once, in id order, the missed ones flagged ``backfilled``; a
REST endpoint that is down gives ``lost`` and never stalls the symbol beyond the hold bound. The
venues recovered by time (Bybit, OKX, Coinbase Advanced Trade) get what their REST keeps of a
break, each trade once and in the exchange's order (their simulators' tapes say which).

On trio's mock clock (``autojump_clock``), as the fault suite runs: the simulators pace their
tapes on virtual time, real sockets carry every byte.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd.model import MarketData
from feedd.sim import BinanceSimulator
from feedd.sim.binance_coinm import BinanceCoinmSimulator
from feedd.sim.bybit import BybitSimulator
from feedd.sim.coinbase import CoinbaseSimulator
from feedd.sim.coinbase_exchange import CoinbaseExchangeSimulator
from feedd.sim.okx import OkxSimulator

TIMEOUT = 600  # virtual seconds


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-b-") as path:
        yield path


#: the venues whose trade ids are consecutive: each one's simulator and the symbol streamed
ID_VENUES = ["binance", "binance-usdm", "binance-coinm", "coinbase-exchange"]
SYMBOL = {"binance": "BTCUSDT", "binance-usdm": "BTCUSDT", "binance-coinm": "BTCUSD_PERP",
          "coinbase-exchange": "BTC-USD"}

IdSimulator = BinanceSimulator | CoinbaseExchangeSimulator


def simulator(venue: str) -> IdSimulator:
    if venue == "coinbase-exchange":
        return CoinbaseExchangeSimulator(products=["BTC-USD"], speed=5.0)
    if venue == "binance-coinm":
        return BinanceCoinmSimulator(speed=5.0)
    return BinanceSimulator(futures=venue != "binance", speed=5.0)


def skip(sim: IdSimulator, venue: str, count: int) -> None:
    """Leave the next ``count`` trades of the venue's symbol out of its stream."""
    if isinstance(sim, CoinbaseExchangeSimulator):
        sim.skip_trades(count, SYMBOL[venue])
    else:
        sim.skip_trades(SYMBOL[venue], count)


def config_text(sim: IdSimulator, venue: str, *extra: str) -> str:
    url = sim.url("/market/stream") if venue == "binance-usdm" else sim.ws_url
    return FAST_FEED + "\n".join(extra) + venue_section(
        venue, url, sim.rest_url, (SYMBOL[venue],), 'channels = ["trades"]'
    )


async def trades_until(sub: Subscriber, count: int) -> list[MarketData]:
    seen: list[MarketData] = []
    with trio.fail_after(TIMEOUT):
        while len(seen) < count:
            record = await sub.record()
            if record.kind == "trade":
                seen.append(record)
    return seen


def assert_consecutive(trades: list[MarketData]) -> None:
    ids = [int(t.trade_id or 0) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a trade missing, twice, or out of order"


def backfills(sub: Subscriber) -> list[dict[str, Any]]:
    return [n for n in sub.notices if n["type"] == "backfill"]


@pytest.mark.parametrize("venue", ID_VENUES)
async def test_trades_the_stream_skips_are_fetched_and_delivered_in_order_once(
    autojump_clock: trio.testing.MockClock, workdir: Path, venue: str
) -> None:
    sim = simulator(venue)
    async with serving(sim), running(load_text(workdir, config_text(sim, venue))):
        sub = await Subscriber.connect(str(workdir / "feedd.sock"))
        before = await trades_until(sub, 20)
        skip(sim, venue, 7)
        after = await trades_until(sub, 40)
    trades = before + after
    assert_consecutive(trades)
    flagged = [t for t in trades if t.backfilled]
    assert len(flagged) == 7
    [event] = backfills(sub)
    got = (event["exchange"], event["symbols"], event["recovered"], event["lost"])
    assert got == (venue, [SYMBOL[venue]], 7, 0)
    live = [t for t in trades if not t.backfilled]
    # a recovered trade is the same record as a live one would be: sizes in base units
    assert min(t.volume for t in flagged) > 0 and max(t.volume for t in flagged) < 10 * max(
        t.volume for t in live)
    first, last = event["missing"]
    assert [int(t.trade_id or 0) for t in flagged] == list(range(first, last + 1))
    assert event["late"] is False


@pytest.mark.parametrize("venue", ID_VENUES)
async def test_trades_made_while_the_connection_is_down_are_recovered_after_the_reconnect(
    autojump_clock: trio.testing.MockClock, workdir: Path, venue: str
) -> None:
    sim = simulator(venue)
    async with serving(sim):
        sim.keep_trading()  # the tape goes on while no connection is up
        async with running(load_text(workdir, config_text(sim, venue))) as service:
            sub = await Subscriber.connect(str(workdir / "feedd.sock"))
            before = await trades_until(sub, 10)
            sim.refuse_connections(3)
            sim.drop_connections()
            after = await trades_until(sub, 20)
            while not backfills(sub) or sum(t.backfilled for t in after) < backfills(sub)[0]["recovered"]:
                after += await trades_until(sub, 1)
            after += await trades_until(sub, 10)  # and the live ones go on after them
            status = service.statuses[venue]
    trades = before + after
    assert_consecutive(trades)
    recovered = sum(1 for t in trades if t.backfilled)
    assert recovered > 0  # the reconnect took a few backoff steps: trades were made meanwhile
    assert [n["type"] for n in sub.notices][:2] == ["disconnect", "reconnect"]
    events = backfills(sub)
    assert sum(e["recovered"] for e in events) == recovered
    assert sum(e["lost"] for e in events) == 0
    assert status.backfilled == recovered and status.lost_trades == 0


@pytest.mark.parametrize("venue", ["binance", "coinbase-exchange"])
async def test_a_rest_outage_loses_the_gap_names_it_and_the_symbol_streams_on(
    autojump_clock: trio.testing.MockClock, workdir: Path, venue: str
) -> None:
    sim = simulator(venue)
    async with serving(sim), running(load_text(workdir, config_text(sim, venue))) as service:
        sub = await Subscriber.connect(str(workdir / "feedd.sock"))
        before = await trades_until(sub, 10)
        sim.rest_fail(True)
        skip(sim, venue, 5)
        started = trio.current_time()
        after = await trades_until(sub, 30)
        waited = trio.current_time() - started
        status = service.statuses[venue]
    assert not any(t.backfilled for t in before + after)
    ids = [int(t.trade_id or 0) for t in before + after]
    steps = [later - earlier for earlier, later in itertools.pairwise(ids)]
    assert steps.count(6) == 1 and set(steps) == {1, 6}  # the five skipped ones are missing, nothing else
    if venue == "binance":  # one trade a frame: the skip begins right after the tenth
        assert ids[10] == ids[9] + 6
    [event] = backfills(sub)
    assert (event["recovered"], event["lost"]) == (0, 5)
    assert event["reason"].startswith("REST refused: HTTP 503")
    assert status.lost_trades == 5
    assert waited < 60  # held at most for backfill_hold, then the live trades went on


async def test_backfill_off_reports_the_gap_as_lost_without_asking_the_rest(
    autojump_clock: trio.testing.MockClock, workdir: Path
) -> None:
    sim = BinanceSimulator(speed=5.0)
    async with serving(sim):
        text = config_text(sim, "binance").replace("[feed]\n", "[feed]\nbackfill_max = 0\n", 1)
        async with running(load_text(workdir, text)) as service:
            sub = await Subscriber.connect(str(workdir / "feedd.sock"))
            await trades_until(sub, 10)
            sim.rest_fail(True)  # asked anyway, it would answer 503: the reason says it was not
            sim.skip_trades("BTCUSDT", 3)
            await trades_until(sub, 10)
            lost = service.statuses["binance"].lost_trades
    [event] = backfills(sub)
    assert (event["recovered"], event["lost"]) == (0, 3)
    assert "backfill_max = 0" in event["reason"]
    assert lost == 3


# ---- venues recovered by time (ids unique, not consecutive) ------------------------------------

#: each one's simulator, symbol, and the REST's trade ids of that symbol (its tape, oldest first)
TIME_VENUES = ["bybit", "bybit-linear", "okx", "coinbase"]
TIME_SYMBOL = {"bybit": "BTCUSDT", "bybit-linear": "BTCUSDT", "okx": "BTC-USDT", "coinbase": "BTC-USD"}
TimeSimulator = BybitSimulator | OkxSimulator | CoinbaseSimulator


def time_simulator(venue: str) -> TimeSimulator:
    if venue == "okx":
        return OkxSimulator(instruments=["BTC-USDT"], speed=5.0)
    if venue == "coinbase":
        return CoinbaseSimulator(products=["BTC-USD"], speed=5.0)
    return BybitSimulator(category="spot" if venue == "bybit" else "linear", speed=5.0)


def tape_ids(sim: TimeSimulator, venue: str) -> list[str]:
    """Every trade id the simulator made for the venue's symbol, in exchange order."""
    symbol = TIME_SYMBOL[venue]
    if isinstance(sim, OkxSimulator):
        return [row["tradeId"] for row in sim.instruments[symbol].history]
    if isinstance(sim, CoinbaseSimulator):
        return [trade["trade_id"] for trade in sim.market(symbol).history]
    category = "spot" if venue == "bybit" else "linear"
    return [trade["i"] for trade in sim.market(category, symbol).history]


def time_config(sim: TimeSimulator, venue: str) -> str:
    url = sim.ws_url
    if isinstance(sim, BybitSimulator):
        url = sim.endpoint("spot" if venue == "bybit" else "linear")
    return FAST_FEED + venue_section(venue, url, sim.rest_url, (TIME_SYMBOL[venue],), 'channels = ["trades"]')


def assert_exchange_order_once(trades: list[MarketData], tape: list[str], *, whole: bool) -> None:
    """Each trade once, in the tape's order; ``whole``: none of the tape's between the first and
    the last one seen is missing."""
    ids = [t.trade_id or "" for t in trades]
    assert len(set(ids)) == len(ids), "a trade delivered twice"
    where = {trade_id: index for index, trade_id in enumerate(tape)}
    places = [where[trade_id] for trade_id in ids]
    assert places == sorted(places), "trades out of exchange order"
    if whole:
        assert places == list(range(places[0], places[0] + len(places))), "a trade missing"


async def trades_after_backfill(sub: Subscriber, more: int) -> list[MarketData]:
    """Trades until a backfill event came and every trade it recovered, then ``more``."""
    seen: list[MarketData] = []
    while not backfills(sub) or sum(t.backfilled for t in seen) < backfills(sub)[0]["recovered"]:
        seen += await trades_until(sub, 1)
    return seen + await trades_until(sub, more)


@pytest.mark.parametrize("venue", TIME_VENUES)
async def test_trades_made_while_a_time_venue_is_disconnected_are_recovered_once_in_exchange_order(
    autojump_clock: trio.testing.MockClock, workdir: Path, venue: str
) -> None:
    sim = time_simulator(venue)
    async with serving(sim):
        sim.keep_trading()  # the tape goes on while no connection is up
        async with running(load_text(workdir, time_config(sim, venue))) as service:
            sub = await Subscriber.connect(str(workdir / "feedd.sock"))
            before = await trades_until(sub, 10)
            sim.refuse_connections(3)
            sim.drop_connections()
            after = await trades_after_backfill(sub, 10)
            status = service.statuses[venue]
    [event] = backfills(sub)
    assert event["exchange"] == venue and event["symbols"] == [TIME_SYMBOL[venue]]
    assert event["lost"] == 0 and event["missing"] == [0, 0]
    # a whole recovery, or the REST kept too few (Bybit spot: 60) and the event says so
    whole = event["reason"] is None
    assert whole or "latest" in event["reason"]
    trades = before + after
    assert_exchange_order_once(trades, tape_ids(sim, venue), whole=whole)
    recovered = sum(t.backfilled for t in trades)
    assert recovered == event["recovered"] > 0 and status.backfilled == recovered
    assert [n["type"] for n in sub.notices][:2] == ["disconnect", "reconnect"]


async def test_coinbase_messages_its_stream_drops_are_fetched_back_in_order(
    autojump_clock: trio.testing.MockClock, workdir: Path
) -> None:
    sim = CoinbaseSimulator(products=["BTC-USD"], speed=5.0)
    async with serving(sim), running(load_text(workdir, time_config(sim, "coinbase"))) as service:
        sub = await Subscriber.connect(str(workdir / "feedd.sock"))
        before = await trades_until(sub, 10)
        sim.drop_trade_messages(2)  # sequence_num skips: the connection says something was lost
        after = await trades_after_backfill(sub, 10)
        status = service.statuses["coinbase"]
    assert status.sequence_gaps >= 1 and status.reconnects == 0
    trades = before + after
    assert_exchange_order_once(trades, tape_ids(sim, "coinbase"), whole=True)
    [event] = backfills(sub)
    assert event["recovered"] == sum(t.backfilled for t in trades) > 0 and event["reason"] is None


@pytest.mark.parametrize("venue", ["bybit-linear", "okx"])
async def test_a_time_venue_whose_rest_is_down_streams_on_after_the_hold_and_says_why(
    autojump_clock: trio.testing.MockClock, workdir: Path, venue: str
) -> None:
    sim = time_simulator(venue)
    async with serving(sim):
        sim.keep_trading()
        async with running(load_text(workdir, time_config(sim, venue))) as service:
            sub = await Subscriber.connect(str(workdir / "feedd.sock"))
            before = await trades_until(sub, 10)
            sim.rest_fail(True)
            sim.refuse_connections(3)
            sim.drop_connections()
            started = trio.current_time()
            after = await trades_until(sub, 20)
            waited = trio.current_time() - started
            status = service.statuses[venue]
    assert not any(t.backfilled for t in before + after)
    assert_exchange_order_once(before + after, tape_ids(sim, venue), whole=False)
    [event] = backfills(sub)
    assert event["recovered"] == 0 and event["reason"].startswith("REST refused: HTTP 503")
    assert status.backfilled == 0
    assert waited < 60  # held at most for backfill_hold, then the live trades went on
