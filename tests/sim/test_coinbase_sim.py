"""The Coinbase simulator speaks Advanced Trade's market-data protocol: one channel per subscribe,
snapshots then a subscriptions listing, errors, unsubscribe, the 5-second and idle rules, the
per-IP message limit, per-connection sequence numbers and the gap fault, replayed trades and
tickers with fresh ids and times, heartbeats, the products REST call, faults.

Clients are real trio-websocket connections. Anything that must wait for time to pass runs
under an autojump MockClock (or a frozen one, where bursts must land within one instant);
payload timestamps are the wall clock.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from feedd.sim import Accept, CoinbaseProtocol, CoinbaseSimulator, Reject, load_recording
from feedd.sim.coinbase_market import parse_rfc3339, tape

ENVELOPE = ["channel", "timestamp", "sequence_num", "events"]
TRADE_FIELDS = ["product_id", "trade_id", "price", "size", "time", "side"]
# The recorded ticker's field order (fixtures/recorded/coinbase), not the docs' example's.
TICKER_FIELDS = [
    "type",
    "product_id",
    "price",
    "volume_24_h",
    "low_24_h",
    "high_24_h",
    "low_52_w",
    "high_52_w",
    "price_percent_chg_24_h",
    "best_bid",
    "best_ask",
    "best_bid_quantity",
    "best_ask_quantity",
]
# Go's RFC3339Nano: at most nine fractional digits, never a trailing zero.
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z")
TRADE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,5}[1-9])?Z")
# Go's time.Time.String() with a monotonic reading, as recorded.
GO_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{0,8}[1-9])? \+0000 UTC m=\+\d+\.\d{9}")
PRODUCTS = "/api/v3/brokerage/market/products"


async def start(nursery: trio.Nursery, **kwargs: Any) -> CoinbaseSimulator:
    sim = CoinbaseSimulator(**kwargs)
    await nursery.start(sim.serve)
    return sim


async def send(ws: WebSocketConnection, obj: Any) -> None:
    await ws.send_message(orjson.dumps(obj).decode())


async def receive(ws: WebSocketConnection) -> Any:
    return orjson.loads(await ws.get_message())


async def request(ws: WebSocketConnection, obj: Any) -> list[dict[str, Any]]:
    """Send ``obj``; every message up to and including its answer (a listing or an error)."""
    await send(ws, obj)
    messages = [await receive(ws)]
    while messages[-1].get("channel") != "subscriptions" and messages[-1].get("type") != "error":
        messages.append(await receive(ws))
    return messages


async def subscribe(ws: WebSocketConnection, channel: str, *products: str) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if products:
        body["product_ids"] = list(products)
    return await request(ws, body)


async def messages_of(ws: WebSocketConnection, channel: str, count: int) -> list[dict[str, Any]]:
    """The next ``count`` messages of ``channel`` (others are skipped)."""
    found: list[dict[str, Any]] = []
    while len(found) < count:
        message = await receive(ws)
        if message.get("channel") == channel:
            found.append(message)
    return found


async def close_code(ws: WebSocketConnection) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    reason = closed.value.reason
    assert reason is not None
    return reason.code


def fresh(stamp: str) -> bool:
    """An RFC 3339 time within the last ten seconds of the wall clock."""
    now = time.time_ns()
    return now - 10 * 10**9 < parse_rfc3339(stamp) <= now + 10**6


def listing(message: dict[str, Any]) -> dict[str, list[str]]:
    assert message["channel"] == "subscriptions"
    (event,) = message["events"]
    assert list(event) == ["subscriptions"]
    subscriptions: dict[str, list[str]] = event["subscriptions"]
    return subscriptions


# ---- subscribe, the subscriptions listing, errors, unsubscribe -----------------------------------


async def test_subscribe_answers_each_products_snapshot_then_the_subscriptions_listing(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        answer = await subscribe(ws, "market_trades", "BTC-USD", "ETH-USD")
        await sim.wait_subscribed(["market_trades:BTC-USD", "market_trades:ETH-USD"])
    assert [m["channel"] for m in answer] == ["market_trades", "market_trades", "subscriptions"]
    assert all(list(m) == ENVELOPE for m in answer)  # no client_id, as recorded
    assert [m["sequence_num"] for m in answer] == [0, 1, 2]
    assert all(TIMESTAMP.fullmatch(m["timestamp"]) and fresh(m["timestamp"]) for m in answer)
    for message, product in zip(answer, ["BTC-USD", "ETH-USD"], strict=False):
        (event,) = message["events"]
        assert event["type"] == "snapshot" and len(event["trades"]) == 100
        assert {t["product_id"] for t in event["trades"]} == {product}
        ids = [int(t["trade_id"]) for t in event["trades"]]
        assert ids == sorted(ids, reverse=True)  # newest first, as recorded
    assert listing(answer[2]) == {"market_trades": ["BTC-USD", "ETH-USD"]}


async def test_each_channel_takes_its_own_subscribe_and_the_listing_holds_them_all(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "ticker", "ETH-USD")
        await subscribe(ws, "market_trades", "BTC-USD")
        await subscribe(ws, "level2", "BTC-USD")
        # product_ids on heartbeats are ignored (the recorded client sent them)
        answer = await subscribe(ws, "heartbeats", "BTC-USD", "ETH-USD")
        conn = await sim.wait_subscribed("heartbeats")
    assert listing(answer[-1]) == {
        "heartbeats": ["heartbeats"],
        "level2": ["BTC-USD"],
        "market_trades": ["BTC-USD"],
        "ticker": ["ETH-USD"],
    }
    assert list(listing(answer[-1])) == sorted(listing(answer[-1]))  # channels sorted, as recorded
    assert list(conn.topics) == ["ticker:ETH-USD", "market_trades:BTC-USD", "level2:BTC-USD", "heartbeats"]


async def test_subscribing_a_held_product_again_sends_no_second_snapshot(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "ticker", "BTC-USD")
        answer = await subscribe(ws, "ticker", "BTC-USD", "ETH-USD")
    snapshots = [m for m in answer if m["channel"] == "ticker" and m["events"][0]["type"] == "snapshot"]
    assert [m["events"][0]["tickers"][0]["product_id"] for m in snapshots] == ["ETH-USD"]
    assert listing(answer[-1]) == {"ticker": ["BTC-USD", "ETH-USD"]}


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (
            {"type": "subscribe", "channel": "market_trades", "product_ids": ["BTC-USD", "NOPE-USD"]},
            "Failed to subscribe: NOPE-USD is not a valid product",
        ),
        (
            {"type": "subscribe", "channel": "trades", "product_ids": ["BTC-USD"]},
            "Failed to subscribe: unknown channel trades",
        ),
        (
            {"type": "subscribe", "channels": ["ticker"], "product_ids": ["BTC-USD"]},
            "Failed to subscribe: channel must be one channel name (a string)",
        ),
        ({"type": "subscribe", "channel": "user", "product_ids": ["BTC-USD"]}, "authentication failure"),
        ({"type": "subscribe", "channel": "ticker"}, "Failed to subscribe: ticker needs product_ids"),
        (
            {"type": "subscribe", "channel": "ticker", "product_ids": "BTC-USD"},
            "Failed to subscribe: product_ids must be an array of strings",
        ),
        ({"type": "ping"}, "unknown message type: 'ping'; expected subscribe or unsubscribe"),
    ],
)
async def test_a_bad_request_gets_an_error_subscribes_nothing_and_the_connection_stays(
    nursery: trio.Nursery, body: dict[str, Any], text: str
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        (answer,) = await request(ws, body)
        (conn,) = await sim.wait_connections(1)
        assert conn.topics == {}
        # the error is not numbered: the next message is the connection's first
        again = await subscribe(ws, "ticker", "BTC-USD")
    assert answer == {"type": "error", "message": text}
    assert again[0]["sequence_num"] == 0 and listing(again[-1]) == {"ticker": ["BTC-USD"]}
    assert sim.errors_sent == 1


async def test_undecodable_text_gets_an_error(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await ws.send_message("subscribe BTC-USD")
        assert await receive(ws) == {"type": "error", "message": "failed to parse the message as JSON"}
        await ws.send_message("[1]")
        assert await receive(ws) == {"type": "error", "message": "a message must be a JSON object"}
    assert sim.errors_sent == 2


async def test_unsubscribe_drops_the_named_products_and_their_updates_stop(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "market_trades", "BTC-USD", "ETH-USD")
        await messages_of(ws, "market_trades", 5)
        answer = await request(
            ws, {"type": "unsubscribe", "channel": "market_trades", "product_ids": ["BTC-USD", "SOL-USD"]}
        )
        assert listing(answer[-1]) == {"market_trades": ["ETH-USD"]}
        later = await messages_of(ws, "market_trades", 10)
        assert {t["product_id"] for m in later for t in m["events"][0]["trades"]} == {"ETH-USD"}
    assert not sim.has_subscribers("market_trades:BTC-USD")


async def test_unsubscribe_without_product_ids_drops_the_whole_channel(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "ticker", "BTC-USD", "ETH-USD")
        await subscribe(ws, "heartbeats")
        answer = await request(ws, {"type": "unsubscribe", "channel": "ticker"})
        assert listing(answer[-1]) == {"heartbeats": ["heartbeats"]}
        answer = await request(ws, {"type": "unsubscribe", "channel": "heartbeats"})
        assert listing(answer[-1]) == {}
        (conn,) = await sim.wait_connections(1)
    assert conn.topics == {}


async def test_client_id_option_adds_the_prose_docs_empty_client_id(nursery: trio.Nursery) -> None:
    sim = await start(nursery, client_id=True)
    async with open_websocket_url(sim.ws_url) as ws:
        answer = await subscribe(ws, "ticker", "BTC-USD")
    assert all(list(m) == ["channel", "client_id", *ENVELOPE[1:]] for m in answer)
    assert {m["client_id"] for m in answer} == {""}


def test_the_protocol_object_answers_without_sockets_through_the_queue() -> None:
    protocol = CoinbaseProtocol(
        products=["BTC-USD"], snapshot=lambda channel, product: "[]", now_ns=lambda: 1_786_309_548_228_568_804
    )
    assert isinstance(protocol.open("/ws", ""), Reject)
    opened = protocol.open("/", "")
    assert isinstance(opened, Accept)
    conn = opened.connection
    reply = protocol.receive(conn, '{"type":"subscribe","channel":"ticker","product_ids":["BTC-USD"]}')
    assert reply.queued and reply.start == ("ticker:BTC-USD",)
    frames = [orjson.loads(conn.frame("", text)) for text in reply.frames]
    assert frames == [
        {"channel": "ticker", "timestamp": "2026-08-09T21:05:48.228568804Z", "sequence_num": 0, "events": []},
        {
            "channel": "subscriptions",
            "timestamp": "2026-08-09T21:05:48.228568804Z",
            "sequence_num": 1,
            "events": [{"subscriptions": {"ticker": ["BTC-USD"]}}],
        },
    ]


@pytest.mark.parametrize(
    ("options", "problem"), [({"products": ["BTCUSD"]}, "BASE-QUOTE"), ({"speed": 0}, "speed")]
)
def test_bad_simulator_options_are_refused(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        CoinbaseSimulator(**options)


# ---- the 5-second rule, the idle rule, heartbeats, the message limit ------------------------------


@pytest.mark.parametrize(("options", "deadline"), [({}, 5.0), ({"subscribe_timeout": 1.0}, 1.0)])
async def test_a_connection_that_does_not_subscribe_in_time_is_cut(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, options: dict[str, float], deadline: float
) -> None:
    sim = await start(nursery, **options)
    async with open_websocket_url(sim.ws_url) as ws:
        opened = trio.current_time()
        # a failed subscribe holds nothing, so it does not count
        await request(ws, {"type": "subscribe", "channel": "ticker", "product_ids": ["NOPE-USD"]})
        assert await close_code(ws) == 1006
    assert trio.current_time() - opened == pytest.approx(deadline, abs=0.1)
    assert sim.subscribe_timeouts == 1 and sim.idle_closes == 0


async def test_a_subscribe_within_five_seconds_keeps_the_connection(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await trio.sleep(4.5)
        await subscribe(ws, "heartbeats")
        beats = await messages_of(ws, "heartbeats", 20)
    assert len(beats) == 20 and sim.subscribe_timeouts == 0


@pytest.mark.parametrize(("options", "idle"), [({}, 60.0), ({"idle_timeout": 90.0}, 90.0)])
async def test_a_connection_sent_no_update_is_cut_after_the_idle_timeout(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, options: dict[str, float], idle: float
) -> None:
    sim = await start(nursery, quiet_products=["XLM-USD"], **options)
    async with open_websocket_url(sim.ws_url) as ws:
        opened = trio.current_time()
        answer = await subscribe(ws, "market_trades", "XLM-USD")  # an illiquid pair
        assert answer[0]["events"][0]["type"] == "snapshot"
        assert await close_code(ws) == 1006  # cut, no close frame
    assert trio.current_time() - opened == pytest.approx(idle, abs=0.5)
    assert sim.idle_closes == 1


async def test_heartbeats_keep_a_quiet_channel_open_and_count_every_second(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, quiet_products=["XLM-USD"])
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "market_trades", "XLM-USD")
        await subscribe(ws, "heartbeats")
        beats = await messages_of(ws, "heartbeats", 600)  # ten minutes
    assert sim.idle_closes == 0
    assert all(list(b) == ENVELOPE and fresh(b["timestamp"]) for b in beats)
    events = [b["events"] for b in beats]
    assert all(len(e) == 1 and list(e[0]) == ["current_time", "heartbeat_counter"] for e in events)
    counters = [e[0]["heartbeat_counter"] for e in events]
    assert all(isinstance(c, int) for c in counters)  # an integer, as recorded
    assert counters == list(range(counters[0], counters[0] + 600))
    assert all(GO_TIME.fullmatch(e[0]["current_time"]) for e in events)


async def test_trades_alone_keep_a_liquid_channel_open(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "market_trades", "BTC-USD")
        started = trio.current_time()
        while trio.current_time() - started < 300:
            assert (await receive(ws))["channel"] == "market_trades"
    assert sim.idle_closes == 0


async def test_a_ninth_message_within_a_second_closes_the_connection(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        for _ in range(8):  # at the documented limit: answered
            assert listing((await subscribe(ws, "heartbeats"))[-1]) == {"heartbeats": ["heartbeats"]}
        await send(ws, {"type": "subscribe", "channel": "heartbeats"})
        assert await close_code(ws) == 1008
    assert sim.rate_limit_closes == 1 and sim.requests_received == 9


async def test_eight_messages_a_second_are_allowed_indefinitely(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        for _ in range(40):
            await subscribe(ws, "heartbeats")
            mock_clock.jump(0.125)
    assert sim.rate_limit_closes == 0 and sim.requests_received == 40


async def test_the_message_limit_counts_every_connection_from_one_address(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as first, open_websocket_url(sim.ws_url) as second:
        for _ in range(5):
            await subscribe(first, "heartbeats")
        for _ in range(3):
            await subscribe(second, "heartbeats")
        await send(second, {"type": "subscribe", "channel": "heartbeats"})
        assert await close_code(second) == 1008
        mock_clock.jump(1.5)  # the window has passed: the other connection carries on
        assert listing((await subscribe(first, "heartbeats"))[-1]) == {"heartbeats": ["heartbeats"]}
    assert sim.rate_limit_closes == 1


# ---- sequence numbers -----------------------------------------------------------------------------


async def test_sequence_numbers_count_every_message_of_a_connection_from_zero(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as first:
        await subscribe(first, "market_trades", "BTC-USD", "ETH-USD")
        await subscribe(first, "ticker", "BTC-USD")
        await subscribe(first, "heartbeats")
        seen = [await receive(first) for _ in range(300)]
        async with open_websocket_url(sim.ws_url) as second:
            other = await subscribe(second, "ticker", "ETH-USD")
    assert {m["channel"] for m in seen} == {"market_trades", "ticker", "heartbeats"}
    numbers = [m["sequence_num"] for m in seen]
    assert numbers == list(range(numbers[0], numbers[0] + 300))
    assert [m["sequence_num"] for m in other] == [0, 1]


async def test_skip_sequence_makes_the_next_message_jump_by_the_gap(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "heartbeats")
        before = await messages_of(ws, "heartbeats", 2)
        sim.skip_sequence(5)
        after = await messages_of(ws, "heartbeats", 2)
    last = before[-1]["sequence_num"]
    assert [m["sequence_num"] for m in after] == [last + 6, last + 7]
    counters = [m["events"][0]["heartbeat_counter"] for m in (*before, *after)]
    assert counters == list(range(counters[0], counters[0] + 4))  # no heartbeat was lost
    with pytest.raises(ValueError, match="count"):
        sim.skip_sequence(0)


async def test_overlap_fault_makes_a_new_subscription_repeat_trades_already_sent_then_go_on(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)

    def ids(messages: list[dict[str, Any]]) -> list[int]:
        return [int(t["trade_id"]) for m in messages for e in m["events"] for t in e["trades"]]

    async with open_websocket_url(sim.ws_url) as first:
        sent = (await subscribe(first, "market_trades", "BTC-USD"))[:1]
        sent += await messages_of(first, "market_trades", 5)
        sim.overlap_trades(3)
        async with open_websocket_url(sim.ws_url) as second:
            snapshot = (await subscribe(second, "market_trades", "BTC-USD"))[0]
            repeat, new = await messages_of(second, "market_trades", 2)
        repeated = ids([repeat])
        while not set(repeated) <= set(ids(sent)):  # the first connection was sent them all
            sent += await messages_of(first, "market_trades", 1)
    assert snapshot["events"][0]["type"] == "snapshot" and len(snapshot["events"][0]["trades"]) == 97
    assert repeat["events"][0]["type"] == "update"
    newest = max(ids([snapshot]))
    assert sorted(repeated) == [newest + 1, newest + 2, newest + 3]  # the snapshot left them out
    assert min(ids([new])) == newest + 4  # then new trades, without a gap
    assert sim.trades_repeated == [("BTC-USD", str(i)) for i in repeated]
    with pytest.raises(ValueError, match="count"):
        sim.overlap_trades(-1)


# ---- replayed trades and tickers ------------------------------------------------------------------


async def test_replayed_trades_follow_the_snapshot_with_fresh_ids_and_times(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    recorded = tape("BTC-USD")
    batches = sum(1 for p in recorded.updates.payloads if p["channel"] == "market_trades")
    async with open_websocket_url(sim.ws_url) as ws:
        answer = await subscribe(ws, "market_trades", "BTC-USD")
        updates = await messages_of(ws, "market_trades", batches + 10)  # past the tape's end
    snapshot = answer[0]["events"][0]["trades"]
    assert all(list(m) == ENVELOPE and fresh(m["timestamp"]) for m in updates)
    assert all(len(m["events"]) == 1 and m["events"][0]["type"] == "update" for m in updates)
    trades = [t for m in updates for t in m["events"][0]["trades"]]
    assert all(list(t) == TRADE_FIELDS for t in (*snapshot, *trades))
    assert all(TRADE_TIME.fullmatch(t["time"]) for t in (*snapshot, *trades))
    assert fresh(snapshot[0]["time"]) and all(fresh(t["time"]) for t in trades)
    ages = [parse_rfc3339(t["time"]) for t in snapshot]
    assert ages == sorted(ages, reverse=True)  # the recorded spread of the past trades
    assert {t["side"] for t in trades} == {"BUY", "SELL"}
    # ids: one product's counter, newest first in every batch, continuing from the snapshot
    in_order = [int(t["trade_id"]) for m in updates for t in reversed(m["events"][0]["trades"])]
    assert in_order == list(
        range(int(snapshot[0]["trade_id"]) + 1, int(snapshot[0]["trade_id"]) + 1 + len(trades))
    )
    recorded_ids = {
        t["trade_id"] for p in recorded.updates.payloads for t in p["events"][0].get("trades", [])
    }
    assert not recorded_ids & {t["trade_id"] for t in trades}
    # BTC-USD replays its own tape: the recorded prices and sizes, in the recorded batches
    first_batches = [
        p["events"][0]["trades"] for p in recorded.updates.payloads if p["channel"] == "market_trades"
    ]
    assert [
        [(t["price"], t["size"], t["side"]) for t in m["events"][0]["trades"]] for m in updates[:batches]
    ] == [[(t["price"], t["size"], t["side"]) for t in batch] for batch in first_batches]


async def test_other_products_play_a_recorded_tape_at_their_own_level(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, products=["BTC-USD", "ETH-USD", "SOL-USD"])
    async with open_websocket_url(sim.ws_url) as ws:
        answer = await subscribe(ws, "market_trades", "SOL-USD")
        updates = await messages_of(ws, "market_trades", 10)
    prices = [float(t["price"]) for m in (answer[0], *updates) for t in m["events"][0]["trades"]]
    assert all(100 < p < 250 for p in prices)
    assert {t["product_id"] for m in updates for t in m["events"][0]["trades"]} == {"SOL-USD"}


async def test_ticker_snapshot_then_updates_and_a_later_subscriber_gets_the_last_state(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as first:
        answer = await subscribe(first, "ticker", "ETH-USD")
        updates = await messages_of(first, "ticker", 30)
        async with open_websocket_url(sim.ws_url) as second:
            later = await subscribe(second, "ticker", "ETH-USD")
    (event,) = answer[0]["events"]
    assert event["type"] == "snapshot"
    tickers = [event["tickers"][0]] + [m["events"][0]["tickers"][0] for m in updates]
    assert all(m["events"][0]["type"] == "update" and len(m["events"][0]["tickers"]) == 1 for m in updates)
    assert all(list(t) == TICKER_FIELDS and t["product_id"] == "ETH-USD" for t in tickers)
    assert all(float(t["best_bid"]) < float(t["best_ask"]) for t in tickers)
    assert all(tickers[i] != tickers[i + 1] for i in range(len(tickers) - 1))  # pushed on change only
    assert later[0]["events"][0]["tickers"][0] == tickers[-1] == sim.ticker("ETH-USD")


async def test_quiet_products_and_dataless_channels_send_only_their_first_messages(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, quiet_products=["XLM-USD"])
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "ticker", "XLM-USD")
        await subscribe(ws, "level2", "BTC-USD")
        await subscribe(ws, "heartbeats")
        seen = await messages_of(ws, "heartbeats", 30)
    assert all(m["channel"] == "heartbeats" for m in seen)
    assert not sim.has_subscribers("level2:BTC-USD")


# ---- REST ---------------------------------------------------------------------------------------


async def test_products_lists_every_product_online_and_delisted_ones_disabled(nursery: trio.Nursery) -> None:
    sim = await start(nursery, quiet_products=["XLM-USD"], delisted_products=["OLD-USD"])
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        response = await client.get(PRODUCTS)
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["products", "num_products", "pagination"]
    products = {p["product_id"]: p for p in body["products"]}
    assert list(products) == ["BTC-USD", "ETH-USD", "XLM-USD", "OLD-USD"]
    assert body["num_products"] == 4 and body["pagination"]["has_next"] is False
    for name in ("BTC-USD", "ETH-USD", "XLM-USD"):
        assert products[name]["status"] == "online" and products[name]["trading_disabled"] is False
        assert products[name]["product_type"] == "SPOT"
    assert products["OLD-USD"]["status"] == "delisted" and products["OLD-USD"]["trading_disabled"] is True
    assert (
        products["BTC-USD"]["base_currency_id"] == "BTC" and products["BTC-USD"]["quote_increment"] == "0.01"
    )
    assert products["BTC-USD"]["price"] == sim.ticker("BTC-USD")["price"]
    async with open_websocket_url(sim.ws_url) as ws:
        (refused,) = await subscribe(ws, "ticker", "OLD-USD")
    assert refused["type"] == "error"


async def test_limit_and_offset_or_the_cursor_walk_every_product_once(nursery: trio.Nursery) -> None:
    products = ["BTC-USD", "ETH-USD", "SOL-USD", "DOGE-USD", "ADA-USD"]
    sim = await start(nursery, products=products)
    by_offset: list[str] = []
    by_cursor: list[str] = []
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        for offset in range(0, 6, 2):
            page = (await client.get(PRODUCTS, params={"limit": 2, "offset": offset})).json()
            assert page["num_products"] == len(page["products"])
            by_offset += [p["product_id"] for p in page["products"]]
        cursor = ""
        while True:
            page = (await client.get(PRODUCTS, params={"limit": 2, "cursor": cursor})).json()
            by_cursor += [p["product_id"] for p in page["products"]]
            if not page["pagination"]["has_next"]:
                break
            cursor = page["pagination"]["next_cursor"]
        filtered = (
            await client.get(PRODUCTS, params=[("product_ids", "ETH-USD"), ("product_ids", "ADA-USD")])
        ).json()
    assert by_offset == by_cursor == products
    assert [p["product_id"] for p in filtered["products"]] == ["ETH-USD", "ADA-USD"]


@pytest.mark.parametrize("query", ["limit=x", "offset=-1", "cursor=%21%21", "product_type=OPTION"])
async def test_bad_product_parameters_get_invalid_argument(nursery: trio.Nursery, query: str) -> None:
    sim = await start(nursery)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        response = await client.get(f"{PRODUCTS}?{query}")
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_ARGUMENT" and response.json()["code"] == 3


async def test_rest_outage_answers_503_until_it_ends(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        missing = await client.get("/api/v3/brokerage/products")
        sim.rest_fail(True)
        outage = await client.get(PRODUCTS)
        sim.rest_fail(False)
        again = await client.get(PRODUCTS)
    assert missing.status_code == 404 and missing.json()["error"] == "NOT_FOUND"
    assert outage.status_code == 503 and list(outage.json()) == ["error", "code", "message", "details"]
    assert again.status_code == 200 and again.json()["num_products"] == 2
    assert sim.rest_requests == 3


# ---- handshakes and faults ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws", "/feed"])
async def test_other_paths_are_rejected_with_404(nursery: trio.Nursery, path: str) -> None:
    sim = await start(nursery)
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(sim.url(path)):
            pass
    assert rejected.value.status_code == 404
    assert sim.connection_attempts == 1 and sim.connections_accepted == 0


async def test_refused_handshakes_get_503_until_the_count_runs_out(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    assert sim.ws_url.endswith("/")
    sim.refuse_connections(2)
    for _ in range(2):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(sim.ws_url):
                pass
        assert rejected.value.status_code == 503
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "heartbeats")
    assert (sim.connection_attempts, sim.connections_refused, sim.connections_accepted) == (3, 2, 1)


@pytest.mark.parametrize(("code", "expected"), [(None, 1006), (1011, 1011)])
async def test_drop_connections_cuts_every_connection(
    nursery: trio.Nursery, code: int | None, expected: int
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as first, open_websocket_url(sim.ws_url) as second:
        await sim.wait_connections(2)
        sim.drop_connections(code=code)
        assert await close_code(first) == expected
        assert await close_code(second) == expected
    await sim.wait_until(lambda: not sim.connections)


async def test_send_malformed_delivers_an_unparsable_frame(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await sim.wait_connections(1)
        sim.send_malformed()
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(await ws.get_message())


async def test_silent_server_answers_nothing_until_resumed_and_numbers_on_without_a_gap(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        last = (await subscribe(ws, "heartbeats"))[-1]["sequence_num"]
        sim.set_silent(True)
        with trio.move_on_after(1.5):  # frames already in flight
            while True:
                last = (await receive(ws))["sequence_num"]
        await send(ws, {"type": "subscribe", "channel": "ticker", "product_ids": ["BTC-USD"]})
        with trio.move_on_after(30) as quiet:
            message = await ws.get_message()
            pytest.fail(f"expected silence, got {message!r}")
        assert quiet.cancelled_caught
        await sim.wait_subscribed("ticker:BTC-USD")  # the request took effect all the same
        sim.set_silent(False)
        answer = await subscribe(ws, "heartbeats")
    assert answer[0]["sequence_num"] == last + 1
    assert listing(answer[-1]) == {"heartbeats": ["heartbeats"], "ticker": ["BTC-USD"]}


# ---- recordings and the command line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("btc_usd", lambda p: {t["product_id"] for t in p["events"][0].get("trades", [])} <= {"BTC-USD"}),
        ("eth_usd", lambda p: {t["product_id"] for t in p["events"][0].get("tickers", [])} <= {"ETH-USD"}),
    ],
)
def test_bundled_tapes_hold_coinbase_messages_per_product(name: str, check: Callable[[Any], bool]) -> None:
    recording = load_recording("coinbase", name)
    assert len(recording) >= 100
    assert all(
        list(p) == ENVELOPE and p["channel"] in ("market_trades", "ticker") for p in recording.payloads
    )
    assert all(check(p) for p in recording.payloads)
    numbers = [p["sequence_num"] for p in recording.payloads]
    assert numbers == sorted(numbers)  # one connection's, filtered
    assert [p["events"][0]["type"] for p in recording.payloads[:2]] == ["snapshot", "snapshot"]
    assert all(gap >= 0 for gap in recording.gaps) and 15 < sum(recording.gaps) < 60


async def test_module_entry_point_serves_coinbase_and_stops_on_sigint(nursery: trio.Nursery) -> None:
    command = [sys.executable, "-m", "feedd.sim", "coinbase", "--products", "BTC-USD,SOL-USD", "--speed", "2"]
    process: trio.Process = await nursery.start(
        partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
    )
    assert process.stdout is not None
    output = b""
    with trio.fail_after(20):
        while output.count(b"\n") < 2:
            output += await process.stdout.receive_some()
    lines = dict(line.split(" ", 1) for line in output.decode().splitlines())
    async with open_websocket_url(lines["ws_url"]) as ws:
        answer = await subscribe(ws, "ticker", "SOL-USD")
        assert answer[0]["events"][0]["type"] == "snapshot"
    async with httpx.AsyncClient(base_url=lines["rest_url"]) as client:
        body = (await client.get(PRODUCTS)).json()
    assert [p["product_id"] for p in body["products"]] == ["BTC-USD", "SOL-USD"]
    process.send_signal(signal.SIGINT)
    with trio.fail_after(10):
        assert await process.wait() == 0
