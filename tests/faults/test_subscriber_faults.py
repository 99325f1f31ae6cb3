"""Faults of the daemon's own consumers, the Unix-socket subscribers: one that stops reading, ones
that leave mid-line, a hundred that arrive at once. The daemon and every other subscriber go on
as if nothing happened; the faulty one costs bounded memory and gets an exact gap notice.
"""

from __future__ import annotations

import logging

import orjson
import pytest
import trio
import trio.testing
from faultharness import TIMEOUT, VENUES, Feed, Tape, metric, running_feed

#: the stalled subscriber's buffer (records): small, so it overflows within seconds
CLIENT_BUFFER = 50


def daemon_warnings(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING and r.name.startswith("feedd.")
            and not r.name.startswith("feedd.sim")]


def all_untouched(feed: Feed) -> None:
    for venue in VENUES:
        assert feed.tape.holes(venue) == {}, venue
        assert feed.status(venue).reconnects == 0, venue


async def test_a_subscriber_that_stops_reading_is_bounded_and_told_what_it_lost(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # a denser Binance tape: the stalled socket's kernel buffers fill within a few hundred records
    async with running_feed(speeds={"binance": 2.0}, client_buffer=CLIENT_BUFFER) as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            publisher = feed.service.publisher
            assert publisher is not None
            stalled = await trio.open_unix_socket(feed.socket_path)
            await stalled.send_all(b"{}\n")
            await feed.tape.wait_until(lambda: len(publisher.subscribers) == 2)
            slow = max(publisher.subscribers, key=lambda sub: sub.number)
            peak = 0

            def overflowed() -> bool:
                nonlocal peak
                peak = max(peak, slow.pending)
                return slow.dropped_total >= 500

            await feed.tape.wait_until(overflowed)
            assert metric(feed, "feedd_unix_dropped_records_total") == slow.dropped_total
            # it reads again: what its socket held, then the gap notice, then the newest records
            tape = Tape()
            feed.nursery.start_soon(_read, stalled, tape)
            await tape.wait_until(lambda: bool(tape.notices))
            await feed.flowing()
    assert peak <= CLIENT_BUFFER
    # every record it lost is in a gap notice, and nothing else was lost or repeated
    assert all(notice["type"] == "gap" for notice in tape.notices)
    assert sum(notice["dropped"] for notice in tape.notices) == slow.dropped_total >= 500
    all_untouched(feed)  # the other subscriber lost nothing
    assert daemon_warnings(caplog.records) == []


async def _read(stream: trio.SocketStream, tape: Tape) -> None:
    buffer = b""
    while data := await stream.receive_some(65536):
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            tape.add(line)


@pytest.mark.parametrize("cut", ["while reading a record", "while sending its filter line"])
async def test_a_subscriber_that_leaves_mid_line_is_forgotten_and_disturbs_nobody(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, cut: str
) -> None:
    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            publisher = feed.service.publisher
            assert publisher is not None
            for _ in range(5):
                stream = await trio.open_unix_socket(feed.socket_path)
                if cut == "while reading a record":
                    await stream.send_all(b"{}\n")
                    assert await stream.receive_some(10)  # ten bytes of a line, then gone
                else:
                    await stream.send_all(b'{"exchange": ["bin')
                    await feed.tape.wait_until(lambda: publisher.clients == 2)
                await stream.aclose()
                await feed.tape.wait_until(lambda: publisher.clients == 1)
            await feed.flowing()
    assert publisher.clients_total == 6
    # a filter line cut by the client's leaving is a bad filter (counted, answered, closed)
    assert publisher.filter_errors == (5 if cut == "while sending its filter line" else 0)
    all_untouched(feed)
    assert daemon_warnings(caplog.records) == []


async def test_a_hundred_subscribers_connecting_at_once_all_get_records(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[int] = []

    async def subscriber(path: str) -> None:
        stream = await trio.open_unix_socket(path)
        await stream.send_all(b"{}\n")
        buffer = b""
        while buffer.count(b"\n") < 5:
            data = await stream.receive_some(65536)
            assert data, "closed by the daemon"
            buffer += data
        lines = buffer.split(b"\n")[:5]
        got.append(sum(orjson.loads(line).get("kind") == "trade" for line in lines))
        await stream.aclose()

    async with running_feed() as feed:
        with trio.fail_after(TIMEOUT):
            await feed.flowing()
            publisher = feed.service.publisher
            assert publisher is not None
            async with trio.open_nursery() as crowd:
                for _ in range(100):
                    crowd.start_soon(subscriber, feed.socket_path)
            await feed.tape.wait_until(lambda: publisher.clients == 1)
            await feed.flowing()
    assert got == [5] * 100
    assert publisher.clients_total == 101 and publisher.clients_refused == 0
    all_untouched(feed)
    assert daemon_warnings(caplog.records) == []
