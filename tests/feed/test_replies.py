"""The venue's answers to live subscription changes, as the runner and the supervisor track them.

The ledger's rules come first, without trio; then a scripted transport plays Binance's replies on
trio's mock clock; tests/http/ checks the same against the simulator through the HTTP API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import trio
import trio.testing

from feedd.config import ExchangeConfig
from feedd.errors import NoAnswer, TransportError, VenueRefused
from feedd.exchanges import make_venue
from feedd.feed.replies import Reply, ReplyLedger
from feedd.feed.runner import ConnectionRunner, RunnerSettings
from feedd.feed.status import VenueStatus
from feedd.feed.supervisor import VenueSupervisor
from feedd.feed.validate import Validator
from feedd.model import MarketData
from feedd.wire.transport import Message


class Wire:
    """A connected socket the test answers by hand: it reads what the runner sent, and replies."""

    def __init__(self) -> None:
        self.incoming_send, self.incoming = trio.open_memory_channel[Message | Exception](100)
        self.requests: list[dict[str, object]] = []
        self.sent = trio.Event()

    async def send(self, frame: Message) -> None:
        self.requests.append(orjson.loads(frame))
        self.sent.set()
        self.sent = trio.Event()

    async def receive_batch(self) -> list[Message]:
        item = await self.incoming.receive()
        if isinstance(item, Exception):
            raise item
        return [item]

    async def aclose(self) -> None:
        pass

    async def request(self, method: str) -> dict[str, object]:
        """The next request of ``method`` the runner sends (waits for it)."""
        while True:
            for request in self.requests:
                if request["method"] == method:
                    self.requests.remove(request)
                    return request
            await self.sent.wait()

    def ack(self, request: dict[str, object]) -> None:
        self.incoming_send.send_nowait(orjson.dumps({"result": None, "id": request["id"]}).decode())

    def refuse(self, request: dict[str, object], msg: str = "Invalid request: invalid stream") -> None:
        reply = {"code": 2, "msg": msg, "id": request["id"]}
        self.incoming_send.send_nowait(orjson.dumps(reply).decode())


class Network:
    """``open_transport`` stand-in: every connect succeeds with a fresh :class:`Wire`."""

    def __init__(self) -> None:
        self.wire: Wire | None = None
        self.connected = trio.Event()

    @asynccontextmanager
    async def open(self, url: str, *, connect_timeout: float) -> AsyncIterator[Wire]:
        self.wire = Wire()
        self.connected.set()
        self.connected = trio.Event()
        yield self.wire


def make_runner(network: Network) -> ConnectionRunner:
    send, _ = trio.open_memory_channel[list[MarketData]](100)
    return ConnectionRunner(
        venue=make_venue("binance"), url="ws://test/stream", name="binance/stream#1",
        topics=(), settings=RunnerSettings(), status=VenueStatus("binance"), records=send,
        validator=Validator(set()), open_transport=network.open,
    )


async def test_a_subscribe_reply_resolves_when_the_venue_acknowledges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = Network()
    runner = make_runner(network)
    runner.add_topics(["btcusdt@trade"])
    reply = runner.replies["btcusdt@trade"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        assert network.wire is not None
        request = await network.wire.request("SUBSCRIBE")
        assert not reply.done.is_set()
        network.wire.ack(request)
        await reply.done.wait()
        nursery.cancel_scope.cancel()
    assert reply.error is None


async def test_a_refusal_resolves_the_reply_with_the_venues_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = Network()
    runner = make_runner(network)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        assert network.wire is not None
        runner.add_topics(["bad-name@trade"])
        reply = runner.replies["bad-name@trade"]
        network.wire.refuse(await network.wire.request("SUBSCRIBE"))
        await reply.done.wait()
        nursery.cancel_scope.cancel()
    assert reply.error == "code 2: Invalid request: invalid stream"


async def test_a_subscribe_made_while_disconnected_is_answered_after_the_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = Network()
    runner = make_runner(network)
    runner.add_topics(["btcusdt@trade"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        first = network.wire
        assert first is not None
        await first.request("SUBSCRIBE")  # never answered: the connection drops
        runner.add_topics(["ethusdt@trade"])
        reply = runner.replies["ethusdt@trade"]
        first.incoming_send.send_nowait(TransportError("closed by peer"))
        await network.connected.wait()
        second = network.wire
        assert second is not None and second is not first
        request = await second.request("SUBSCRIBE")
        assert set(request["params"]) == {"btcusdt@trade", "ethusdt@trade"}  # type: ignore[arg-type]
        assert not reply.done.is_set()
        second.ack(request)
        await reply.done.wait()
        nursery.cancel_scope.cancel()
    assert reply.error is None
    assert runner.replies["btcusdt@trade"].done.is_set()


async def test_an_unsubscribe_reply_resolves_on_the_ack_or_when_the_connection_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = Network()
    runner = make_runner(network)
    runner.add_topics(["btcusdt@trade", "ethusdt@trade", "solusdt@trade"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        wire = network.wire
        assert wire is not None
        wire.ack(await wire.request("SUBSCRIBE"))
        runner.remove_topics(["ethusdt@trade"])
        acked = runner.replies["ethusdt@trade"]
        wire.ack(await wire.request("UNSUBSCRIBE"))
        await acked.done.wait()
        runner.remove_topics(["solusdt@trade"])
        lost = runner.replies["solusdt@trade"]
        await wire.request("UNSUBSCRIBE")
        wire.incoming_send.send_nowait(TransportError("closed by peer"))
        await lost.done.wait()
        nursery.cancel_scope.cancel()
    assert acked.error is None and lost.error is None
    assert set(runner.replies) == {"btcusdt@trade"}  # answered unsubscribes are forgotten


async def test_re_adding_a_topic_settles_its_unanswered_unsubscribe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = Network()
    runner = make_runner(network)
    runner.add_topics(["btcusdt@trade"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        runner.remove_topics(["btcusdt@trade"])
        unsubscribe = runner.replies["btcusdt@trade"]
        runner.add_topics(["btcusdt@trade"])
        nursery.cancel_scope.cancel()
    assert unsubscribe.done.is_set() and unsubscribe.error is None
    assert runner.replies["btcusdt@trade"].op == "subscribe"


def make_supervisor(network: Network) -> VenueSupervisor:
    send, _ = trio.open_memory_channel[list[MarketData]](100)
    return VenueSupervisor(
        make_venue("binance"), ExchangeConfig(check_symbols=False), RunnerSettings(),
        cache_dir="/nonexistent", records=send, open_transport=network.open,
    )


async def test_a_confirmed_subscribe_that_the_venue_refuses_is_rolled_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = Network()
    supervisor = make_supervisor(network)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)

        async def refuse() -> None:
            await network.connected.wait()
            assert network.wire is not None
            network.wire.refuse(await network.wire.request("SUBSCRIBE"))

        nursery.start_soon(refuse)
        with pytest.raises(VenueRefused, match="bad-name@trade: code 2: Invalid request"):
            await supervisor.subscribe_confirmed("BAD-NAME", ["trades"], trio.current_time() + 10)
        nursery.cancel_scope.cancel()
    assert supervisor.subscriptions() == []
    assert "bad-name@trade" not in supervisor.status.subscription_errors


async def test_a_confirmed_subscribe_without_an_answer_names_the_pending_streams_and_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = Network()
    supervisor = make_supervisor(network)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        with pytest.raises(NoAnswer) as raised:
            await supervisor.subscribe_confirmed("BTCUSDT", ["trades", "ticker"], trio.current_time() + 5)
        nursery.cancel_scope.cancel()
    assert raised.value.pending == ("btcusdt@ticker", "btcusdt@trade")
    assert "no answer from the exchange" in str(raised.value)
    assert [supervisor.state_of(s) for s in supervisor.subscriptions()] == ["pending", "pending"]


# ---- the ledger alone (no trio run: its events are only set and read) ------------------------

def test_every_carried_topic_awaits_a_subscribe_reply_which_an_ack_resolves() -> None:
    ledger = ReplyLedger(["a@trade", "b@trade"])
    ledger.record(["a@trade"], "subscribe", None)
    a, b = ledger.replies["a@trade"], ledger.replies["b@trade"]
    assert a.done.is_set() and a.error is None and not b.done.is_set()


def test_an_error_answers_whichever_request_the_topic_awaits() -> None:
    ledger = ReplyLedger(["a@trade"])
    ledger.replace("b@trade", Reply("unsubscribe"))
    unsubscribe = ledger.replies["b@trade"]
    ledger.record(["a@trade", "b@trade"], "error", "code 2")
    assert ledger.replies["a@trade"].error == "code 2"
    assert unsubscribe.done.is_set() and unsubscribe.error == "code 2"
    assert "b@trade" not in ledger.replies  # an answered unsubscribe is forgotten


def test_an_answer_for_the_other_operation_is_ignored() -> None:
    ledger = ReplyLedger(["a@trade"])
    ledger.record(["a@trade"], "unsubscribe", None)
    ledger.record(["nobody@trade"], "subscribe", None)
    assert not ledger.replies["a@trade"].done.is_set() and set(ledger.replies) == {"a@trade"}


def test_a_later_answer_after_a_reconnect_replaces_the_settled_one() -> None:
    ledger = ReplyLedger(["a@trade"])
    ledger.record(["a@trade"], "subscribe", None)
    first = ledger.replies["a@trade"]
    ledger.record(["a@trade"], "error", "refused this time")
    second = ledger.replies["a@trade"]
    assert second is not first and (first.error, second.error) == (None, "refused this time")


def test_a_new_request_withdraws_a_pending_subscribe_and_settles_a_pending_unsubscribe() -> None:
    ledger = ReplyLedger(["a@trade"])
    subscribe = ledger.replies["a@trade"]
    ledger.replace("a@trade", Reply("unsubscribe"))
    assert subscribe.withdrawn and subscribe.done.is_set() and subscribe.error is None
    unsubscribe = ledger.replies["a@trade"]
    ledger.replace("a@trade", Reply("subscribe"))
    assert unsubscribe.done.is_set() and not unsubscribe.withdrawn
    ledger.replace("a@trade", None)
    assert "a@trade" not in ledger.replies


def test_unsubscribes_awaited_when_the_connection_goes_are_done_and_subscribes_stay() -> None:
    ledger = ReplyLedger(["a@trade"])
    ledger.replace("b@trade", Reply("unsubscribe"))
    unsubscribe = ledger.replies["b@trade"]
    ledger.connection_gone()
    assert unsubscribe.done.is_set() and unsubscribe.error is None
    assert set(ledger.replies) == {"a@trade"} and not ledger.replies["a@trade"].done.is_set()
