"""The Bybit simulator speaks Bybit v5's public protocol: acks, failures, pings, the idle cut,
replayed trades, snapshot-then-delta tickers, the level-1 book, paginated instruments, faults.

Clients are real trio-websocket connections. Anything that must wait for time to pass runs
under an autojump MockClock; payload timestamps are wall-clock milliseconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from feedd.sim import BybitSimulator, load_recording

SPOT_TICKER_FIELDS = [
    "symbol",
    "lastPrice",
    "highPrice24h",
    "lowPrice24h",
    "prevPrice24h",
    "volume24h",
    "turnover24h",
    "price24hPcnt",
    "usdIndexPrice",
]
# The linear snapshot's field set, as recorded (fixtures/recorded/bybit, tickers.BTCUSDT).
LINEAR_TICKER_FIELDS = {
    "symbol",
    "tickDirection",
    "price24hPcnt",
    "lastPrice",
    "prevPrice24h",
    "highPrice24h",
    "lowPrice24h",
    "prevPrice1h",
    "markPrice",
    "indexPrice",
    "openInterest",
    "openInterestValue",
    "turnover24h",
    "volume24h",
    "fundingIntervalHour",
    "fundingCap",
    "singleOpenInterest",
    "singleOpenInterestValue",
    "nextFundingTime",
    "fundingRate",
    "bid1Price",
    "bid1Size",
    "ask1Price",
    "ask1Size",
    "preOpenPrice",
    "preQty",
    "curPreListingPhase",
}
SPOT_TRADE_FIELDS = ["i", "T", "p", "v", "S", "seq", "s", "BT", "RPI"]
LINEAR_TRADE_FIELDS = ["T", "s", "S", "v", "p", "L", "i", "BT", "RPI", "seq"]
TICK_DIRECTIONS = {"PlusTick", "ZeroPlusTick", "MinusTick", "ZeroMinusTick"}
INSTRUMENTS = "/v5/market/instruments-info"


async def start(nursery: trio.Nursery, **kwargs: Any) -> BybitSimulator:
    sim = BybitSimulator(**kwargs)
    await nursery.start(sim.serve)
    return sim


async def send(ws: WebSocketConnection, obj: Any) -> None:
    await ws.send_message(orjson.dumps(obj).decode())


async def receive(ws: WebSocketConnection) -> Any:
    return orjson.loads(await ws.get_message())


async def reply_to(ws: WebSocketConnection, obj: Any) -> dict[str, Any]:
    """Send ``obj`` and return the next control reply, skipping data frames."""
    await send(ws, obj)
    while "topic" in (message := await receive(ws)):
        pass
    assert isinstance(message, dict)
    return message


async def subscribe(ws: WebSocketConnection, *topics: str, req_id: str = "s") -> dict[str, Any]:
    return await reply_to(ws, {"op": "subscribe", "args": list(topics), "req_id": req_id})


async def frames_of(ws: WebSocketConnection, topic: str, count: int) -> list[dict[str, Any]]:
    """The next ``count`` frames of ``topic`` (other frames are skipped)."""
    found: list[dict[str, Any]] = []
    while len(found) < count:
        message = await receive(ws)
        if message.get("topic") == topic:
            found.append(message)
    return found


async def close_code(ws: WebSocketConnection) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    reason = closed.value.reason
    assert reason is not None
    return reason.code


def fresh(stamp: int) -> bool:
    now = time.time() * 1000
    return now - 10_000 < stamp <= now + 1


# ---- subscribe / unsubscribe ------------------------------------------------------------------


@pytest.mark.parametrize(("category", "ret_msg"), [("spot", "subscribe"), ("linear", ""), ("inverse", "")])
async def test_subscribe_ack_has_the_markets_shape_with_req_id_and_conn_id(
    nursery: trio.Nursery, category: str, ret_msg: str
) -> None:
    sim = await start(nursery)
    symbol = "BTCUSD" if category == "inverse" else "BTCUSDT"
    async with open_websocket_url(sim.endpoint(category)) as ws:
        reply = await subscribe(ws, f"publicTrade.{symbol}", req_id="10001")
        conn = await sim.wait_subscribed(f"publicTrade.{symbol}")
    # samples/bybit/subscribe_ok_spot.json and subscribe_ok_linear.json, key order included
    assert list(reply) == ["success", "ret_msg", "conn_id", "req_id", "op"]
    assert reply == {
        "success": True,
        "ret_msg": ret_msg,
        "conn_id": conn.conn_id,
        "req_id": "10001",
        "op": "subscribe",
    }
    assert conn.category == category and conn.path == f"/v5/public/{category}"


async def test_without_req_id_spot_omits_it_and_derivatives_answer_an_empty_one(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery)
    async with (
        open_websocket_url(sim.endpoint("spot")) as spot,
        open_websocket_url(sim.endpoint("linear")) as linear,
    ):
        spot_ack = await reply_to(spot, {"op": "subscribe", "args": ["tickers.BTCUSDT"]})
        linear_ack = await reply_to(linear, {"op": "subscribe", "args": ["tickers.BTCUSDT"]})
    assert list(spot_ack) == ["success", "ret_msg", "conn_id", "op"]  # as recorded
    assert linear_ack["req_id"] == "" and linear_ack["success"] is True


@pytest.mark.parametrize(
    ("category", "ret_msg"),
    [("spot", "Invalid symbol :[tickers.XUSDT]"), ("linear", "error:handler not found,topic:tickers.XUSDT")],
)
async def test_unknown_symbol_fails_the_whole_request_naming_the_topic(
    nursery: trio.Nursery, category: str, ret_msg: str
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint(category)) as ws:
        reply = await subscribe(ws, "publicTrade.BTCUSDT", "tickers.XUSDT", req_id="bad")
        (conn,) = await sim.wait_connections(1)
        assert reply["success"] is False and reply["ret_msg"] == ret_msg
        assert reply["req_id"] == "bad" and reply["op"] == "subscribe" and reply["conn_id"] == conn.conn_id
        assert conn.topics == {}
        assert (await subscribe(ws, "publicTrade.BTCUSDT"))["success"] is True


@pytest.mark.parametrize(
    "topic", ["orderbook.30.BTCUSDT", "kline.1.BTCUSDT", "publicTrade.btcusdt", "tickers"]
)
async def test_unknown_topics_are_handler_not_found(nursery: trio.Nursery, topic: str) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint("linear")) as ws:
        reply = await subscribe(ws, topic)
    assert reply["success"] is False
    assert reply["ret_msg"] == f"error:handler not found,topic:{topic}"


async def test_spot_refuses_more_than_ten_args_in_one_request_and_linear_does_not(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery)
    topics = [
        f"{kind}.{symbol}"
        for symbol in sim.symbols["spot"]
        for kind in ("publicTrade", "tickers", "orderbook.1")
    ]
    assert len(topics) == 12
    async with (
        open_websocket_url(sim.endpoint("spot")) as spot,
        open_websocket_url(sim.endpoint("linear")) as linear,
    ):
        refused = await subscribe(spot, *topics[:11], req_id="eleven")
        assert refused["success"] is False and refused["ret_msg"] == "args size >10"
        assert refused["req_id"] == "eleven"
        assert (await subscribe(spot, *topics[:10]))["success"] is True
        assert (await subscribe(linear, *topics))["success"] is True
        held = {conn.category: len(conn.topics) for conn in await sim.wait_connections(2)}
    assert held == {"spot": 10, "linear": 12}


async def test_args_beyond_the_connections_length_limit_are_refused(nursery: trio.Nursery) -> None:
    sim = await start(nursery, max_args_chars=60)
    async with open_websocket_url(sim.endpoint("linear")) as ws:
        assert (await subscribe(ws, "publicTrade.BTCUSDT", "tickers.BTCUSDT"))["success"] is True  # 34
        assert (await subscribe(ws, "orderbook.1.BTCUSDT"))["success"] is True  # 53
        refused = await subscribe(ws, "tickers.ETHUSDT")  # 68
        assert refused["success"] is False and refused["ret_msg"] == "args length >60"
        await reply_to(ws, {"op": "unsubscribe", "args": ["publicTrade.BTCUSDT"]})
        assert (await subscribe(ws, "tickers.ETHUSDT"))["success"] is True  # 49
        conn = await sim.wait_subscribed("tickers.ETHUSDT")
    assert conn.args_chars == 49


async def test_a_held_topic_subscribed_again_is_already_subscribed(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint("linear")) as ws:
        await subscribe(ws, "tickers.SOLUSDT")
        again = await subscribe(ws, "orderbook.1.SOLUSDT", "tickers.SOLUSDT", req_id="again")
        conn = await sim.wait_subscribed("tickers.SOLUSDT")
    assert again["success"] is False
    assert again["ret_msg"] == "error:already subscribed,topic:tickers.SOLUSDT"
    assert conn.subscriptions == ["tickers.SOLUSDT"]


@pytest.mark.parametrize(("category", "ret_msg"), [("spot", "unsubscribe"), ("linear", "")])
async def test_unsubscribe_is_acked_and_the_topic_stops(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, category: str, ret_msg: str
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint(category)) as ws:
        await subscribe(ws, "orderbook.1.ETHUSDT", "tickers.ETHUSDT")
        await frames_of(ws, "orderbook.1.ETHUSDT", 2)
        reply = await reply_to(ws, {"op": "unsubscribe", "args": ["orderbook.1.ETHUSDT"], "req_id": "u1"})
        assert reply["success"] is True and reply["ret_msg"] == ret_msg
        assert reply["op"] == "unsubscribe" and reply["req_id"] == "u1"
        conn = await sim.wait_subscribed("tickers.ETHUSDT")
        assert conn.subscriptions == ["tickers.ETHUSDT"]
        assert not sim.has_subscribers(f"{category}:orderbook.1.ETHUSDT")
        # Only the ticker keeps coming; the book's frames queued before the ack are long gone.
        tail = [await receive(ws) for _ in range(10)]
    assert {m["topic"] for m in tail[-5:]} == {"tickers.ETHUSDT"}


async def test_unknown_op_and_undecodable_text_get_failures_and_the_connection_stays(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint("linear")) as ws:
        bad_op = await reply_to(ws, {"op": "nope", "req_id": "n"})
        await ws.send_message("hello")
        undecodable = await receive(ws)
        assert (await subscribe(ws, "tickers.BTCUSDT"))["success"] is True
    assert bad_op["success"] is False and bad_op["ret_msg"] == "error:invalid op" and bad_op["req_id"] == "n"
    assert undecodable["success"] is False
    assert undecodable["ret_msg"].startswith("Failed to decode incoming data")


# ---- heartbeat and idle cut -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "keys"),
    [
        ("spot", ["success", "ret_msg", "conn_id", "op"]),  # samples/bybit/pong_spot.json
        ("linear", ["success", "ret_msg", "conn_id", "req_id", "op"]),  # pong_linear.json
        ("inverse", ["success", "ret_msg", "conn_id", "req_id", "op"]),
    ],
)
async def test_ping_gets_the_markets_pong(nursery: trio.Nursery, category: str, keys: list[str]) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint(category)) as ws:
        pong = await reply_to(ws, {"op": "ping"})
        named = await reply_to(ws, {"op": "ping", "req_id": "100001"})
        (conn,) = await sim.wait_connections(1)
    assert list(pong) == keys
    assert pong["success"] is True and pong["ret_msg"] == "pong" and pong["op"] == "ping"
    assert pong["conn_id"] == conn.conn_id and pong.get("req_id", "") == ""
    assert named["req_id"] == "100001" and named["ret_msg"] == "pong"
    assert sim.pings_received == 2


@pytest.mark.parametrize(("options", "idle"), [({}, 600.0), ({"idle_timeout": 5.0}, 5.0)])
async def test_connection_without_pings_or_data_is_cut_after_the_idle_timeout(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, options: dict[str, float], idle: float
) -> None:
    sim = await start(nursery, **options)
    async with open_websocket_url(sim.endpoint("linear")) as ws:
        await subscribe(ws, "orderbook.50.BTCUSDT")  # acked, but carries no data here
        opened = trio.current_time()
        assert await close_code(ws) == 1006  # cut, no close frame
    assert trio.current_time() - opened == pytest.approx(idle, abs=0.5)
    assert sim.idle_closes == 1


async def test_pings_every_twenty_seconds_keep_a_quiet_connection_open(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint("spot")) as ws:
        for _ in range(90):  # 30 minutes
            await trio.sleep(20)
            assert (await reply_to(ws, {"op": "ping"}))["ret_msg"] == "pong"
    assert sim.idle_closes == 0 and sim.pings_received == 90


async def test_data_frames_keep_a_connection_that_never_pings_open(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, idle_timeout=5.0)
    async with open_websocket_url(sim.endpoint("linear")) as ws:
        await subscribe(ws, "tickers.BTCUSDT")
        started = trio.current_time()
        while trio.current_time() - started < 60:
            assert (await receive(ws))["topic"] == "tickers.BTCUSDT"
    assert sim.idle_closes == 0


async def test_silent_pongs_leave_pings_unanswered_while_data_flows(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint("linear")) as ws:
        await subscribe(ws, "tickers.BTCUSDT")
        sim.set_pong_silent(True)
        await send(ws, {"op": "ping", "req_id": "unanswered"})
        frames = [await receive(ws) for _ in range(50)]
        assert all(frame.get("topic") == "tickers.BTCUSDT" for frame in frames)
        sim.set_pong_silent(False)
        assert (await reply_to(ws, {"op": "ping", "req_id": "answered"}))["req_id"] == "answered"
    assert sim.pings_received == 2


async def test_silent_server_answers_nothing_and_sends_no_data_until_resumed(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint("linear")) as ws:
        await subscribe(ws, "tickers.BTCUSDT")
        sim.set_silent(True)
        with trio.move_on_after(1):  # frames already in flight
            while True:
                await ws.get_message()
        await send(ws, {"op": "ping"})
        with trio.move_on_after(30) as quiet:
            message = await ws.get_message()
            pytest.fail(f"expected silence, got {message!r}")
        assert quiet.cancelled_caught
        sim.set_silent(False)
        assert (await reply_to(ws, {"op": "ping"}))["ret_msg"] == "pong"
    assert sim.pings_received == 2


# ---- trades -------------------------------------------------------------------------------------


async def test_replayed_spot_trades_have_fresh_numeric_ids_and_timestamps(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    tape = load_recording("bybit", "spot_trades")
    async with open_websocket_url(sim.endpoint("spot")) as ws:
        await subscribe(ws, "publicTrade.BTCUSDT")
        frames = await frames_of(ws, "publicTrade.BTCUSDT", len(tape) + 10)  # past the tape's end
    assert all(list(frame) == ["topic", "ts", "type", "data"] for frame in frames)
    assert all(frame["type"] == "snapshot" and fresh(frame["ts"]) for frame in frames)
    trades = [trade for frame in frames for trade in frame["data"]]
    assert all(list(trade) == SPOT_TRADE_FIELDS for trade in trades)
    ids = [int(trade["i"]) for trade in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert all(isinstance(trade["i"], str) and fresh(trade["T"]) for trade in trades)
    assert {trade["S"] for trade in trades} == {"Buy", "Sell"}
    assert all(trade["s"] == "BTCUSDT" and 60_000 < float(trade["p"]) < 70_000 for trade in trades)
    assert all(float(trade["v"]) > 0 for trade in trades)


async def test_replayed_linear_trades_come_in_batches_with_uuid_ids(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint("linear")) as ws:
        await subscribe(ws, "publicTrade.ETHUSDT")
        frames = await frames_of(ws, "publicTrade.ETHUSDT", 120)
    assert all(list(frame) == ["topic", "type", "ts", "data"] for frame in frames)
    assert max(len(frame["data"]) for frame in frames) > 1  # batched as recorded
    trades = [trade for frame in frames for trade in frame["data"]]
    assert all(list(trade) == LINEAR_TRADE_FIELDS for trade in trades)
    ids = [str(uuid.UUID(trade["i"])) for trade in trades]
    assert len(set(ids)) == len(ids)
    assert {trade["L"] for trade in trades} <= TICK_DIRECTIONS
    for frame in frames:  # one match, one cross sequence
        assert len({trade["seq"] for trade in frame["data"]}) == 1
    sequences = [frame["data"][0]["seq"] for frame in frames]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert all(2_400 < float(trade["p"]) < 2_900 and fresh(trade["T"]) for trade in trades)  # ETH, 2024-08-08


async def test_inverse_trades_follow_btcusdt_in_whole_usd_contracts(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint("inverse")) as ws:
        await subscribe(ws, "publicTrade.BTCUSD")
        frames = await frames_of(ws, "publicTrade.BTCUSD", 30)
    trades = [trade for frame in frames for trade in frame["data"]]
    assert all(list(trade) == LINEAR_TRADE_FIELDS and trade["s"] == "BTCUSD" for trade in trades)
    assert all(trade["v"].isdigit() and int(trade["v"]) >= 1 for trade in trades)
    assert all(60_000 < float(trade["p"]) < 70_000 for trade in trades)


# ---- tickers and the level-1 book ------------------------------------------------------------------


async def test_spot_tickers_are_full_snapshots(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint("spot")) as ws:
        await subscribe(ws, "tickers.SOLUSDT")
        frames = await frames_of(ws, "tickers.SOLUSDT", 8)
    assert all(list(frame) == ["topic", "ts", "type", "cs", "data"] for frame in frames)
    assert all(frame["type"] == "snapshot" and fresh(frame["ts"]) for frame in frames)
    assert all(list(frame["data"]) == SPOT_TICKER_FIELDS for frame in frames)
    last = frames[-1]["data"]
    assert float(last["lowPrice24h"]) <= float(last["lastPrice"]) <= float(last["highPrice24h"])
    change = (float(last["lastPrice"]) - float(last["prevPrice24h"])) / float(last["prevPrice24h"])
    assert float(last["price24hPcnt"]) == pytest.approx(change, abs=0.0001)  # a fraction, not percent
    assert [frame["cs"] for frame in frames] == sorted(frame["cs"] for frame in frames)


@pytest.mark.parametrize(("category", "symbol"), [("linear", "BTCUSDT"), ("inverse", "BTCUSD")])
async def test_ticker_deltas_merge_into_the_snapshot_a_later_subscriber_gets(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, category: str, symbol: str
) -> None:
    sim = await start(nursery)
    topic = f"tickers.{symbol}"
    async with open_websocket_url(sim.endpoint(category)) as first:
        await subscribe(first, topic)
        (snapshot,) = await frames_of(first, topic, 1)
        assert snapshot["type"] == "snapshot" and set(snapshot["data"]) == LINEAR_TICKER_FIELDS
        assert list(snapshot) == ["topic", "type", "data", "cs", "ts"]
        merged, cs = dict(snapshot["data"]), snapshot["cs"]
        deltas = await frames_of(first, topic, 30)
        for delta in deltas:
            assert delta["type"] == "delta" and delta["cs"] > cs and fresh(delta["ts"])
            assert delta["data"]["symbol"] == symbol and set(delta["data"]) < LINEAR_TICKER_FIELDS
            assert any(merged[key] != value for key, value in delta["data"].items() if key != "symbol")
            merged.update(delta["data"])
            cs = delta["cs"]
        async with open_websocket_url(sim.endpoint(category)) as second:
            await subscribe(second, topic)
            (later,) = await frames_of(second, topic, 1)
            assert later["type"] == "snapshot"
            while cs < later["cs"]:
                (delta,) = await frames_of(first, topic, 1)
                merged.update(delta["data"])
                cs = delta["cs"]
    assert cs == later["cs"]
    assert merged == later["data"]


@pytest.mark.parametrize(
    ("category", "envelope"),
    [("spot", ["topic", "ts", "type", "data", "cts"]), ("linear", ["topic", "type", "ts", "data", "cts"])],
)
async def test_level_one_book_is_a_snapshot_of_one_level_per_side(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, category: str, envelope: list[str]
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint(category)) as ws:
        await subscribe(ws, "orderbook.1.BTCUSDT")
        books = await frames_of(ws, "orderbook.1.BTCUSDT", 20)
    assert all(list(book) == envelope and book["type"] == "snapshot" for book in books)
    for book in books:
        data = book["data"]
        assert list(data) == ["s", "b", "a", "u", "seq"] and data["s"] == "BTCUSDT"
        (bid, bid_size), (ask, ask_size) = data["b"][0], data["a"][0]
        assert len(data["b"]) == len(data["a"]) == 1
        assert float(bid) < float(ask) and float(bid_size) > 0 and float(ask_size) > 0
    updates = [book["data"]["u"] for book in books]
    assert updates == sorted(updates) and updates[-1] > updates[0]


@pytest.mark.parametrize(
    ("category", "symbol"), [("spot", "BTCUSDT"), ("linear", "BTCUSDT"), ("inverse", "BTCUSD")]
)
async def test_unchanged_level_one_book_is_sent_again_after_three_seconds_with_the_same_u(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, category: str, symbol: str
) -> None:
    # [ob] "Linear, inverse, spot level 1 data: if 3 seconds have elapsed without a change in the
    # orderbook, a snapshot message will be pushed again, and the field u will be the same"
    sim = await start(nursery, speed=0.1)  # recorded quote gaps become longer than 3 s
    topic = f"orderbook.1.{symbol}"
    async with open_websocket_url(sim.endpoint(category)) as ws:
        await subscribe(ws, topic)
        books: list[tuple[float, dict[str, Any]]] = []
        for _ in range(300):  # a bound in frames, not time: the tape loops for ever
            (book,) = await frames_of(ws, topic, 1)
            books.append((trio.current_time(), book))
            if len(books) > 1 and book["data"] == books[-2][1]["data"]:
                break
    (previous_at, previous), (resent_at, resent) = books[-2:]
    assert resent["data"] == previous["data"], f"no book re-sent in {len(books)} frames"
    assert resent["type"] == "snapshot" and resent["data"]["u"] == previous["data"]["u"]
    assert resent_at - previous_at == pytest.approx(3.0, abs=0.1)  # trio's virtual clock


# ---- REST ---------------------------------------------------------------------------------------


async def walk_pages(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    pages: list[dict[str, Any]] = []
    cursor = ""
    while True:
        query = {"category": "linear", **params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(INSTRUMENTS, params=query)
        assert response.status_code == 200
        body = response.json()
        assert list(body) == ["retCode", "retMsg", "result", "retExtInfo", "time"]
        assert body["retCode"] == 0 and body["retMsg"] == "OK"
        pages.append(body["result"])
        cursor = body["result"]["nextPageCursor"]
        if not cursor:
            return pages


@pytest.mark.parametrize(
    ("options", "params", "sizes"),
    [({}, {"limit": 3}, [3, 2]), ({"instruments_page_size": 2}, {}, [2, 2, 1])],
)
async def test_instrument_pages_walk_every_linear_symbol_once(
    nursery: trio.Nursery, options: dict[str, int], params: dict[str, int], sizes: list[int]
) -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT"]
    sim = await start(nursery, symbols=symbols, **options)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        pages = await walk_pages(client, **params)
    assert [len(page["list"]) for page in pages] == sizes
    listed = [entry for page in pages for entry in page["list"]]
    assert [entry["symbol"] for entry in listed] == symbols
    assert all(page["category"] == "linear" for page in pages)
    assert all(e["status"] == "Trading" and e["contractType"] == "LinearPerpetual" for e in listed)
    assert listed[0]["baseCoin"] == "BTC" and listed[0]["quoteCoin"] == "USDT"


async def test_a_cursor_sent_back_without_encoding_still_turns_the_page(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        first = (await client.get(f"{INSTRUMENTS}?category=linear&limit=1")).json()["result"]
        cursor = first["nextPageCursor"]
        assert cursor == "first%3DBTCUSDT%26last%3DBTCUSDT"  # the documented form
        second = (await client.get(f"{INSTRUMENTS}?category=linear&limit=1&cursor={cursor}")).json()["result"]
    assert [entry["symbol"] for entry in second["list"]] == ["ETHUSDT"]


async def test_inverse_instruments_settle_in_the_base_coin(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        body = (await client.get(INSTRUMENTS, params={"category": "inverse"})).json()
    listed = body["result"]["list"]
    assert [entry["symbol"] for entry in listed] == ["BTCUSD", "ETHUSD"]
    assert all(e["contractType"] == "InversePerpetual" and e["quoteCoin"] == "USD" for e in listed)
    assert listed[0]["settleCoin"] == "BTC" and body["result"]["nextPageCursor"] == ""


async def test_spot_instruments_are_one_page_without_a_cursor(nursery: trio.Nursery) -> None:
    sim = await start(nursery, instruments_page_size=1)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        body = (await client.get(INSTRUMENTS, params={"category": "spot", "limit": 1})).json()
    # [instruments-info]: "Spot does not support pagination, so limit, cursor are invalid."
    assert list(body["result"]) == ["category", "list"]
    assert [entry["symbol"] for entry in body["result"]["list"]] == list(sim.symbols["spot"])
    assert all(entry["status"] == "Trading" for entry in body["result"]["list"])


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?category=option",
        "?category=linear&limit=0",
        "?category=linear&limit=many",
        "?category=linear&cursor=nonsense",
    ],
)
async def test_bad_instrument_parameters_get_a_params_error(nursery: trio.Nursery, query: str) -> None:
    sim = await start(nursery)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        response = await client.get(INSTRUMENTS + query)
    assert response.status_code == 200
    assert response.json()["retCode"] == 10001 and "params error" in response.json()["retMsg"]


async def test_rest_outage_answers_503_until_it_ends(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        missing = await client.get("/v5/market/nothing")
        sim.rest_fail(True)
        outage = await client.get(INSTRUMENTS, params={"category": "spot"})
        sim.rest_fail(False)
        again = await client.get(INSTRUMENTS, params={"category": "spot"})
    assert missing.status_code == 404
    assert outage.status_code == 503 and outage.json()["retCode"] != 0
    assert again.status_code == 200 and again.json()["retCode"] == 0
    assert sim.rest_requests == 3


# ---- handshakes and faults ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v5/public/option", "/v5/public", "/stream"])
async def test_unknown_paths_are_rejected_with_404(nursery: trio.Nursery, path: str) -> None:
    sim = await start(nursery)
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(sim.url(path)):
            pass
    assert rejected.value.status_code == 404
    assert sim.connection_attempts == 1 and sim.connections_accepted == 0


async def test_refused_handshakes_get_503_until_the_count_runs_out(nursery: trio.Nursery) -> None:
    sim = await start(nursery, category="linear")
    assert sim.ws_url.endswith("/v5/public/linear")
    sim.refuse_connections(2)
    for _ in range(2):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(sim.ws_url):
                pass
        assert rejected.value.status_code == 503
    async with open_websocket_url(sim.ws_url):
        pass
    assert (sim.connection_attempts, sim.connections_refused, sim.connections_accepted) == (3, 2, 1)


@pytest.mark.parametrize(("code", "expected"), [(None, 1006), (1011, 1011)])
async def test_drop_connections_cuts_every_connection(
    nursery: trio.Nursery, code: int | None, expected: int
) -> None:
    sim = await start(nursery)
    async with (
        open_websocket_url(sim.endpoint("spot")) as spot,
        open_websocket_url(sim.endpoint("inverse")) as inverse,
    ):
        await sim.wait_connections(2)
        sim.drop_connections(code=code)
        assert await close_code(spot) == expected
        assert await close_code(inverse) == expected
    await sim.wait_until(lambda: not sim.connections)


async def test_send_malformed_delivers_an_unparsable_frame(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.endpoint("linear")) as ws:
        await sim.wait_connections(1)
        sim.send_malformed()
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(await ws.get_message())


# ---- recordings and the command line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("spot_trades", lambda p: p["topic"].startswith("publicTrade.") and "L" not in p["data"][0]),
        ("spot_book", lambda p: p["topic"] == "orderbook.200.BTCUSDT"),
        ("spot_tickers", lambda p: p["topic"] == "tickers.BTCUSDT" and p["type"] == "snapshot"),
        ("linear_trades", lambda p: p["topic"].startswith("publicTrade.") and "L" in p["data"][0]),
        ("linear_tickers", lambda p: p["topic"] == "tickers.BTCUSDT"),
    ],
)
def test_bundled_tapes_hold_bybit_messages_of_their_topics(name: str, check: Callable[[Any], bool]) -> None:
    recording = load_recording("bybit", name)
    assert len(recording) >= 18
    assert all(check(payload) for payload in recording.payloads)
    assert all(gap >= 0 for gap in recording.gaps) and 10 < sum(recording.gaps) < 120


async def test_module_entry_point_serves_bybit_and_stops_on_sigint(nursery: trio.Nursery) -> None:
    command = [sys.executable, "-m", "feedd.sim", "bybit", "--category", "inverse", "--speed", "2"]
    process: trio.Process = await nursery.start(
        partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
    )
    assert process.stdout is not None
    output = b""
    with trio.fail_after(20):
        while output.count(b"\n") < 2:
            output += await process.stdout.receive_some()
    lines = dict(line.split(" ", 1) for line in output.decode().splitlines())
    assert lines["ws_url"].endswith("/v5/public/inverse")
    async with open_websocket_url(lines["ws_url"]) as ws:
        await subscribe(ws, "tickers.BTCUSD")
        assert (await frames_of(ws, "tickers.BTCUSD", 1))[0]["type"] == "snapshot"
    async with httpx.AsyncClient(base_url=lines["rest_url"]) as client:
        body = (await client.get(INSTRUMENTS, params={"category": "inverse"})).json()
    assert body["retCode"] == 0
    process.send_signal(signal.SIGINT)
    with trio.fail_after(10):
        assert await process.wait() == 0


async def test_a_banned_handshake_gets_bybits_too_many_visits_body(nursery: trio.Nursery) -> None:
    sim = await start(nursery, category="linear")
    sim.refuse_connections(1, status=418)
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(sim.ws_url):
            pass
    assert rejected.value.status_code == 418
    assert orjson.loads(rejected.value.body or b"") == {"retCode": 10006, "retMsg": "I'm a Teapot"}
