"""The Coinbase Exchange simulator speaks the Exchange feed's protocol: channel lists with their
products, the subscriptions listing, last_match, errors, unsubscribe, the 5-second rule and the
per-IP message limit, matches and tickers with per-product ids and sequences, heartbeats, the
products REST call, and the core's faults.

Clients are real trio-websocket connections; anything that waits for time runs on a MockClock.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from feedd.sim import Accept, CoinbaseExchangeProtocol, CoinbaseExchangeSimulator, SimConnection
from feedd.sim.coinbase_exchange import SIMULATOR
from feedd.sim.replay import Demand, parse_recording, play_staggered

MATCH_FIELDS = ["type", "trade_id", "maker_order_id", "taker_order_id", "side", "size", "price",
                "product_id", "sequence", "time"]
TICKER_FIELDS = ["type", "sequence", "product_id", "price", "open_24h", "volume_24h", "low_24h", "high_24h",
                 "volume_30d", "best_bid", "best_bid_size", "best_ask", "best_ask_size", "side", "time",
                 "trade_id", "last_size"]
HEARTBEAT_FIELDS = ["type", "sequence", "last_trade_id", "product_id", "time"]


async def start(nursery: trio.Nursery, **kwargs: Any) -> CoinbaseExchangeSimulator:
    sim = CoinbaseExchangeSimulator(**kwargs)
    await nursery.start(sim.serve)
    return sim


async def send(ws: WebSocketConnection, obj: Any) -> None:
    await ws.send_message(orjson.dumps(obj).decode())


async def receive(ws: WebSocketConnection) -> Any:
    return orjson.loads(await ws.get_message())


async def request(ws: WebSocketConnection, obj: Any) -> dict[str, Any]:
    """Send ``obj``; its answer (the listing or an error), skipping data frames before it."""
    await send(ws, obj)
    while True:
        message = await receive(ws)
        if message["type"] in ("subscriptions", "error"):
            return dict(message)


def subscribe_body(*channels: str, products: tuple[str, ...] = ("BTC-USD",)) -> dict[str, Any]:
    return {"type": "subscribe", "channels": [{"name": c, "product_ids": list(products)} for c in channels]}


def held(listing: dict[str, Any]) -> dict[str, list[str]]:
    assert listing["type"] == "subscriptions", listing
    return {c["name"]: c["product_ids"] for c in listing["channels"]}


async def messages_of(ws: WebSocketConnection, kind: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while len(found) < count:
        message = await receive(ws)
        if message["type"] == kind:
            found.append(message)
    return found


async def close_code(ws: WebSocketConnection) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    reason = closed.value.reason
    assert reason is not None
    return reason.code


# ---- subscribe, the listing, last_match, errors, unsubscribe -------------------------------------


async def test_subscribe_answers_the_listing_then_each_new_matches_products_last_match(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, subscribe_body("matches", "heartbeat", products=("BTC-USD", "ETH-USD")))
        listing, *lasts = [await receive(ws) for _ in range(3)]
        conn = await sim.wait_subscribed(["matches:BTC-USD", "heartbeat:ETH-USD"])
    assert held(listing) == {"matches": ["BTC-USD", "ETH-USD"], "heartbeat": ["BTC-USD", "ETH-USD"]}
    assert [(m["type"], m["product_id"]) for m in lasts] == [
        ("last_match", "BTC-USD"), ("last_match", "ETH-USD")
    ]
    assert all(list(m) == MATCH_FIELDS for m in lasts)
    assert [m["trade_id"] for m in lasts] == [sim.last_trade_id("BTC-USD"), sim.last_trade_id("ETH-USD")]
    assert list(conn.topics) == [
        "matches:BTC-USD", "matches:ETH-USD", "heartbeat:BTC-USD", "heartbeat:ETH-USD"
    ]


async def test_a_root_product_list_applies_to_the_channels_named_by_a_string(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        # the documented request's shape: root products, a string channel and a channel object
        channels = ["heartbeat", {"name": "ticker", "product_ids": ["ETH-USD"]}]
        listing = await request(ws, {"type": "subscribe", "product_ids": ["ETH-USD", "BTC-USD"],
                                     "channels": channels})
        again = await request(ws, subscribe_body("ticker", products=("BTC-USD",)))
    assert held(listing) == {"heartbeat": ["ETH-USD", "BTC-USD"], "ticker": ["ETH-USD"]}
    assert held(again) == {"heartbeat": ["ETH-USD", "BTC-USD"], "ticker": ["ETH-USD", "BTC-USD"]}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (subscribe_body("matches", products=("BTC-USD", "NOPE-USD")), "NOPE-USD is not a valid product"),
        (subscribe_body("trades"), "trades is not a valid channel"),
        (subscribe_body("full"), "full channel requires authentication"),
        (subscribe_body("level2"), "level2 channel requires authentication"),
        ({"type": "subscribe", "product_ids": ["BTC-USD"]}, "No channels provided"),
        ({"type": "subscribe", "channels": []}, "No channels provided"),
        ({"type": "subscribe", "channels": ["heartbeat"]},
         "You need to specify at least one product ID for channel heartbeat"),
        ({"type": "subscribe", "channels": [{"name": "ticker", "product_ids": "BTC-USD"}]},
         "product_ids must be an array of strings"),
        ({"type": "subscribe", "channels": [7]}, "a channel is a name or an object with a 'name'"),
    ],
)
async def test_a_bad_request_gets_an_error_subscribes_nothing_and_the_connection_stays(
    nursery: trio.Nursery, body: dict[str, Any], reason: str
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        answer = await request(ws, body)
        assert answer == {"type": "error", "message": "Failed to subscribe", "reason": reason}
        assert held(await request(ws, subscribe_body("ticker"))) == {"ticker": ["BTC-USD"]}
    assert sim.errors_sent == 1


@pytest.mark.parametrize("text", ["{", "[1]", '{"type": "ping"}'])
async def test_a_message_that_is_no_request_gets_an_error(nursery: trio.Nursery, text: str) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await ws.send_message(text)
        answer = await receive(ws)
    assert answer["type"] == "error" and answer["reason"]


async def test_unsubscribe_drops_the_named_products_or_the_whole_channel(nursery: trio.Nursery) -> None:
    sim = await start(nursery, speed=20.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await request(ws, subscribe_body("matches", "ticker", products=("BTC-USD", "ETH-USD")))
        channels = [{"name": "matches", "product_ids": ["BTC-USD"]}]
        named = await request(ws, {"type": "unsubscribe", "channels": channels})
        # the documented unsubscribe: no product ids, the whole channel
        whole = await request(ws, {"type": "unsubscribe", "channels": ["ticker"]})
        later = [await receive(ws) for _ in range(5)]
    assert held(named) == {"matches": ["ETH-USD"], "ticker": ["BTC-USD", "ETH-USD"]}
    assert held(whole) == {"matches": ["ETH-USD"]}
    assert {(m["type"], m["product_id"]) for m in later} == {("match", "ETH-USD")}


def test_the_protocol_object_answers_without_sockets_through_the_queue() -> None:
    def last_match(product: str) -> str:
        return orjson.dumps({"type": "last_match", "product_id": product}).decode()

    protocol = CoinbaseExchangeProtocol(products=["BTC-USD"], last_match=last_match)
    accepted = protocol.open("/", "")
    assert isinstance(accepted, Accept)
    conn = accepted.connection
    answer = protocol.receive(conn, orjson.dumps(subscribe_body("matches")).decode())
    assert answer.queued and answer.start == ("matches:BTC-USD",)
    assert [orjson.loads(f)["type"] for f in answer.frames] == ["subscriptions", "last_match"]
    assert protocol.open("/ws", "") == protocol.open("/feed", "")  # both 404
    assert isinstance(conn, SimConnection)


# ---- the 5-second rule and the message limit -----------------------------------------------------


async def test_a_connection_that_does_not_subscribe_in_five_seconds_is_cut(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        opened = trio.current_time()
        await request(ws, subscribe_body("matches", products=("NOPE-USD",)))  # a refusal holds nothing
        assert await close_code(ws) == 1006
    assert trio.current_time() - opened == pytest.approx(5.0, abs=0.1)
    assert sim.subscribe_timeouts == 1


async def test_the_101st_message_within_a_second_from_one_address_closes_its_connection(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as first, open_websocket_url(sim.ws_url) as second:
        for _ in range(60):
            await request(first, subscribe_body("heartbeat"))
        for _ in range(40):
            await request(second, subscribe_body("heartbeat"))
        await send(second, subscribe_body("heartbeat"))
        assert await close_code(second) == 1008
        mock_clock.jump(1.5)  # the window has passed: the other connection carries on
        assert held(await request(first, subscribe_body("heartbeat"))) == {"heartbeat": ["BTC-USD"]}
    assert sim.rate_limit_closes == 1


# ---- market data ----------------------------------------------------------------------------------


async def test_matches_count_each_products_trades_one_by_one_and_tickers_share_their_sequence(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, subscribe_body("matches", "ticker", products=("BTC-USD", "ETH-USD")))
        seen = [await receive(ws) for _ in range(300)]
    last = {m["product_id"]: m for m in seen if m["type"] == "last_match"}
    matches = [m for m in seen if m["type"] == "match"]
    tickers = [m for m in seen if m["type"] == "ticker"]
    assert all(list(m) == MATCH_FIELDS and m["side"] in ("buy", "sell") for m in matches)
    assert all(list(t) == TICKER_FIELDS for t in tickers)
    for product in ("BTC-USD", "ETH-USD"):
        ids = [last[product]["trade_id"]] + [m["trade_id"] for m in matches if m["product_id"] == product]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        sequences = [m["sequence"] for m in matches if m["product_id"] == product]
        assert all(b > a + 1 for a, b in itertools.pairwise(sequences))  # matches see part of the feed
    by_trade = {(m["product_id"], m["trade_id"]): m for m in matches}
    for ticker in tickers:
        trade = by_trade[ticker["product_id"], ticker["trade_id"]]
        assert ticker["sequence"] == trade["sequence"] and ticker["price"] == trade["price"]
        assert ticker["side"] != trade["side"]  # the taker's against the maker's
        assert float(ticker["best_bid"]) < float(ticker["best_ask"])


async def test_heartbeats_come_every_second_per_product_with_its_sequence_and_last_trade(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery, quiet_products=["XLM-USD"])
    async with open_websocket_url(sim.ws_url) as ws:
        await request(ws, subscribe_body("heartbeat", products=("XLM-USD", "BTC-USD")))
        started = trio.current_time()
        beats = await messages_of(ws, "heartbeat", 120)
        elapsed = trio.current_time() - started
    assert all(list(b) == HEARTBEAT_FIELDS for b in beats)
    assert elapsed == pytest.approx(60, abs=1.5)
    quiet = [b for b in beats if b["product_id"] == "XLM-USD"]
    assert len(quiet) == 60 and len({(b["last_trade_id"], b["sequence"]) for b in quiet}) == 1
    assert quiet[0]["last_trade_id"] == sim.last_trade_id("XLM-USD")


async def test_skipped_trades_leave_a_gap_in_the_ids_that_the_heartbeat_tells(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery, speed=5.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, subscribe_body("matches", "heartbeat"))
        first = (await messages_of(ws, "match", 1))[0]["trade_id"]
        sim.skip_trades(3, "BTC-USD")
        seen = [await receive(ws)]
        while seen[-1]["type"] != "match" or len([m for m in seen if m["type"] == "match"]) < 20:
            seen.append(await receive(ws))
    ids = [first] + [m["trade_id"] for m in seen if m["type"] == "match"]
    # three trades left out (after those of the batch already queued); the heartbeats count them
    assert [b - a for a, b in itertools.pairwise(ids) if b != a + 1] == [4]
    last_seen = 0
    for message in seen:
        if message["type"] == "match":
            last_seen = message["trade_id"]
        else:
            assert message["last_trade_id"] >= last_seen


async def test_a_data_stall_stops_the_market_while_heartbeats_go_on(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery, speed=5.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, subscribe_body("matches", "heartbeat"))
        await messages_of(ws, "match", 5)
        sim.stall_data(True)
        beats = await messages_of(ws, "heartbeat", 10)
        sim.stall_data(False)
        after = await messages_of(ws, "match", 1)
    # no trade happened meanwhile: the heartbeats' count stays, the next match follows on
    assert len({b["last_trade_id"] for b in beats[1:]}) == 1
    assert after[0]["trade_id"] == beats[-1]["last_trade_id"] + 1


# ---- REST, paths, faults ------------------------------------------------------------------------


async def test_products_lists_every_product_online_and_delisted_ones_disabled(nursery: trio.Nursery) -> None:
    sim = await start(nursery, products=["BTC-USD"], quiet_products=["XLM-USD"],
                      delisted_products=["OLD-USD"])
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        listed = (await client.get("/products")).json()
        missing = await client.get("/products/BTC-USD/book")
        sim.rest_fail(True)
        outage = await client.get("/products")
    assert [(p["id"], p["status"], p["trading_disabled"]) for p in listed] == [
        ("BTC-USD", "online", False), ("XLM-USD", "online", False), ("OLD-USD", "delisted", True)
    ]
    assert {"base_currency", "quote_currency", "quote_increment", "base_increment"} <= set(listed[0])
    assert (missing.status_code, outage.status_code) == (404, 503)
    async with open_websocket_url(sim.ws_url) as ws:
        answer = await request(ws, subscribe_body("matches", products=("OLD-USD",)))
    assert answer["reason"] == "OLD-USD is not a valid product"


@pytest.mark.parametrize("path", ["/ws", "/feed"])
async def test_other_paths_are_rejected_with_404(nursery: trio.Nursery, path: str) -> None:
    sim = await start(nursery)
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(sim.url(path)):
            pass
    assert rejected.value.status_code == 404


async def test_refused_symbols_get_the_venues_error_and_swallowed_subscribes_no_answer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await request(ws, subscribe_body("heartbeat"))  # held: the 5-second rule is met
        sim.refuse_symbols(["ETH-USD"])
        refused = await request(ws, subscribe_body("matches", products=("BTC-USD", "ETH-USD")))
        sim.swallow_subscribes(True)
        await send(ws, subscribe_body("ticker"))
        with trio.move_on_after(30):
            while (await receive(ws))["type"] != "subscriptions":
                pass
        conn = sim.connections[0]
    assert refused["reason"] == "ETH-USD is not a valid product"
    assert "ticker:BTC-USD" not in conn.topics and "matches:BTC-USD" not in conn.topics


async def test_send_malformed_delivers_a_truncated_frame_of_the_venues_shape(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await request(ws, subscribe_body("heartbeat"))
        sim.send_malformed()
        text = await ws.get_message()
        while not str(text).startswith('{"type":"match"'):
            text = await ws.get_message()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)


def test_the_spec_serves_the_venue_with_its_symbols_and_a_spare_it_lists() -> None:
    assert SIMULATOR.venue_ids == ("coinbase-exchange",)
    sim = SIMULATOR.make(("coinbase-exchange",), 1.0)
    assert isinstance(sim, CoinbaseExchangeSimulator)
    assert {*SIMULATOR.symbols["coinbase-exchange"], SIMULATOR.spare} <= set(sim.products)


async def test_module_entry_point_serves_coinbase_exchange_and_stops_on_sigint(nursery: trio.Nursery) -> None:
    command = [sys.executable, "-m", "feedd.sim", "coinbase-exchange", "--speed", "2"]
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
        answer = await request(ws, subscribe_body("ticker", products=("SOL-USD",)))
        assert held(answer) == {"ticker": ["SOL-USD"]}
    async with httpx.AsyncClient(base_url=lines["rest_url"]) as client:
        body = (await client.get("/products")).json()
    assert [p["id"] for p in body] == ["BTC-USD", "ETH-USD", "SOL-USD"]
    process.send_signal(signal.SIGINT)
    with trio.fail_after(10):
        assert await process.wait() == 0


async def test_feeds_sharing_a_tape_start_at_evenly_spaced_points_of_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # the core helper the simulator replays its products with (feedd.sim.replay.play_staggered)
    shared = parse_recording("shared", "\n".join(f'{{"n": {i}}}' for i in range(4)), "1.0\n2.0\n3.0\n4.0\n")
    alone = parse_recording("alone", '{"n": 10}\n{"n": 11}\n', "1.0\n2.0\n")
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    demand = Demand()
    demand.add(1)
    feeds = [(shared, lambda p: seen["a"].append(p["n"]), demand),
             (shared, lambda p: seen["b"].append(p["n"]), demand),
             (alone, lambda p: seen["c"].append(p["n"]), demand)]
    play_staggered(nursery, feeds, speed=2.0)
    await trio.sleep(1.9)  # 0.5 s a payload at twice the recorded pace
    assert [s[:3] for s in seen.values()] == [[0, 1, 2], [2, 3, 0], [10, 11, 10]]
