"""Faults of a venue's server, for every venue: the daemon survives each, says what happened once,
and the other venues (and, where the connection survives, the faulted one) lose no trade.

Each test runs the three simulators and the daemon on the mock clock, lets every venue flow,
faults one venue's simulator through a :class:`FaultSchedule` and waits for it to flow again.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from faultharness import (
    SPARE,
    STALE_AFTER,
    SYMBOLS,
    TIMEOUT,
    VENUES,
    Feed,
    metric,
    others_untouched,
    running_feed,
    untouched,
    venue_lines,
)

from feedd.errors import NoAnswer, VenueRefused
from feedd.sim.faults import Fault, FaultSchedule

#: what the venue's status says after each kind of close (the transport's words)
CLOSES = {
    "abrupt_close": "connection closed without a close frame",
    "close_1000": "closed by peer: code 1000",
    "close_1001": "closed by peer: code 1001",
    "close_1008": "closed by peer: code 1008",
    "close_1011": "closed by peer: code 1011",
}


def reconnects(feed: Feed) -> dict[str, int]:
    return {venue: feed.status(venue).reconnects for venue in VENUES}


async def play(feed: Feed, venue: str, kind: str, **params: object) -> None:
    await feed.nursery.start(FaultSchedule([Fault(0.0, kind, params)]).play, feed.sims[venue])


async def reopened(feed: Feed, venue: str, accepted_before: int) -> None:
    """Wait until the venue's simulator accepted a new connection and its trades flow again."""
    sim = feed.sims[venue]
    await sim.wait_until(lambda: sim.connections_accepted > accepted_before)
    await feed.tape.more(venue)


@pytest.mark.parametrize("venue", VENUES)
async def test_every_kind_of_close_is_reconnected_once_and_touches_no_other_venue(
    autojump_clock: trio.testing.MockClock, venue: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            before = reconnects(feed)
            for count, (kind, said) in enumerate(CLOSES.items(), start=1):
                caplog.clear()
                accepted = feed.sims[venue].connections_accepted
                await play(feed, venue, kind)
                await reopened(feed, venue, accepted)
                status = feed.status(venue)
                assert status.reconnects == before[venue] + count
                assert status.last_error is not None and said in status.last_error
                # one line for the event; the reconnect itself is an info line
                assert len(venue_lines(caplog.records, venue)) == 1, kind
            await feed.flowing()
    others_untouched(feed, venue, before)
    assert metric(feed, "feedd_reconnects_total", venue=venue) == before[venue] + len(CLOSES)
    assert feed.service.health()[0] == "ok"


@pytest.mark.parametrize("kind", ["half_open", "slow_loris"])
@pytest.mark.parametrize("venue", VENUES)
async def test_a_connection_that_goes_quiet_without_closing_is_given_up_after_stale_after(
    autojump_clock: trio.testing.MockClock, venue: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            before = reconnects(feed)
            caplog.clear()
            accepted = feed.sims[venue].connections_accepted
            faulted_at = trio.current_time()
            # the trickle outlasts one stale_after, not two: the next connection is healthy
            await play(feed, venue, kind, duration=STALE_AFTER * 1.5, byte_interval=0.1)
            await reopened(feed, venue, accepted)
            noticed = trio.current_time() - faulted_at
            await feed.flowing()
    assert noticed >= STALE_AFTER
    assert feed.status(venue).reconnects == before[venue] + 1
    assert venue_lines(caplog.records, venue) == [
        f"{venue}/stream#1: stale feed: no data for {STALE_AFTER:g} s; reconnecting in 0.0 s"
    ]
    others_untouched(feed, venue, before)


@pytest.mark.parametrize("venue", VENUES)
async def test_bad_frames_are_counted_and_logged_sparingly_and_the_stream_loses_nothing(
    autojump_clock: trio.testing.MockClock, venue: str, caplog: pytest.LogCaptureFixture
) -> None:
    kinds = ["malformed", "truncated"] * 5
    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            before = reconnects(feed)
            caplog.clear()
            schedule = FaultSchedule([Fault(i * 0.5, kind) for i, kind in enumerate(kinds)])
            await schedule.play(feed.sims[venue])
            await feed.flowing()
    status = feed.status(venue)
    assert status.decode_errors == len(kinds)
    assert metric(feed, "feedd_decode_errors_total", venue=venue) == len(kinds)
    # ten bad frames, four lines: the 1st, 2nd, 4th and 8th of the run
    lines = venue_lines(caplog.records, venue)
    assert [line.split("#")[2].split(":")[0] for line in lines] == ["1", "2", "4", "8"]
    # the connection survives the bad frames, so even the faulted venue loses nothing
    for each in VENUES:
        untouched(feed, each, before[each])


@pytest.mark.parametrize("venue", VENUES)
async def test_an_oversized_frame_is_refused_from_its_header_and_the_connection_reopened(
    autojump_clock: trio.testing.MockClock, venue: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            before = reconnects(feed)
            caplog.clear()
            sim = feed.sims[venue]
            faulted_at = trio.current_time()
            await play(feed, venue, "oversized")
            # refused at the header (close code 1009, "message too big"): the rest of the frame
            # never comes, so a client waiting for it would only notice after stale_after
            await sim.wait_until(lambda: sim.client_close_codes[1009] == 1)
            assert trio.current_time() - faulted_at < STALE_AFTER
            await reopened(feed, venue, sim.connections_accepted - 1)
    assert feed.status(venue).reconnects == before[venue] + 1
    [line] = venue_lines(caplog.records, venue)
    assert "frame larger than 16777216 bytes" in line
    others_untouched(feed, venue, before)


@pytest.mark.parametrize("venue", VENUES)
async def test_a_refused_live_subscribe_is_an_error_and_the_subscribed_symbols_go_on(
    autojump_clock: trio.testing.MockClock, venue: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            before = reconnects(feed)
            caplog.clear()
            feed.sims[venue].refuse_symbols([SPARE[venue]])
            with pytest.raises(VenueRefused):
                await feed.service.subscribe_to_symbol(venue, SPARE[venue])
            await feed.flowing()
    assert len(venue_lines(caplog.records, venue)) == 1  # "subscription refused (...)"
    assert SPARE[venue] not in str(await feed.service.list_subscriptions())  # rolled back
    for each in VENUES:
        untouched(feed, each, before[each])


@pytest.mark.parametrize("venue", VENUES)
async def test_a_symbol_refused_on_reconnect_shows_in_status_until_it_is_accepted_again(
    autojump_clock: trio.testing.MockClock, venue: str, caplog: pytest.LogCaptureFixture
) -> None:
    refused = SYMBOLS[venue][0]
    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            before = reconnects(feed)
            caplog.clear()
            status = feed.status(venue)
            await play(feed, venue, "subscribe_error", symbols=[refused], duration=10.0)
            await feed.tape.wait_until(
                lambda: any(refused.lower() in topic.lower() for topic in status.subscription_errors)
            )
            assert "subscription refused" in (status.last_error or "")
            refused_lines = [line for line in venue_lines(caplog.records, venue) if "refused" in line]
            assert refused_lines and all(refused.lower() in line.lower() for line in refused_lines)
            # the fault ends with a drop: the next connection subscribes it again, and it flows
            await feed.tape.wait_until(lambda: not status.subscription_errors)
            await feed.tape.more(venue)
    others_untouched(feed, venue, before)


@pytest.mark.parametrize("venue", VENUES)
async def test_a_subscribe_never_acknowledged_times_out_and_is_sent_again_on_the_next_connection(
    autojump_clock: trio.testing.MockClock, venue: str,
) -> None:
    spare = SPARE[venue]
    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            before = reconnects(feed)
            sim = feed.sims[venue]
            sim.swallow_subscribes(True)
            with pytest.raises(NoAnswer):
                await feed.service.subscribe_to_symbol(venue, spare, ack_timeout=5.0)
            await feed.flowing()
            for each in VENUES:  # the swallowed request stalls nothing
                untouched(feed, each, before[each])
            sim.swallow_subscribes(False)
            sim.drop_connections()
            await feed.tape.wait_until(lambda: len(feed.tape.trades[(venue, spare)]) >= 3)
    assert spare in str(await feed.service.list_subscriptions())
