"""Handshake faults on every venue, on the mock clock: a 429 is waited out for its Retry-After,
a 418 (an IP ban) for five minutes, a 5xx takes the backoff ladder; each is one log line, the
subscribers hear of the gap, and the other venues never notice."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from faultharness import VENUES, others_untouched, running_feed

from feedd.feed.gates import DEFAULT_BAN

TIMEOUT = 3_600  # virtual seconds: the clock jumps


@pytest.mark.parametrize(("status", "retry_after", "wait"), [
    (429, 30, 30.0), (418, None, DEFAULT_BAN), (503, None, 0.0),
], ids=["429", "418", "503"])
@pytest.mark.parametrize("venue", VENUES)
async def test_a_refused_handshake_waits_what_the_venue_asked_and_touches_no_other_venue(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
    venue: str, status: int, retry_after: int | None, wait: float,
) -> None:
    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            before = {v: feed.status(v).reconnects for v in VENUES}
            sim = feed.sims[venue]
            caplog.clear()
            sim.refuse_connections(1, status=status, retry_after=retry_after)
            cut_at = trio.current_time()
            sim.drop_connections()  # abrupt: the reconnect meets the refusal
            await sim.wait_until(lambda: sim.connections_accepted >= 2)
            back_at = trio.current_time()
            await feed.tape.more(venue)
    assert sim.refusals == {status: 1}
    assert back_at - cut_at >= wait
    said = [r for r in caplog.records if r.levelno >= logging.WARNING and str(status) in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    if status == 418:
        assert said[0].levelno == logging.ERROR and "banned" in said[0].getMessage()
    assert [n["type"] for n in feed.tape.notices if n.get("exchange") == venue] == ["disconnect", "reconnect"]
    others_untouched(feed, venue, before)
