"""The ``quotes`` channel end to end: every venue id of every simulator found, from the simulator's
wire to a socket subscriber, with sizes and times; a venue without quotes says so.

On trio's mock clock (``autojump_clock``), as the fault suite runs: the simulators pace their
tapes on virtual time, real sockets carry every byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir

from feedd.config import ConfigError
from feedd.exchanges import registry as venues
from feedd.exchanges.base import Subscription
from feedd.model import MarketData
from feedd.sim import registry as simulators
from feedd.sim.spec import SimSpec

#: every (simulator spec, venue id) the simulator modules declare
SERVED = [(spec, venue_id) for spec in simulators().values() for venue_id in spec.venue_ids]
IDS = [venue_id for _, venue_id in SERVED]


def has_quotes(venue_id: str) -> bool:
    try:
        venues()[venue_id]().topics(Subscription("X", "quotes"))
    except ValueError:
        return False
    return True


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-q-") as path:
        yield path


@pytest.mark.parametrize(("spec", "venue_id"), SERVED, ids=IDS)
async def test_quotes_stream_with_sizes_mid_price_and_no_ticker_of_their_own(
    autojump_clock: trio.testing.MockClock, workdir: Path, spec: SimSpec, venue_id: str
) -> None:
    group = next(g for g in spec.groups if venue_id in g)
    sim = spec.make(group, spec.speed)
    async with serving(sim):
        text = FAST_FEED + spec.config_section(venue_id, sim, None, 'channels = ["quotes"]')
        if not has_quotes(venue_id):
            with pytest.raises(ConfigError, match=f"{venue_id} does not support 'quotes'"):
                load_text(workdir, text)
            return
        async with running(load_text(workdir, text)):
            sub = await Subscriber.connect(str(workdir / "feedd.sock"))
            with trio.fail_after(600):
                seen: list[MarketData] = []
                while len(seen) < 20:
                    seen.append(await sub.record())
    assert {r.kind for r in seen} == {"quote"}  # quotes alone: no ticker, no trade
    assert {r.symbol for r in seen} <= set(spec.symbols[venue_id])
    for record in seen:
        assert record.exchange == venue_id
        assert record.bid is not None and record.ask is not None
        assert record.bid_size is not None and record.bid_size > 0
        assert record.ask_size is not None and record.ask_size > 0
        assert record.price == (record.bid + record.ask) / 2
        assert record.volume == 0
        assert abs((record.timestamp - record.received_at).total_seconds()) < 60


@pytest.mark.parametrize(("spec", "venue_id"), [s for s in SERVED if has_quotes(s[1])], ids=[
    v for _, v in SERVED if has_quotes(v)
])
async def test_conflated_quotes_are_at_most_one_per_symbol_per_interval(
    autojump_clock: trio.testing.MockClock, workdir: Path, spec: SimSpec, venue_id: str
) -> None:
    group = next(g for g in spec.groups if venue_id in g)
    sim = spec.make(group, spec.speed * 10)
    interval = 1.0
    async with serving(sim):
        text = FAST_FEED + spec.config_section(
            venue_id, sim, None, 'channels = ["quotes"]', f"conflate = {interval}"
        )
        async with running(load_text(workdir, text)):
            sub = await Subscriber.connect(str(workdir / "feedd.sock"))
            arrivals: list[tuple[float, MarketData]] = []
            with trio.fail_after(600):
                while len(arrivals) < 12:
                    record = await sub.record()
                    arrivals.append((trio.current_time(), record))
    # the flush task sends once per interval: records of one symbol come at least an interval
    # apart (one batch per flush; the socket may split a batch over reads within an instant)
    last: dict[str, float] = {}
    for at, record in arrivals:
        assert record.kind == "quote"
        previous = last.get(record.symbol)
        if previous is not None:
            assert at - previous >= interval * 0.99, (record.symbol, at, previous)
        last[record.symbol] = at
