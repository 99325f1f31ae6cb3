"""What subscribers are told: a lost connection is a disconnect and a reconnect line naming its
symbols, a filtered subscriber hears only of its own symbols, and a busy
feed that goes silent while its heartbeats go on is a stall, found and announced like a close."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from faultharness import (
    SPECS,
    STALE_AFTER,
    SYMBOLS,
    VENUES,
    Feed,
    Tape,
    others_untouched,
    running_feed,
    venue_lines,
)

from feedd.sim.faults import Fault, FaultSchedule

TIMEOUT = 600  # virtual seconds: the clock jumps
#: tape speeds at which a venue's feed is busy (never silent for a third of stale_after), where
#: its simulator's own speed is not enough; the other venues keep the harness's speeds
BUSY = {"binance": 1.0, "bybit": 20.0, "coinbase": 5.0}


async def play(feed: Feed, venue: str, kind: str, **params: object) -> None:
    await feed.nursery.start(FaultSchedule([Fault(0.0, kind, params)]).play, feed.sims[venue])


def events(tape: Tape, venue: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(n["type"], tuple(n["symbols"])) for n in tape.notices
            if n.get("exchange") == venue and n["type"] in ("disconnect", "reconnect")]


@pytest.mark.parametrize("venue", VENUES)
async def test_a_lost_connection_is_announced_to_every_subscriber_for_its_own_symbols(
    autojump_clock: trio.testing.MockClock, venue: str
) -> None:
    own = SYMBOLS[venue][1]
    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            filtered = await feed.subscriber(filter_line=f'{{"symbol": ["{own}"]}}\n'.encode())
            await feed.flowing()
            await play(feed, venue, "abrupt_close")
            await feed.tape.wait_until(lambda: len(events(feed.tape, venue)) == 2)
            await feed.tape.more(venue)
            await filtered.wait_until(lambda: len(events(filtered, venue)) == 2)
    symbols = tuple(sorted(SYMBOLS[venue]))
    assert events(feed.tape, venue) == [("disconnect", symbols), ("reconnect", symbols)]
    assert events(filtered, venue) == [("disconnect", (own,)), ("reconnect", (own,))]
    down, up = (n for n in feed.tape.notices if n.get("exchange") == venue)
    assert down["reason"] == "connection closed without a close frame"
    assert up["gap_seconds"] >= 0
    for other in VENUES:
        if other != venue:
            assert not feed.tape.holes(other), other  # the other venues lost nothing


@pytest.mark.parametrize("venue", VENUES)
async def test_a_busy_feed_that_goes_silent_while_its_heartbeats_go_on_is_a_stall(
    autojump_clock: trio.testing.MockClock, venue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Pongs, the idle probe's answers, Coinbase's heartbeats all keep coming: for a feed that
    delivered every second, that is no quiet market but a stall."""
    async with running_feed(speeds={venue: BUSY.get(venue, SPECS[venue].speed)}) as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            await trio.sleep(2 * STALE_AFTER)  # long enough to be known as busy
            before = {v: feed.status(v).reconnects for v in VENUES}
            caplog.clear()
            await play(feed, venue, "heartbeat_only", duration=STALE_AFTER * 1.5)
            await feed.tape.wait_until(lambda: len(events(feed.tape, venue)) == 2)
            await feed.tape.more(venue)
    assert feed.status(venue).reconnects == before[venue] + 1
    assert [kind for kind, _ in events(feed.tape, venue)] == ["disconnect", "reconnect"]
    [line] = venue_lines(caplog.records, venue)
    assert f"stale feed: no data for {STALE_AFTER:g} s" in line
    others_untouched(feed, venue, before)
