"""The generic connection runner: backoff, failure accounting, live subscription changes.

These tests drive the runner through a scripted transport on trio's mock clock, so minutes of
backoff cost nothing; tests/test_daemon.py drives it against the simulator.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import orjson
import pytest
import trio
import trio.testing

from feedd.backoff import Backoff
from feedd.connection import ConnectionRunner, RunnerSettings
from feedd.exchanges import make_venue
from feedd.exchanges.base import Pong, Retry, SubscribeError
from feedd.model import MarketData
from feedd.status import VenueStatus
from feedd.transport import Frame, TransportError
from feedd.validate import Validator


def trade_frame(trade_id: int, symbol: str = "BTCUSDT") -> str:
    now = int(datetime.now(UTC).timestamp() * 1000)
    data = {"e": "trade", "E": now, "s": symbol, "t": trade_id, "p": "100.5", "q": "1", "T": now,
            "m": False, "M": True}
    return orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": data}).decode()


class ScriptedTransport:
    """A connected socket whose incoming frames the test pushes and whose sends it reads."""

    def __init__(self) -> None:
        self.incoming_send, self.incoming = trio.open_memory_channel[Frame | Exception](100)
        self.sent: list[tuple[float, str]] = []
        self.sent_more = trio.Event()

    async def send(self, frame: Frame) -> None:
        self.sent.append((trio.current_time(), str(frame)))
        self.sent_more.set()
        self.sent_more = trio.Event()

    async def receive_batch(self) -> list[Frame]:
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
        self.connected.set()
        self.connected = trio.Event()
        yield transport

    async def wait_attempts(self, n: int) -> None:
        while len(self.attempts) < n:
            await self.changed.wait()


def make_runner(
    network: FakeNetwork, settings: RunnerSettings, *, topics: tuple[str, ...] = ("btcusdt@trade",)
) -> tuple[ConnectionRunner, VenueStatus, trio.MemoryReceiveChannel[list[MarketData]]]:
    status = VenueStatus("binance")
    send, receive = trio.open_memory_channel[list[MarketData]](100)
    runner = ConnectionRunner(
        venue=make_venue("binance"),
        url="ws://test/stream",
        name="binance/stream#1",
        topics=topics,
        settings=settings,
        status=status,
        records=send,
        validator=Validator({"BTCUSDT"}),
        open_transport=network.open,
        backoff=Backoff(settings.reconnect_interval, settings.max_backoff, rng=random.Random(1)),
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
    assert status.messages == 5


async def test_an_adapter_bug_is_a_connection_failure_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(lambda n: True)
    runner, status, _ = make_runner(network, RunnerSettings(reconnect_interval=1.0))

    def broken_decode(frame: Frame, received_at: datetime) -> list[object]:
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
    assert runner.conn.last_error == "stale feed: no frame for 30 s"


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


async def test_a_venue_that_shuts_down_every_new_connection_meets_the_backoff_ladder(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server in maintenance answering each connect with serverShutdown: no reconnect storm."""
    settings = RunnerSettings(reconnect_interval=1.0, max_backoff=60.0, max_retries=0)
    network = FakeNetwork(lambda n: True)
    runner, _, _ = make_runner(network, settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        for n in range(1, 7):
            await network.wait_attempts(n)
            await trio.testing.wait_all_tasks_blocked()
            assert network.transport is not None
            await network.transport.incoming_send.send(SHUTDOWN)
        await network.wait_attempts(7)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(network.attempts, network.attempts[1:], strict=False)]
    for n, gap in enumerate(gaps):
        assert 2.0**n / 2 <= gap <= 2.0**n + 1e-6, (n, gap)
    assert runner.conn.consecutive_failures == 6
    assert "serverShutdown" in (runner.conn.last_error or "")


async def test_planned_reconnects_of_stable_connections_are_never_closer_than_reconnect_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = RunnerSettings(reconnect_interval=5.0, max_backoff=60.0, stable_after=1.0)
    network = FakeNetwork(lambda n: True)
    runner, _, records = make_runner(network, settings)
    shutdowns: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        for n in range(1, 4):
            await network.wait_attempts(n)
            await trio.testing.wait_all_tasks_blocked()
            transport = network.transport
            assert transport is not None
            await transport.incoming_send.send(trade_frame(2 * n))
            await records.receive()
            await trio.sleep(1.0)
            await transport.incoming_send.send(trade_frame(2 * n + 1))  # stable from here on
            await records.receive()
            assert runner.conn.stable
            shutdowns.append(trio.current_time())
            await transport.incoming_send.send(SHUTDOWN)
        await network.wait_attempts(4)
        nursery.cancel_scope.cancel()
    assert network.attempts[1] == pytest.approx(shutdowns[0])  # the first one is immediate
    # the next ones wait until reconnect_interval has passed since the previous planned one
    assert network.attempts[2] == pytest.approx(network.attempts[1] + 5.0)
    assert network.attempts[3] == pytest.approx(network.attempts[2] + 5.0)
    assert runner.conn.consecutive_failures == 0  # planned, healthy: never a failure


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

    def subscribe(self, topics: list[str]) -> list[Frame]:
        return self.inner.subscribe(topics)  # type: ignore[attr-defined, no-any-return]

    def unsubscribe(self, topics: list[str]) -> list[Frame]:
        return self.inner.unsubscribe(topics)  # type: ignore[attr-defined, no-any-return]

    def ping(self) -> Frame:
        return '{"op": "ping"}'

    def decode(self, frame: Frame, received_at: datetime) -> list[object]:
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

    def subscribe(self, topics: list[str]) -> list[Frame]:
        return self.inner.subscribe(topics)  # type: ignore[attr-defined, no-any-return]

    def unsubscribe(self, topics: list[str]) -> list[Frame]:
        return self.inner.unsubscribe(topics)  # type: ignore[attr-defined, no-any-return]

    def ping(self) -> Frame | None:
        return None

    def decode(self, frame: Frame, received_at: datetime) -> list[object]:
        if frame == "refuse":
            return [
                SubscribeError(1, (self.bad,), "invalid topic"),
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
