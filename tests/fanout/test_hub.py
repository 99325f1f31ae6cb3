from __future__ import annotations

import logging
import threading
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

import feedd.fanout.hub
import feedd.feed.attempt
from feedd.codec import encode_record
from feedd.fanout.callback import CallbackSink
from feedd.fanout.hub import Hub
from feedd.model import Disconnected, FeedEvent, MarketData, Reconnected

T0 = datetime(2024, 8, 8, 6, 53, 2, 668000, tzinfo=UTC)
TIMEOUT = 10


def rec(i: int) -> MarketData:
    return MarketData(
        exchange="binance",
        symbol="BTCUSDT",
        kind="trade",
        price=61837.63 + i,
        volume=0.02,
        timestamp=T0,
        received_at=T0,
        side="buy",
        trade_id=str(i),
    )


class SpySink:
    def __init__(self, wants_encoded: bool = True) -> None:
        self.wants_encoded = wants_encoded
        self.offers: list[tuple[list[MarketData], Sequence[bytes]]] = []
        #: offers and feed events, in the order they came
        self.log: list[list[MarketData] | FeedEvent] = []

    def offer(self, records: Sequence[MarketData], encoded: Sequence[bytes]) -> None:
        self.offers.append((list(records), encoded))
        self.log.append(list(records))

    def notice(self, event: FeedEvent) -> None:
        self.log.append(event)

    @property
    def records(self) -> list[MarketData]:
        return [r for records, _ in self.offers for r in records]


class SignallingSink(SpySink):
    def __init__(self) -> None:
        super().__init__()
        self.first_offer = trio.Event()

    def offer(self, records: Sequence[MarketData], encoded: Sequence[bytes]) -> None:
        super().offer(records, encoded)
        self.first_offer.set()


@pytest.fixture
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> list[MarketData]:
    calls: list[MarketData] = []

    def counting(record: MarketData) -> bytes:
        calls.append(record)
        return encode_record(record)

    monkeypatch.setattr(feedd.fanout.hub, "encode_record", counting)
    return calls


async def test_each_record_is_encoded_once_for_all_sinks(
    nursery: trio.Nursery, encode_calls: list[MarketData]
) -> None:
    hub = Hub()
    sinks = [SpySink() for _ in range(3)]
    for sink in sinks:
        hub.attach(sink)
    await nursery.start(hub.run)
    batch = [rec(i) for i in range(5)]
    async with hub.sender() as send:
        await send.send(batch)
        await wait_all_tasks_blocked()

    assert encode_calls == batch
    first = sinks[0].offers[0][1]
    assert list(first) == [encode_record(r) for r in batch]
    for sink in sinks:
        assert sink.records == batch
        assert sink.offers[0][1] is first  # the very same lines, not copies


async def test_nothing_is_encoded_when_no_sink_wants_bytes(
    nursery: trio.Nursery, encode_calls: list[MarketData]
) -> None:
    hub = Hub()
    await nursery.start(hub.run)
    send = hub.sender()
    await send.send([rec(0), rec(1)])
    await wait_all_tasks_blocked()
    assert hub.records == 2

    plain = SpySink(wants_encoded=False)
    hub.attach(plain)
    await send.send([rec(2)])
    await wait_all_tasks_blocked()

    assert encode_calls == []
    assert plain.offers == [([rec(2)], ())]


async def test_all_queued_batches_are_drained_in_one_wakeup(nursery: trio.Nursery) -> None:
    hub = Hub(buffer=8)
    sink = SignallingSink()
    hub.attach(sink)
    send = hub.sender()
    batches = [[rec(3 * b + i) for i in range(3)] for b in range(4)]
    for batch in batches:
        send.send_nowait(batch)

    # A task woken by the first offer must find every queued batch already offered: the hub
    # does not yield between batches of one wakeup.
    seen_by_other_task: list[int] = []

    async def watch() -> None:
        await sink.first_offer.wait()
        seen_by_other_task.append(len(sink.records))

    nursery.start_soon(watch)
    await wait_all_tasks_blocked()
    await nursery.start(hub.run)
    await wait_all_tasks_blocked()

    assert seen_by_other_task == [12]
    assert hub.wakeups == 1
    assert hub.batches == 4
    assert hub.records == 12
    assert sink.records == [r for batch in batches for r in batch]


async def test_run_returns_once_closed_and_every_sender_is_closed() -> None:
    hub = Hub()
    sink = SpySink()
    hub.attach(sink)
    first, second = hub.sender(), hub.sender()
    hub.close()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            async with first:
                await first.send([rec(0)])
            await wait_all_tasks_blocked()
            assert sink.records == [rec(0)]  # still running: `second` is open
            async with second:
                await second.send([rec(1)])
    assert sink.records == [rec(0), rec(1)]


async def test_detached_sink_receives_nothing_more(nursery: trio.Nursery) -> None:
    hub = Hub()
    sink = SpySink()
    hub.attach(sink)
    await nursery.start(hub.run)
    send = hub.sender()
    await send.send([rec(0)])
    await wait_all_tasks_blocked()
    hub.detach(sink)
    hub.detach(sink)  # idempotent
    await send.send([rec(1)])
    await wait_all_tasks_blocked()
    assert sink.records == [rec(0)]
    assert hub.sinks == ()


async def test_a_raising_sink_is_detached_and_the_others_still_served(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        wants_encoded = True

        def offer(self, records: Sequence[MarketData], encoded: Sequence[bytes]) -> None:
            raise RuntimeError("bug")

    hub = Hub()
    broken, good = Broken(), SpySink()
    hub.attach(broken)
    hub.attach(good)
    await nursery.start(hub.run)
    send = hub.sender()
    await send.send([rec(0)])
    await send.send([rec(1)])
    await wait_all_tasks_blocked()
    assert good.records == [rec(0), rec(1)]
    assert hub.sinks == (good,)
    assert "detaching" in caplog.text


def collecting(seen: list[MarketData], until: Callable[[MarketData], bool], done: trio.Event
               ) -> Callable[[MarketData], None]:
    """A plain callback appending to ``seen``: it runs in a worker thread, so it reaches the
    trio event through ``trio.from_thread``."""

    def callback(record: MarketData) -> None:
        seen.append(record)
        if until(record):
            trio.from_thread.run_sync(done.set)

    return callback


async def test_callback_sink_delivers_in_order_to_sync_and_async_callbacks(
    nursery: trio.Nursery,
) -> None:
    seen_sync: list[MarketData] = []
    seen_async: list[MarketData] = []
    sync_done = trio.Event()

    async def async_cb(record: MarketData) -> None:
        await trio.lowlevel.checkpoint()
        seen_async.append(record)

    hub = Hub()
    sinks = [CallbackSink(collecting(seen_sync, lambda r: r.trade_id == "2", sync_done), buffer=100),
             CallbackSink(async_cb, buffer=100)]
    for sink in sinks:
        hub.attach(sink)
        await nursery.start(sink.run)
    await nursery.start(hub.run)
    send = hub.sender()
    await send.send([rec(0), rec(1)])
    await send.send([rec(2)])
    with trio.fail_after(TIMEOUT):
        await sync_done.wait()
    await wait_all_tasks_blocked()

    expected = [rec(0), rec(1), rec(2)]
    assert seen_sync == expected
    assert seen_async == expected
    assert sinks[1].delivered == 3  # the sync one counts a record once its call has returned


async def test_a_blocking_sync_callback_stalls_neither_the_hub_nor_the_other_callbacks(
    nursery: trio.Nursery,
) -> None:
    total = 200
    records = [rec(i) for i in range(total)]
    inside, caught_up = trio.Event(), trio.Event()
    release = threading.Event()  # set by the test at the end: until then the call blocks

    def blocking(record: MarketData) -> None:
        if record.trade_id == "0":
            trio.from_thread.run_sync(inside.set)  # only possible from a thread, off the loop
            release.wait()
        elif record.trade_id == str(total - 1):
            trio.from_thread.run_sync(caught_up.set)

    seen_async: list[MarketData] = []
    async_done = trio.Event()

    async def quick(record: MarketData) -> None:
        seen_async.append(record)
        if len(seen_async) == total:
            async_done.set()

    seen_sync: list[MarketData] = []
    sync_done = trio.Event()
    hub = Hub()
    stuck = CallbackSink(blocking, buffer=3)
    sinks = [stuck, CallbackSink(quick, buffer=total),
             CallbackSink(collecting(seen_sync, lambda r: len(seen_sync) == total, sync_done), buffer=total)]
    for sink in sinks:
        hub.attach(sink)
        await nursery.start(sink.run)
    await nursery.start(hub.run)
    send = hub.sender()
    try:
        with trio.fail_after(TIMEOUT):
            await send.send(records[:1])
            await inside.wait()  # the blocking callback is in its call, in its thread
            for record in records[1:]:
                await send.send([record])
            await async_done.wait()
            await sync_done.wait()
            # everything went through while the blocking call still blocks
            blocked_throughout = not release.is_set() and stuck.delivered == 0
            hub_records = hub.records
    finally:
        release.set()
    with trio.fail_after(TIMEOUT):
        await caught_up.wait()  # released, it gets what its buffer kept: the newest records
    assert blocked_throughout and hub_records == total
    assert seen_async == records
    assert seen_sync == records  # every record, in order
    assert stuck.dropped == total - 1 - 3
    assert stuck.delivered >= 1


async def test_callback_sink_drops_oldest_when_full(nursery: trio.Nursery) -> None:
    seen: list[MarketData] = []
    done = trio.Event()
    sink = CallbackSink(collecting(seen, lambda r: r.trade_id == "9", done), buffer=4)
    sink.offer([rec(i) for i in range(3)], ())
    sink.offer([rec(i) for i in range(3, 10)], ())
    assert sink.dropped == 6

    await nursery.start(sink.run)
    with trio.fail_after(TIMEOUT):
        await done.wait()
    assert seen == [rec(i) for i in range(6, 10)]


async def test_callback_sink_survives_a_raising_callback(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[MarketData] = []
    done = trio.Event()

    def callback(record: MarketData) -> None:
        if record.trade_id in ("1", "2"):
            raise ValueError(f"cannot take {record.trade_id}")
        seen.append(record)
        if record.trade_id == "4":
            trio.from_thread.run_sync(done.set)

    sink = CallbackSink(callback, buffer=10)
    await nursery.start(sink.run)
    with caplog.at_level(logging.ERROR, logger="feedd.fanout.callback"):
        sink.offer([rec(0), rec(1), rec(2), rec(3), rec(4)], ())
        with trio.fail_after(TIMEOUT):
            await done.wait()

    assert seen == [rec(0), rec(3), rec(4)]
    assert sink.errors == 2
    assert sink.delivered >= 2  # 0 and 3; 4 once its call has returned
    # The first failure is logged with its traceback; the second, right after, is rate-limited.
    failures = [r for r in caplog.records if "data callback" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "cannot take 1" in caplog.text


async def test_lines_handed_to_sinks_take_no_more_memory_than_their_bytes(nursery: trio.Nursery) -> None:
    """orjson's results keep their whole working buffer; a subscriber buffering 10,000 of them
    would hold ~80 MB instead of ~3 MB. The hub hands sinks compact lines."""
    hub = Hub()
    sink = SpySink()
    hub.attach(sink)
    await nursery.start(hub.run)
    batch = [rec(i) for i in range(1000)]
    send = hub.sender()
    tracemalloc.start()
    try:
        await send.send(batch)
        await wait_all_tasks_blocked()
        lines = sink.offers[0][1]
        held, _peak = tracemalloc.get_traced_memory()  # what is still allocated: mostly the lines
    finally:
        tracemalloc.stop()
    assert len(lines) == 1000
    payload = sum(len(line) for line in lines)
    assert held < payload + 1000 * 64 + 16_384  # the bytes, object headers, and the list


async def test_batches_queued_together_reach_each_sink_as_one_offer(nursery: trio.Nursery) -> None:
    """One offer per wakeup, so a sink writes once for everything every connection delivered."""
    hub = Hub()
    sink = SpySink()
    hub.attach(sink)
    send = hub.sender()
    batches = [[rec(2 * b), rec(2 * b + 1)] for b in range(5)]
    for batch in batches:
        send.send_nowait(batch)
    await nursery.start(hub.run)
    await wait_all_tasks_blocked()
    assert [records for records, _ in sink.offers] == [[r for batch in batches for r in batch]]
    assert batches[0] == [rec(0), rec(1)]  # the producers' own lists are left alone
    assert (hub.wakeups, hub.batches, hub.records) == (1, 5, 10)


DOWN = Disconnected("binance", ("BTCUSDT",), T0, "closed by peer: code 1006")
UP = Reconnected("binance", ("BTCUSDT",), T0, 1.5)


async def test_a_feed_event_splits_queued_batches_and_reaches_every_sink_in_its_place(
    nursery: trio.Nursery,
) -> None:
    hub = Hub()
    spy = SpySink()
    hub.attach(spy)
    send = hub.sender()
    for item in ([rec(0)], [rec(1)], DOWN, UP, [rec(2)], [rec(3)]):
        send.send_nowait(item)
    await nursery.start(hub.run)  # everything queued: one wakeup
    await wait_all_tasks_blocked()
    assert spy.log == [[rec(0), rec(1)], DOWN, UP, [rec(2), rec(3)]]
    assert (hub.wakeups, hub.events, hub.records) == (1, 2, 4)


async def test_callbacks_hear_feed_events_in_order_only_when_they_ask(nursery: trio.Nursery) -> None:
    heard: dict[str, list[object]] = {"records": [], "both": [], "events": []}

    def into(key: str) -> Callable[[object], Awaitable[None]]:
        async def callback(item: object) -> None:
            heard[key].append(item)
        return callback

    hub = Hub()
    sinks = [CallbackSink(into("records")), CallbackSink(into("both"), events=True),
             CallbackSink(into("events"), data=False, events=True)]
    for sink in sinks:
        hub.attach(sink)
        await nursery.start(sink.run)
    await nursery.start(hub.run)
    send = hub.sender()
    for item in ([rec(0)], DOWN, UP, [rec(1)]):
        await send.send(item)
    await wait_all_tasks_blocked()
    assert heard == {
        "records": [rec(0), rec(1)],
        "both": [rec(0), DOWN, UP, rec(1)],
        "events": [DOWN, UP],
    }


async def test_an_idle_hub_fans_a_batch_out_in_the_producers_own_task(nursery: trio.Nursery) -> None:
    """No task switch per batch when nothing is queued: the reader's call is the dispatch."""
    hub = Hub()
    sink = SpySink()
    hub.attach(sink)
    send = hub.sender()
    await nursery.start(hub.run)
    await wait_all_tasks_blocked()
    deliver_now = feedd.feed.attempt.DIRECT[send]
    assert deliver_now([rec(0), rec(1)]) is True
    assert sink.records == [rec(0), rec(1)]  # before any other task ran
    assert (hub.direct, hub.wakeups, hub.batches, hub.records) == (1, 0, 1, 2)


async def test_a_hub_with_a_batch_on_its_way_refuses_direct_delivery_so_order_is_kept(
    nursery: trio.Nursery,
) -> None:
    hub = Hub()
    sink = SpySink()
    hub.attach(sink)
    send = hub.sender()
    await nursery.start(hub.run)
    await wait_all_tasks_blocked()
    send.send_nowait([rec(0)])  # handed to the waiting hub, which has not run yet
    assert hub.deliver_now([rec(1)]) is False
    send.send_nowait([rec(1)])
    await wait_all_tasks_blocked()
    assert sink.records == [rec(0), rec(1)]
    assert hub.deliver_now([rec(2)]) is True  # idle again
    assert sink.records == [rec(0), rec(1), rec(2)]


async def test_a_hub_that_is_not_running_takes_nothing_directly() -> None:
    """Before its task starts (or after it ended) batches wait in the channel, bounded."""
    hub = Hub()
    sink = SpySink()
    hub.attach(sink)
    hub.sender()
    assert hub.deliver_now([rec(0)]) is False
    assert sink.records == []
