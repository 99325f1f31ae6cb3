"""The generic connection runner: backoff, failure accounting, live subscription changes.

These tests drive the runner through a scripted transport on trio's mock clock, so minutes of
backoff cost nothing; tests/ops/test_daemon.py drives it against the simulator.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from feedd.errors import TransportError
from feedd.exchanges import make_venue
from feedd.exchanges.base import Pong, Retry, SubscribeRejected
from feedd.feed.backoff import Backoff
from feedd.feed.runner import ConnectionRunner, RunnerSettings
from feedd.feed.status import VenueStatus
from feedd.feed.validate import Validator
from feedd.model import Disconnected, MarketData, Reconnected
from feedd.wire.transport import Message


def trade_frame(trade_id: int, symbol: str = "BTCUSDT") -> str:
    now = int(datetime.now(UTC).timestamp() * 1000)
    data = {"e": "trade", "E": now, "s": symbol, "t": trade_id, "p": "100.5", "q": "1", "T": now,
            "m": False, "M": True}
    return orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": data}).decode()


class ScriptedTransport:
    """A connected socket whose incoming frames the test pushes and whose sends it reads."""

    def __init__(self) -> None:
        self.incoming_send, self.incoming = trio.open_memory_channel[Message | Exception](100)
        self.sent: list[tuple[float, str]] = []
        self.sent_more = trio.Event()
        self.closed = False

    async def send(self, frame: Message) -> None:
        self.sent.append((trio.current_time(), str(frame)))
        self.sent_more.set()
        self.sent_more = trio.Event()

    async def receive_batch(self) -> list[Message]:
        item = await self.incoming.receive()
        if isinstance(item, Exception):
            raise item
        return [item]

    async def aclose(self) -> None:
        pass


class FakeNetwork:
    """``open_transport`` stand-in: each attempt either fails or yields a ScriptedTransport."""

    def __init__(self, outcomes: Callable[[int], bool]) -> None:
        self.outcomes = outcomes  # attempt number -> does it connect?
        self.attempts: list[float] = []
        self.connected = trio.Event()
        self.transport: ScriptedTransport | None = None
        self.transports: list[ScriptedTransport] = []
        self.changed = trio.Event()

    @asynccontextmanager
    async def open(self, url: str, *, connect_timeout: float) -> AsyncIterator[ScriptedTransport]:
        self.attempts.append(trio.current_time())
        self.changed.set()
        self.changed = trio.Event()
        if not self.outcomes(len(self.attempts)):
            raise TransportError("cannot connect: refused")
        transport = ScriptedTransport()
        self.transport = transport
        self.transports.append(transport)
        self.connected.set()
        self.connected = trio.Event()
        try:
            yield transport
        finally:
            transport.closed = True

    async def wait_attempts(self, n: int) -> None:
        while len(self.attempts) < n:
            await self.changed.wait()

    async def opened(self, n: int) -> ScriptedTransport:
        """The n-th connection (from 1), once the runner has sent what it sends on connecting."""
        await self.wait_attempts(n)
        await trio.testing.wait_all_tasks_blocked()
        return self.transports[n - 1]


def make_runner(
    network: FakeNetwork,
    settings: RunnerSettings,
    *,
    topics: tuple[str, ...] = ("btcusdt@trade",),
    venue: str = "binance",
    capacity: int = 100,
) -> tuple[ConnectionRunner, VenueStatus, trio.MemoryReceiveChannel[list[MarketData]]]:
    status = VenueStatus(venue)
    send, receive = trio.open_memory_channel[list[MarketData]](capacity)
    runner = ConnectionRunner(
        venue=make_venue(venue),
        url="ws://test/stream",
        name="binance/stream#1",
        topics=topics,
        settings=settings,
        status=status,
        records=send,
        validator=Validator({"BTCUSDT"}),
        open_transport=network.open,
        backoff=Backoff(settings.reconnect_interval, settings.max_backoff, rng=random.Random(1)),
        symbols=lambda: ["BTCUSDT"],
    )
    return runner, status, receive


async def test_failed_connects_back_off_exponentially_with_jitter_up_to_the_ceiling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = RunnerSettings(reconnect_interval=1.0, max_backoff=20.0, max_retries=0)
    network = FakeNetwork(lambda n: False)
    runner, status, _ = make_runner(network, settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.wait_attempts(9)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(network.attempts, network.attempts[1:], strict=False)]
    for n, gap in enumerate(gaps):
        top = min(20.0, 2.0**n)
        assert top / 2 <= gap <= top, (n, gap)
    assert gaps[-1] >= 10.0  # reached the ceiling's band
    assert status.consecutive_failures == 9  # every attempt so far failed
    assert status.state == "backoff"  # max_retries = 0: never "failed"


async def test_after_max_retries_the_venue_is_failed_and_retries_at_the_ceiling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = RunnerSettings(reconnect_interval=1.0, max_backoff=60.0, max_retries=3)
    network = FakeNetwork(lambda n: False)
    runner, status, _ = make_runner(network, settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.wait_attempts(3)
        await trio.testing.wait_all_tasks_blocked()
        assert status.state == "failed"
        assert "refused" in (status.last_error or "")
        await network.wait_attempts(6)
        nursery.cancel_scope.cancel()
    assert network.attempts[4] - network.attempts[3] == pytest.approx(60.0)
    assert network.attempts[5] - network.attempts[4] == pytest.approx(60.0)


async def test_failure_count_resets_only_after_the_connection_delivered_data_for_a_while(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = RunnerSettings(reconnect_interval=1.0, max_backoff=60.0, stable_after=10.0)
    network = FakeNetwork(lambda n: n >= 4)  # three refusals, then it connects
    runner, status, records = make_runner(network, settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        transport = network.transport
        assert transport is not None
        assert runner.conn.consecutive_failures == 3
        await transport.incoming_send.send(trade_frame(1))
        assert len(await records.receive()) == 1
        assert runner.conn.consecutive_failures == 3  # connected, but not yet stable
        await trio.sleep(10.0)
        await transport.incoming_send.send(trade_frame(2))
        await records.receive()
        assert runner.conn.consecutive_failures == 0
        assert status.state == "connected"
        # the next failure starts the ladder from reconnect_interval again
        await transport.incoming_send.send(TransportError("closed by peer: code 1006"))
        await network.wait_attempts(5)
        nursery.cancel_scope.cancel()
    assert 0.5 <= network.attempts[4] - network.attempts[3] - 10.0 <= 1.0 + 1e-6


async def test_a_connection_that_closes_before_delivering_keeps_counting_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = RunnerSettings(reconnect_interval=1.0, max_backoff=60.0)
    network = FakeNetwork(lambda n: True)
    runner, _, _ = make_runner(network, settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        for n in range(1, 4):
            await network.connected.wait()
            assert network.transport is not None
            await network.transport.incoming_send.send(TransportError("closed by peer: code 1011"))
            await network.wait_attempts(n + 1)
        nursery.cancel_scope.cancel()
    assert runner.conn.consecutive_failures == 3
    assert runner.conn.last_error == "closed by peer: code 1011"


async def test_every_topic_is_subscribed_again_after_a_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = RunnerSettings(reconnect_interval=1.0)
    network = FakeNetwork(lambda n: True)
    runner, _, _ = make_runner(network, settings, topics=("btcusdt@trade", "btcusdt@ticker"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        first = network.transport
        assert first is not None
        await trio.testing.wait_all_tasks_blocked()
        runner.add_topics(["ethusdt@trade"])  # live: one more SUBSCRIBE on this connection
        await trio.testing.wait_all_tasks_blocked()
        await first.incoming_send.send(TransportError("closed by peer: code 1001"))
        await network.connected.wait()
        second = network.transport
        assert second is not None and second is not first
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    first_params = [orjson.loads(f)["params"] for _, f in first.sent]
    assert first_params == [["btcusdt@ticker", "btcusdt@trade"], ["ethusdt@trade"]]
    [resubscribe] = [orjson.loads(f) for _, f in second.sent]
    assert resubscribe["method"] == "SUBSCRIBE"
    assert resubscribe["params"] == ["btcusdt@ticker", "btcusdt@trade", "ethusdt@trade"]


async def test_outgoing_frames_are_paced_below_the_venue_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, _, _ = make_runner(network, RunnerSettings())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        runner.add_topics([f"sym{i}usdt@trade" for i in range(1000)])  # 5 requests of 200
        runner.remove_topics([f"sym{i}usdt@trade" for i in range(1000)])  # 5 more
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert network.transport is not None
    times = [t for t, _ in network.transport.sent]
    assert len(times) == 11
    limit = 4  # Binance allows 5 per second; one is kept free for pongs
    for i in range(len(times) - limit):
        assert times[i + limit] - times[i] >= 1.0 - 1e-9


async def test_live_changes_queued_while_pacing_go_out_as_one_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, _, _ = make_runner(network, RunnerSettings())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        await trio.testing.wait_all_tasks_blocked()
        for i in range(5):  # use up the window: these go out one by one
            runner.add_topics([f"first{i}usdt@trade"])
            await trio.testing.wait_all_tasks_blocked()
        for i in range(30):  # one API call per symbol, while the sender waits for a slot
            runner.add_topics([f"sym{i}usdt@trade"])
        runner.remove_topics(["sym0usdt@trade"])
        runner.add_topics(["sym0usdt@trade"])
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert network.transport is not None
    sent = [orjson.loads(f) for _, f in network.transport.sent]
    # the initial request and three singles fill the first second; everything asked for while
    # the sender waited goes out in the next slot as one request, order of changes kept
    assert [len(r["params"]) for r in sent[:4]] == [1, 1, 1, 1]
    assert len(sent) == 7
    assert sent[4]["method"] == "SUBSCRIBE"
    assert sent[4]["params"] == ["first3usdt@trade", "first4usdt@trade"] + [
        f"sym{i}usdt@trade" for i in range(30)
    ]
    assert (sent[5]["method"], sent[5]["params"]) == ("UNSUBSCRIBE", ["sym0usdt@trade"])
    assert (sent[6]["method"], sent[6]["params"]) == ("SUBSCRIBE", ["sym0usdt@trade"])
    assert "sym0usdt@trade" in runner.topics


async def test_unsubscribe_is_sent_live_and_not_resubscribed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, _, _ = make_runner(network, RunnerSettings(), topics=("btcusdt@trade", "ethusdt@trade"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        first = network.transport
        assert first is not None
        runner.remove_topics(["ethusdt@trade"])
        await trio.testing.wait_all_tasks_blocked()
        await first.incoming_send.send(TransportError("closed by peer: code 1001"))
        await network.connected.wait()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [orjson.loads(f)["method"] for _, f in first.sent] == ["SUBSCRIBE", "UNSUBSCRIBE"]
    assert network.transport is not None
    assert [orjson.loads(f)["params"] for _, f in network.transport.sent] == [["btcusdt@trade"]]


async def test_frames_read_before_a_close_are_still_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: n == 1)
    runner, status, records = make_runner(network, RunnerSettings())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        assert network.transport is not None
        for i in range(5):
            network.transport.incoming_send.send_nowait(trade_frame(i))
        network.transport.incoming_send.send_nowait(TransportError("closed by peer: code 1000"))
        got: list[MarketData] = []
        while len(got) < 5:
            got.extend(await records.receive())
        nursery.cancel_scope.cancel()
    assert [r.trade_id for r in got] == ["0", "1", "2", "3", "4"]
    assert status.records == 5


async def test_an_adapter_bug_is_a_connection_failure_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, status, _ = make_runner(network, RunnerSettings(reconnect_interval=1.0))

    def broken_decode(frame: Message, received_at: datetime) -> list[object]:
        raise RuntimeError("adapter bug")

    original = runner.venue.new_session

    def session_with_bug():  # type: ignore[no-untyped-def]
        session = original()
        session.decode = broken_decode  # type: ignore[method-assign]
        return session

    runner.venue.new_session = session_with_bug  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        assert network.transport is not None
        await network.transport.incoming_send.send(trade_frame(1))
        await network.wait_attempts(2)
        nursery.cancel_scope.cancel()
    assert "adapter bug" in (runner.conn.last_error or "")
    assert status.reconnects >= 1


async def test_an_error_tied_to_no_request_is_shown_as_a_venue_error_until_the_next_ack(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, status, _ = make_runner(network, RunnerSettings())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        transport = network.transport
        assert transport is not None
        # Binance's id-less error: about some request, or none; no topic can be named
        await transport.incoming_send.send('{"code": 3, "msg": "Invalid JSON"}')
        await trio.testing.wait_all_tasks_blocked()
        assert status.subscription_errors == {"<unattributed>": "code 3: Invalid JSON"}
        shown = status.last_error
        # the venue acknowledges the next request: the error is past
        await transport.incoming_send.send('{"result": null, "id": 1}')
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert status.subscription_errors == {}
    assert shown == "binance/stream#1: venue error, tied to no request: code 3: Invalid JSON"
    logged = [r.getMessage() for r in caplog.records if "Invalid JSON" in r.getMessage()]
    assert logged == ["binance/stream#1: venue error, tied to no request: code 3: Invalid JSON"]


async def test_an_idle_feed_is_probed_and_a_reply_keeps_it_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, _, _ = make_runner(network, RunnerSettings(stale_after=30.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        transport = network.transport
        assert transport is not None
        for n in range(1, 7):  # a minute of silence but for the probe replies
            while sum("LIST_SUBSCRIPTIONS" in f for _, f in transport.sent) < n:
                await transport.sent_more.wait()
            probe = orjson.loads(transport.sent[-1][1])
            await transport.incoming_send.send(orjson.dumps({"result": [], "id": probe["id"]}).decode())
        nursery.cancel_scope.cancel()
    probes = [t for t, f in transport.sent if "LIST_SUBSCRIPTIONS" in f]
    assert len(probes) == 6
    assert probes[0] == pytest.approx(10.0, abs=1e-6)  # idle for ping_interval
    assert len(network.attempts) == 1  # never judged stale


async def test_a_stalled_feed_is_dropped_after_stale_after_and_reopened(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, _, _ = make_runner(network, RunnerSettings(stale_after=30.0, reconnect_interval=1.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        await network.wait_attempts(2)
        nursery.cancel_scope.cancel()
    assert network.attempts[0] == pytest.approx(0.0)
    assert 30.5 <= network.attempts[1] <= 31.0 + 1e-6
    assert runner.conn.last_error == "stale feed: no data for 30 s"


async def test_failed_is_logged_once_per_run_of_failures(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    settings = RunnerSettings(reconnect_interval=1.0, max_backoff=5.0, max_retries=2, stable_after=10.0)
    network = FakeNetwork(lambda n: n == 5)  # four refusals, one good connection, refusals again
    runner, _, records = make_runner(network, settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        assert network.transport is not None
        await network.transport.incoming_send.send(trade_frame(1))
        await records.receive()
        await trio.sleep(10.0)
        await network.transport.incoming_send.send(trade_frame(2))
        await records.receive()  # stable now
        await network.transport.incoming_send.send(TransportError("closed by peer: code 1006"))
        await network.wait_attempts(9)
        nursery.cancel_scope.cancel()
    failed = [r for r in caplog.records if "consecutive attempts" in r.getMessage()]
    assert len(failed) == 2


SHUTDOWN = orjson.dumps({"stream": "!serverShutdown", "data": {"e": "serverShutdown"}}).decode()


async def received(channel: trio.MemoryReceiveChannel[Any]) -> tuple[list[MarketData], list[object]]:
    """Everything queued for the hub now: the records, and the feed events between them."""
    await trio.testing.wait_all_tasks_blocked()
    records: list[MarketData] = []
    events: list[object] = []
    while True:
        try:
            item = channel.receive_nowait()
        except trio.WouldBlock:
            return records, events
        if isinstance(item, list):
            records += item
        else:
            events.append(item)


def trade_ids(records: list[MarketData]) -> list[str | None]:
    return [r.trade_id for r in records]


async def test_a_shutdown_notice_rotates_make_before_break_without_gap_or_duplicate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, status, records = make_runner(network, RunnerSettings(stable_after=1.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        old = await network.opened(1)
        await old.incoming_send.send(trade_frame(1))
        await old.incoming_send.send(SHUTDOWN)
        new = await network.opened(2)
        assert runner.conn.rotating and not old.closed
        assert new.sent and "SUBSCRIBE" in new.sent[0][1]
        await old.incoming_send.send(trade_frame(2))
        await new.incoming_send.send(trade_frame(2))  # both carry it: it goes out once
        await new.incoming_send.send(trade_frame(3))
        await trio.testing.wait_all_tasks_blocked()
        assert old.closed and not new.closed  # handed over at the replacement's first data
        await new.incoming_send.send(trade_frame(4))
        got, events = await received(records)
        nursery.cancel_scope.cancel()
    assert trade_ids(got) == ["1", "2", "3", "4"]
    assert events == []  # no disconnect: nothing was lost
    assert (runner.conn.rotations, status.rotations) == (1, 1)
    assert (status.reconnects, runner.conn.consecutive_failures) == (0, 0)
    assert len(network.attempts) == 2


async def test_when_the_venue_cuts_the_old_connection_first_the_replacement_takes_over_what_it_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, status, records = make_runner(network, RunnerSettings())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        old = await network.opened(1)
        await old.incoming_send.send(trade_frame(1))
        await old.incoming_send.send(SHUTDOWN)
        new = await network.opened(2)
        await new.incoming_send.send(trade_frame(3))  # ahead of the old one: held
        await old.incoming_send.send(trade_frame(2))
        await old.incoming_send.send(TransportError("closed by peer: code 1001 (Server shutdown)"))
        await trio.testing.wait_all_tasks_blocked()
        await new.incoming_send.send(trade_frame(4))
        got, events = await received(records)
        nursery.cancel_scope.cancel()
    assert trade_ids(got) == ["1", "2", "3", "4"]
    assert events == [] and len(network.attempts) == 2
    assert (status.rotations, status.reconnects) == (1, 0)


async def drain(channel: trio.MemoryReceiveChannel[Any], got: list[MarketData]) -> None:
    """The hub, one batch at a time, and only once everything else waits: a full ingress queue."""
    while True:
        await trio.testing.wait_all_tasks_blocked()
        try:
            item = channel.receive_nowait()
        except trio.WouldBlock:
            return
        if isinstance(item, list):
            got += item


async def test_held_records_keep_their_order_before_the_replacements_next_batch_when_the_hub_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The hand-over's fallback path: the old connection's catch-up batch waits for room in a
    full ingress queue; what the replacement held and what it reads next come after it, in order."""
    network = FakeNetwork(lambda n: True)
    runner, status, records = make_runner(network, RunnerSettings(stable_after=1.0), capacity=1)
    got: list[MarketData] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        old = await network.opened(1)
        await old.incoming_send.send(trade_frame(1))  # fills the hub's queue
        await old.incoming_send.send(SHUTDOWN)
        new = await network.opened(2)
        await new.incoming_send.send(trade_frame(2))  # held
        await new.incoming_send.send(trade_frame(3))  # held
        await old.incoming_send.send(trade_frame(2))  # catches up, but the queue is full
        await trio.testing.wait_all_tasks_blocked()
        assert not old.closed  # no hand-over before the old connection's batch is with the hub
        await new.incoming_send.send(trade_frame(4))  # after the hand-over: behind what was held
        await new.incoming_send.send(trade_frame(5))
        await drain(records, got)
        assert old.closed and not new.closed
        await new.incoming_send.send(trade_frame(6))
        await drain(records, got)
        nursery.cancel_scope.cancel()
    assert trade_ids(got) == ["1", "2", "3", "4", "5", "6"]
    assert status.rotations == 1 and status.reconnects == 0


async def test_when_the_old_connection_is_cut_with_the_hub_full_what_was_held_comes_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, status, records = make_runner(network, RunnerSettings(), capacity=1)
    got: list[MarketData] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        old = await network.opened(1)
        await old.incoming_send.send(trade_frame(1))  # fills the hub's queue
        await old.incoming_send.send(SHUTDOWN)
        new = await network.opened(2)
        await new.incoming_send.send(trade_frame(3))  # ahead of the old one: held
        await old.incoming_send.send(trade_frame(2))
        await old.incoming_send.send(TransportError("closed by peer: code 1001 (Server shutdown)"))
        # the replacement reads on while the held records wait for room (nothing settles between)
        new.incoming_send.send_nowait(trade_frame(4))
        new.incoming_send.send_nowait(trade_frame(5))
        await drain(records, got)
        await new.incoming_send.send(trade_frame(6))
        await drain(records, got)
        nursery.cancel_scope.cancel()
    assert trade_ids(got) == ["1", "2", "3", "4", "5", "6"]
    assert (status.rotations, status.reconnects) == (1, 0)


async def test_connections_rotate_at_rotate_after_plus_their_offset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, status, records = make_runner(network, RunnerSettings(stale_after=1e6))
    runner.rotate_after, runner.rotate_offset = 100.0, 7.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        for n in range(1, 4):
            new = await network.opened(n + 1)
            await new.incoming_send.send(trade_frame(n))  # held: the old one
            await network.transports[n - 1].incoming_send.send(trade_frame(n))  # catches up
        got, events = await received(records)
        closed = [t.closed for t in network.transports]
        nursery.cancel_scope.cancel()
    opened = network.attempts
    assert [b - a for a, b in itertools.pairwise(opened)] == [pytest.approx(107.0)] * 3
    assert closed == [True, True, True, False]
    assert trade_ids(got) == ["1", "2", "3"] and events == []
    assert status.rotations == 3 and status.reconnects == 0


async def test_a_failed_replacement_leaves_the_old_connection_streaming_and_is_retried_with_backoff(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = RunnerSettings(reconnect_interval=5.0, max_backoff=60.0, stale_after=1e6)
    network = FakeNetwork(lambda n: n == 1 or n >= 5)  # replacements 2, 3, 4 are refused
    runner, status, records = make_runner(network, settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        old = await network.opened(1)
        await old.incoming_send.send(SHUTDOWN)
        await network.wait_attempts(5)
        await trio.testing.wait_all_tasks_blocked()
        await old.incoming_send.send(trade_frame(1))  # still streaming all along
        await network.transports[1].incoming_send.send(trade_frame(2))
        await old.incoming_send.send(trade_frame(2))
        got, events = await received(records)
        nursery.cancel_scope.cancel()
    opened = network.attempts
    # at once, then after 5, 10, 20 s: failed rotations back off, and never storm
    assert [b - a for a, b in itertools.pairwise(opened)] == pytest.approx([0, 5, 10, 20])
    assert trade_ids(got) == ["1", "2"] and events == []
    assert status.rotations == 1 and status.reconnects == 0
    assert runner.conn.consecutive_failures == 0
    assert sum("rotation failed" in r.message for r in caplog.records) == 3


async def test_a_venue_announcing_shutdown_on_every_connection_rotates_at_most_every_reconnect_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, status, _ = make_runner(network, RunnerSettings(reconnect_interval=5.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        for n in range(1, 5):
            transport = await network.opened(n)
            await transport.incoming_send.send(trade_frame(n))
            await transport.incoming_send.send(SHUTDOWN)
        await network.wait_attempts(5)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(network.attempts)]
    assert gaps == pytest.approx([0, 5, 5, 5])
    assert status.reconnects == 0 and runner.conn.consecutive_failures == 0


async def test_a_lost_connection_announces_disconnect_then_reconnect_with_the_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = RunnerSettings(reconnect_interval=4.0, max_backoff=4.0)
    network = FakeNetwork(lambda n: n != 2)
    runner, _, records = make_runner(network, settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        first = await network.opened(1)
        await first.incoming_send.send(trade_frame(1))
        await first.incoming_send.send(TransportError("closed by peer: code 1006"))
        await network.wait_attempts(3)
        await trio.testing.wait_all_tasks_blocked()
        before, between = await received(records)
        await network.transports[1].incoming_send.send(trade_frame(2))
        after, events = await received(records)
        nursery.cancel_scope.cancel()
    assert trade_ids(before) == ["1"] and trade_ids(after) == ["2"]
    [down] = between
    assert isinstance(down, Disconnected)
    assert (down.exchange, down.symbols) == ("binance", ("BTCUSDT",))
    assert down.reason == "closed by peer: code 1006"
    [up] = events
    assert isinstance(up, Reconnected)
    assert (up.exchange, up.symbols) == ("binance", ("BTCUSDT",))
    assert 2.0 <= up.gap_seconds <= 8.0  # two backoff waits of 2-4 s each
    assert up.at > down.at


async def test_a_feed_failing_before_any_data_announces_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: False)
    runner, _, records = make_runner(network, RunnerSettings())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.wait_attempts(4)
        got, events = await received(records)
        nursery.cancel_scope.cancel()
    assert got == [] and events == []


async def test_heartbeats_without_data_are_a_stale_feed_and_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pongs and acks prove the socket, not the feed: a venue that answers but sends no data is
    reconnected after stale_after, as a failure."""
    network = FakeNetwork(lambda n: True)
    runner, status, _ = make_runner(network, RunnerSettings(stale_after=30.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        transport = await network.opened(1)
        await transport.incoming_send.send(trade_frame(1))
        for _ in range(10):  # an answer to nothing every 5 s: the socket lives, the feed does not
            await trio.sleep(5.0)
            await transport.incoming_send.send('{"result":null,"id":99}')
        await network.wait_attempts(2)
        nursery.cancel_scope.cancel()
    assert network.attempts[1] == pytest.approx(30.0, abs=3.0)
    assert status.last_error == (
        "binance/stream#1: stale feed: no data for 30 s (the socket alive: heartbeats, no data)"
    )
    assert runner.conn.consecutive_failures == 1


async def test_a_quiet_feed_kept_alive_by_the_idle_probe_is_never_reconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An illiquid symbol: no trade for ten minutes, but the idle probe's answer (the venue's
    list of our streams) proves the feed, so the connection stays."""
    network = FakeNetwork(lambda n: True)
    runner, status, _ = make_runner(network, RunnerSettings(stale_after=30.0))

    async def answer_probes(transport: ScriptedTransport) -> None:
        answered = 0
        while True:
            await transport.sent_more.wait()
            for _, frame in transport.sent[answered:]:
                request = orjson.loads(frame)
                result = ["btcusdt@trade"] if request["method"] == "LIST_SUBSCRIPTIONS" else None
                reply = {"result": result, "id": request["id"]}
                await transport.incoming_send.send(orjson.dumps(reply).decode())
            answered = len(transport.sent)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.wait_attempts(1)
        nursery.start_soon(answer_probes, network.transports[0])
        await trio.sleep(600.0)
        probes = sum("LIST_SUBSCRIPTIONS" in frame for _, frame in network.transports[0].sent)
        nursery.cancel_scope.cancel()
    assert len(network.attempts) == 1 and status.reconnects == 0
    assert probes >= 40  # one per 15 s idle (min(10 s, stale_after / 2) after the last frame)


async def test_a_quiet_feed_without_a_probe_is_rechecked_ever_less_often_without_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No data, every stream acknowledged, the socket alive (its pongs keep coming): maybe an
    illiquid symbol, maybe a stall. Reconnect to find out, as a planned cut, and wait twice as
    long each time."""
    network = FakeNetwork(lambda n: True)
    settings = RunnerSettings(stale_after=10.0, reconnect_interval=1.0)
    runner, status, records = make_runner(network, settings, topics=("publicTrade.BTCUSDT",), venue="bybit")
    pong = '{"success":true,"ret_msg":"pong","conn_id":"c","op":"ping"}'
    ack = '{"success":true,"ret_msg":"","conn_id":"c","req_id":"1","op":"subscribe"}'

    async def pongs() -> None:  # Bybit's answers to its pings, which prove only the socket
        while True:
            await trio.sleep(3.0)
            await network.transports[-1].incoming_send.send(pong)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        nursery.start_soon(pongs)
        for n in range(1, 6):
            transport = await network.opened(n)
            await transport.incoming_send.send(ack)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(network.attempts)]
    assert gaps == pytest.approx([10.0, 20.0, 40.0, 80.0], abs=1.5)
    assert runner.conn.consecutive_failures == 0
    assert "quiet feed" in (status.last_error or "")
    _, events = await received(records)
    assert events == []  # nothing was flowing: nothing to announce


async def test_no_frame_is_dropped_while_the_hub_is_behind_and_control_frames_still_act(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    status = VenueStatus("binance")
    to_hub, from_runner = trio.open_memory_channel[list[MarketData]](1)  # a hub far behind
    runner = ConnectionRunner(
        venue=make_venue("binance"), url="ws://test/stream", name="binance/stream#1",
        topics=("btcusdt@trade",), settings=RunnerSettings(), status=status, records=to_hub,
        validator=Validator({"BTCUSDT"}), open_transport=network.open,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        transport = network.transport
        assert transport is not None

        async def push() -> None:
            for i in range(600):
                await transport.incoming_send.send(trade_frame(i))
            # an error reply for the initial SUBSCRIBE (id 1), behind 600 frames the hub owes
            await transport.incoming_send.send('{"code": 2, "msg": "Invalid request", "id": 1}')

        nursery.start_soon(push)
        await trio.sleep(10)  # the hub is stalled: the reader waits, and nothing is dropped
        got: list[MarketData] = []
        with trio.move_on_after(20):  # on the mock clock: ends the wait if records went missing
            while len(got) < 600:
                got.extend(await from_runner.receive())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [r.trade_id for r in got] == [str(i) for i in range(600)]
    assert status.subscription_errors == {"btcusdt@trade": "code 2: Invalid request"}


class PingVenue:
    """A venue whose heartbeat rule is Bybit's: a JSON ping every interval, a pong owed for each."""

    venue_id = "binance"
    default_url = "ws://test"
    default_rest_url = "http://test"
    max_streams_per_connection = 10
    max_messages_per_second = 10.0
    ping_interval: float | None = 20.0
    ping_mode = "always"
    pong_timeout: float | None = 5.0
    quote_max_age = 5.0
    uppercase_symbols = True

    def __init__(self) -> None:
        self.binance = make_venue("binance")

    def new_session(self) -> PingSession:
        return PingSession(self.binance.new_session())


class PingSession:
    def __init__(self, inner: object) -> None:
        self.inner = inner

    def subscribe(self, topics: list[str]) -> list[Message]:
        return self.inner.subscribe(topics)  # type: ignore[attr-defined, no-any-return]

    def unsubscribe(self, topics: list[str]) -> list[Message]:
        return self.inner.unsubscribe(topics)  # type: ignore[attr-defined, no-any-return]

    def ping(self) -> Message:
        return '{"op": "ping"}'

    def decode(self, frame: Message, received_at: datetime) -> list[object]:
        if frame == '{"op": "pong"}':
            return [Pong()]
        return self.inner.decode(frame, received_at)  # type: ignore[attr-defined, no-any-return]

    def connection_lost(self) -> None:
        pass


def ping_runner(network: FakeNetwork) -> tuple[ConnectionRunner, trio.MemoryReceiveChannel[list[MarketData]]]:
    send, receive = trio.open_memory_channel[list[MarketData]](1000)
    runner = ConnectionRunner(
        venue=PingVenue(),  # type: ignore[arg-type]
        url="ws://test", name="ping#1", topics=("btcusdt@trade",),
        settings=RunnerSettings(stale_after=30.0, reconnect_interval=1.0),
        status=VenueStatus("binance"), records=send, validator=Validator({"BTCUSDT"}),
        open_transport=network.open,
    )
    return runner, receive


async def test_fixed_schedule_pings_go_out_even_while_data_flows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, records = ping_runner(network)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        transport = network.transport
        assert transport is not None
        for i in range(100):  # a trade every second, and a pong for every ping
            await trio.sleep(1.0)
            await transport.incoming_send.send(trade_frame(i))
            await records.receive()
            if transport.sent and transport.sent[-1][1] == '{"op": "ping"}':
                await transport.incoming_send.send('{"op": "pong"}')
                transport.sent.append((trio.current_time(), "answered"))
        nursery.cancel_scope.cancel()
    pings = [t for t, f in transport.sent if f == '{"op": "ping"}']
    assert pings == pytest.approx([20.0, 40.0, 60.0, 80.0, 100.0])
    assert len(network.attempts) == 1


async def test_a_missing_pong_ends_the_connection_within_pong_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, _ = ping_runner(network)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        transport = network.transport
        assert transport is not None

        async def trades() -> None:  # data keeps flowing: only the pong is missing
            for i in range(1000):
                await transport.incoming_send.send(trade_frame(i))
                await trio.sleep(1.0)

        nursery.start_soon(trades)
        await network.wait_attempts(2)
        nursery.cancel_scope.cancel()
    assert runner.conn.last_error == "no pong within 5 s of a ping"
    assert 25.0 <= network.attempts[1] <= 26.0 + 1e-6  # ping at 20 s, 5 s grace, then backoff 0.5-1 s


class RefusingSession:
    """Binance's protocol, except that a ``refuse`` frame is a refusal of request 1 naming one
    topic as bad and asking for the rest of it again (as the Bybit adapter answers Bybit's
    one-bad-topic-fails-the-request replies)."""

    def __init__(self, inner: object, op: str, bad: str, rest: tuple[str, ...]) -> None:
        self.inner = inner
        self.op = op
        self.bad = bad
        self.rest = rest

    def subscribe(self, topics: list[str]) -> list[Message]:
        return self.inner.subscribe(topics)  # type: ignore[attr-defined, no-any-return]

    def unsubscribe(self, topics: list[str]) -> list[Message]:
        return self.inner.unsubscribe(topics)  # type: ignore[attr-defined, no-any-return]

    def ping(self) -> Message | None:
        return None

    def decode(self, frame: Message, received_at: datetime) -> list[object]:
        if frame == "refuse":
            return [
                SubscribeRejected(1, (self.bad,), "invalid topic"),
                Retry(self.op, self.rest, "invalid topic"),  # type: ignore[arg-type]
            ]
        return self.inner.decode(frame, received_at)  # type: ignore[attr-defined, no-any-return]

    def connection_lost(self) -> None:
        pass


@pytest.mark.parametrize("op", ["subscribe", "unsubscribe"])
async def test_a_retry_requests_again_only_the_topics_still_wanted(
    autojump_clock: trio.testing.MockClock, op: str
) -> None:
    network = FakeNetwork(lambda n: True)
    topics = ("a@trade", "bad@trade", "b@trade", "gone@trade")
    runner, status, _ = make_runner(network, RunnerSettings(), topics=topics)
    rest = ("a@trade", "b@trade", "gone@trade")
    binance = runner.venue.new_session
    runner.venue.new_session = lambda: RefusingSession(binance(), op, "bad@trade", rest)  # type: ignore[method-assign, assignment]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        transport = network.transport
        assert transport is not None
        await trio.testing.wait_all_tasks_blocked()
        if op == "subscribe":
            runner.remove_topics(["gone@trade"])  # unsubscribed before the refusal came back
        else:
            runner.remove_topics(["a@trade", "b@trade"])  # gone@trade is still wanted
        await trio.testing.wait_all_tasks_blocked()
        await transport.incoming_send.send("refuse")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    sent = [orjson.loads(f) for _, f in transport.sent]
    assert [r["method"] for r in sent] == ["SUBSCRIBE", "UNSUBSCRIBE", op.upper()]
    assert sent[2]["params"] == ["a@trade", "b@trade"]
    assert status.subscription_errors == {"bad@trade": "invalid topic"}
    assert len(network.attempts) == 1


class LossCountingSession(PingSession):
    """Counts the runner telling it that its connection is gone (quotes it cached are stale)."""

    lost = 0

    def connection_lost(self) -> None:
        LossCountingSession.lost += 1


async def test_the_session_hears_that_its_connection_was_lost(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LossCountingSession, "lost", 0)
    monkeypatch.setattr(
        PingVenue, "new_session", lambda self: LossCountingSession(self.binance.new_session())
    )
    network = FakeNetwork(lambda n: True)
    runner, _ = ping_runner(network)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        assert network.transport is not None
        assert LossCountingSession.lost == 0
        await network.transport.incoming_send.send(TransportError("closed by peer: code 1006"))
        await network.connected.wait()  # the next connection
        assert LossCountingSession.lost == 1
        nursery.cancel_scope.cancel()
    assert LossCountingSession.lost == 2  # the second one ended with the cancellation


async def test_a_connection_lost_as_its_rotation_gives_the_replacement_up_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The replacement delivered nothing within stale_after, and the old connection went stale
    at that same moment. Whichever trio runs first, the runner reconnects: the rotation gives the
    replacement up (which then never takes over), or the old one ends first and the replacement,
    having taken over, goes stale in its turn."""
    network = FakeNetwork(lambda n: True)
    runner, status, records = make_runner(network, RunnerSettings(stale_after=10.0, reconnect_interval=1.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        old = await network.opened(1)
        await old.incoming_send.send(trade_frame(1))
        await old.incoming_send.send(SHUTDOWN)
        await network.opened(2)  # silent: given up after stale_after, as the old one goes stale
        third = await network.opened(3)
        await third.incoming_send.send(trade_frame(2))
        got, _ = await received(records)
        nursery.cancel_scope.cancel()
    assert trade_ids(got) == ["1", "2"]
    assert status.reconnects == 1 and status.rotations in (0, 1)
