"""The backfiller's own rules, without a simulator: each trade once, a gap older than the REST
keeps is reported lost without asking, and a symbol is never held beyond ``backfill_hold``; for
a venue recovered by time, what lies between the anchor and the held trades in the REST's
order, each trade once."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

import httpx
import trio
import trio.testing

from feedd.exchanges.binance import BinanceSpot
from feedd.exchanges.okx import Okx
from feedd.feed.backfill import Backfiller, BackfillSettings
from feedd.feed.status import VenueStatus
from feedd.feed.validate import Validator
from feedd.model import Backfilled, Ingress, MarketData, trade_record

T0 = datetime(2026, 12, 7, 12, tzinfo=UTC)


def trade(n: int, at: datetime = T0, symbol: str = "BTCUSDT") -> MarketData:
    return trade_record("binance", symbol, 100.0, 1.0, at, at, "buy", str(n))


def backfiller(rest_url: str = "http://127.0.0.1:9", **settings: float) -> tuple[
    Backfiller, VenueStatus, trio.MemoryReceiveChannel[Ingress]
]:
    send, receive = trio.open_memory_channel[Ingress](100)
    status = VenueStatus("binance")
    made = Backfiller(BinanceSpot(), "binance", rest_url, send, status, Validator({"BTCUSDT", "ETHUSDT"}),
                      BackfillSettings(**settings))  # type: ignore[arg-type]
    return made, status, receive


def test_a_trade_delivered_already_is_dropped_and_counted() -> None:
    made, status, _ = backfiller()
    assert made.sift([trade(1), trade(2)]) == [trade(1), trade(2)]
    assert made.sift([trade(2), trade(3), trade(1)]) == [trade(3)]  # e.g. a rotation's overlap
    assert status.duplicates == 2


def test_records_other_than_trades_and_other_symbols_pass_untouched() -> None:
    made, _, _ = backfiller()
    ticker = MarketData("binance", "BTCUSDT", "ticker", 1.0, 1.0, T0, T0)
    assert made.sift([trade(5), ticker, trade(1, symbol="ETHUSDT")]) == [
        trade(5), ticker, trade(1, symbol="ETHUSDT")
    ]


def test_interleaved_symbols_keep_their_own_ids_within_a_batch_and_across_batches() -> None:
    made, status, _ = backfiller(max_trades=0)  # a jump is reported lost at once: no fetch
    eth = functools.partial(trade, symbol="ETHUSDT")
    assert made.sift([trade(1), eth(7), trade(2), eth(8), eth(8), trade(2), trade(3)]) == [
        trade(1), eth(7), trade(2), eth(8), trade(3)
    ]
    assert status.duplicates == 2
    assert made.sift([eth(9), trade(3), trade(4), eth(9)]) == [eth(9), trade(4)]
    assert status.duplicates == 4
    assert status.lost_trades == 0
    assert made.sift([trade(6), eth(12)]) == [trade(6), eth(12)]  # 5 missed, and 10..11
    assert status.lost_trades == 3


def test_after_forget_a_resubscribed_symbol_starts_afresh() -> None:
    made, status, _ = backfiller()
    made.sift([trade(10)])
    made.forget("BTCUSDT")
    assert made.sift([trade(5_000)]) == [trade(5_000)]  # no gap 11..4999 to fetch
    assert status.lost_trades == 0


async def test_a_gap_older_than_max_age_is_lost_without_a_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    made, status, receive = backfiller(max_age=60.0)
    async with trio.open_nursery() as nursery:
        made.attach(nursery)
        made.sift([trade(1)])
        late = trade(11, T0 + timedelta(minutes=5))
        assert made.sift([late]) == [late]  # not held: nothing will be fetched
    event = receive.receive_nowait()
    assert isinstance(event, Backfilled)
    assert (event.recovered, event.lost, event.missing) == (0, 9, (2, 10))
    assert event.reason is not None and "backfill_max_age" in event.reason
    assert status.lost_trades == 9


async def test_a_hanging_rest_holds_the_symbol_only_for_backfill_hold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hang(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, hang, 0)
        port = listeners[0].socket.getsockname()[1]
        made, status, receive = backfiller(f"http://127.0.0.1:{port}", hold=2.0)
        made.attach(nursery)
        made.sift([trade(1)])
        start = trio.current_time()
        assert made.sift([trade(5)]) == []  # held
        assert made.sift([trade(6)]) == []
        released = await receive.receive()
        assert trio.current_time() - start == 2.0
        assert released == [trade(5), trade(6)]
        await trio.testing.wait_all_tasks_blocked()  # the release is over
        assert made.sift([trade(7)]) == [trade(7)]  # no longer held
        event = await receive.receive()  # the fetch timed out later: reported, late
        assert isinstance(event, Backfilled)
        assert (event.recovered, event.lost, event.late) == (0, 3, True)
        assert event.reason is not None and event.reason.startswith("REST unavailable")
        await made.aclose()
        nursery.cancel_scope.cancel()
    assert status.lost_trades == 3


# ---- recovery by time (ids not consecutive) -----------------------------------------------------


def okx_trade(trade_id: str, second: int) -> MarketData:
    at = T0 + timedelta(seconds=second)
    return trade_record("okx", "BTC-USDT", 100.0, 1.0, at, at, "buy", trade_id)


def time_backfiller(rows: list[MarketData], **settings: float) -> tuple[
    Backfiller, VenueStatus, trio.MemoryReceiveChannel[Ingress], list[str]
]:
    """A backfiller of OKX whose REST answers ``rows`` (oldest first) as ``market/trades``."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        data = [{"instId": r.symbol, "tradeId": r.trade_id, "px": "100", "sz": "1", "side": "buy",
                 "ts": str(int(r.timestamp.timestamp() * 1000))} for r in reversed(rows)]
        return httpx.Response(200, json={"code": "0", "msg": "", "data": data})

    send, receive = trio.open_memory_channel[Ingress](100)
    status = VenueStatus("okx")
    made = Backfiller(
        Okx(), "okx", "http://okx.test", send, status, Validator({"BTC-USDT"}),
        BackfillSettings(**settings),  # type: ignore[arg-type]
        lambda: httpx.AsyncClient(transport=httpx.MockTransport(answer)),
    )
    return made, status, receive, asked


def ids(batch: object) -> list[tuple[str | None, bool]]:
    assert isinstance(batch, list)
    return [(r.trade_id, r.backfilled) for r in batch]


async def test_a_break_is_filled_from_the_latest_trades_between_the_anchor_and_the_held_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # the tape: a b | c d e (missed) | f g (live after the reconnect) h (newer than the held)
    tape = [okx_trade(n, i) for i, n in enumerate("abcdefgh")]
    made, status, receive, asked = time_backfiller(tape)
    async with trio.open_nursery() as nursery:
        made.attach(nursery)
        assert made.sift(tape[:2]) == tape[:2]
        made.broken(["BTC-USDT"])
        assert made.sift([tape[5], tape[6]]) == []  # held while the REST is asked
        event = await receive.receive()
        assert isinstance(event, Backfilled)
        assert (event.recovered, event.lost, event.missing, event.reason) == (3, 0, (0, 0), None)
        released = await receive.receive()
        # the missed ones in the exchange's order, then the held live ones (not flagged), once
        assert ids(released) == [("c", True), ("d", True), ("e", True), ("f", False), ("g", False)]
        await trio.testing.wait_all_tasks_blocked()  # the release is over (it ends after its send)
        assert made.sift([tape[7]]) == [tape[7]]  # no longer held
        nursery.cancel_scope.cancel()
    assert asked == ["http://okx.test/api/v5/market/trades?instId=BTC-USDT&limit=500"]
    assert status.backfilled == 3


async def test_without_a_break_a_time_venue_is_never_held_nor_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tape = [okx_trade(n, i) for i, n in enumerate("abcd")]
    made, _, _, asked = time_backfiller(tape)
    async with trio.open_nursery() as nursery:
        made.attach(nursery)
        assert made.sift(tape[:2]) == tape[:2]
        assert made.sift(tape[3:]) == tape[3:]  # a jump says nothing here: no ids to count
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert asked == []


async def test_a_rest_that_lost_the_anchor_gives_what_followed_its_time_and_says_older_may_be_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tape = [okx_trade(n, i) for i, n in enumerate("abcdefg")]
    made, _, receive, _ = time_backfiller(tape[3:])  # the REST keeps only d e f g
    async with trio.open_nursery() as nursery:
        made.attach(nursery)
        made.sift(tape[:1])  # a, then the break: b c d e missed
        made.broken(["BTC-USDT"])
        assert made.sift([tape[5]]) == []
        event = await receive.receive()
        assert isinstance(event, Backfilled)
        assert event.recovered == 2 and event.reason is not None and "may be lost" in event.reason
        assert ids(await receive.receive()) == [("d", True), ("e", True), ("f", False)]
        nursery.cancel_scope.cancel()


async def test_a_live_trade_repeated_while_held_is_dropped_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tape = [okx_trade(n, i) for i, n in enumerate("abcd")]
    made, status, receive, _ = time_backfiller(tape)
    async with trio.open_nursery() as nursery:
        made.attach(nursery)
        made.sift(tape[:1])
        made.broken(["BTC-USDT"])
        assert made.sift([tape[2], tape[2], tape[3]]) == []
        await receive.receive()  # the event
        assert ids(await receive.receive()) == [("b", True), ("c", False), ("d", False)]
        nursery.cancel_scope.cancel()
    assert status.duplicates == 1
