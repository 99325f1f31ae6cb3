"""The Hyperliquid simulator speaks Hyperliquid's public protocol: one subscription per message and
its echoed ack, the error replies, ping/pong, the idle cut, the per-minute message limit, the
trades snapshot and replayed trades, best bid/offer and asset contexts, ``POST /info``, faults.

Clients are real trio-websocket connections. Anything that must wait for time to pass runs
under an autojump MockClock; payload timestamps are wall-clock milliseconds.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from feedd.sim import HyperliquidSimulator, simulator_for
from feedd.sim.hyperliquid import SNAPSHOT_TRADES, tapes

TRADE_FIELDS = ["coin", "side", "px", "sz", "time", "hash", "tid", "users"]


async def start(nursery: trio.Nursery, **kwargs: Any) -> HyperliquidSimulator:
    sim = HyperliquidSimulator(**kwargs)
    await nursery.start(sim.serve)
    return sim


async def send(ws: WebSocketConnection, obj: Any) -> None:
    await ws.send_message(orjson.dumps(obj).decode())


async def receive(ws: WebSocketConnection) -> Any:
    return orjson.loads(await ws.get_message())


def request(method: str, kind: str, coin: str) -> dict[str, Any]:
    return {"method": method, "subscription": {"type": kind, "coin": coin}}


async def reply_to(ws: WebSocketConnection, obj: Any) -> dict[str, Any]:
    """Send ``obj`` and return the next reply (ack, error or pong), skipping data."""
    await send(ws, obj)
    while (message := await receive(ws))["channel"] not in ("subscriptionResponse", "error", "pong"):
        pass
    assert isinstance(message, dict)
    return message


async def subscribe(ws: WebSocketConnection, kind: str, coin: str) -> dict[str, Any]:
    return await reply_to(ws, request("subscribe", kind, coin))


async def next_of(ws: WebSocketConnection, channel: str) -> dict[str, Any]:
    while (message := await receive(ws))["channel"] != channel:
        pass
    assert isinstance(message, dict)
    return message


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


@pytest.mark.parametrize("kind", ["trades", "bbo", "activeAssetCtx"])
async def test_a_subscribe_is_acknowledged_by_echoing_it(nursery: trio.Nursery, kind: str) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        answer = await subscribe(ws, kind, "BTC")
        assert answer == {"channel": "subscriptionResponse", "data": request("subscribe", kind, "BTC")}
        conn = await sim.wait_subscribed(f"{kind}:BTC")
    assert list(conn.topics) == [f"{kind}:BTC"]


@pytest.mark.parametrize(
    ("sent", "said"),
    [
        (request("subscribe", "trades", "NOPE"), 'Invalid subscription {"type":"trades","coin":"NOPE"}'),
        (request("subscribe", "l4Book", "BTC"), 'Invalid subscription {"type":"l4Book","coin":"BTC"}'),
        ({"method": "subscribe"}, "Invalid subscription null"),
        (request("unsubscribe", "trades", "BTC"), 'Already unsubscribed: {"type":"trades","coin":"BTC"}'),
        ({"method": "post"}, 'Error parsing JSON into valid websocket request: {"method":"post"}'),
    ],
)
async def test_a_bad_request_gets_an_error_and_the_connection_stays(
    nursery: trio.Nursery, sent: dict[str, Any], said: str
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        assert await reply_to(ws, sent) == {"channel": "error", "data": said}
        assert (await subscribe(ws, "trades", "ETH"))["channel"] == "subscriptionResponse"
    assert sim.protocol.errors_sent == 1  # type: ignore[attr-defined]


async def test_text_that_is_not_json_gets_the_parse_error(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await ws.send_message("hello")
        assert await receive(ws) == {
            "channel": "error", "data": "Error parsing JSON into valid websocket request: hello",
        }


async def test_a_held_subscription_subscribed_again_is_already_subscribed(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "bbo", "ETH")
        again = await subscribe(ws, "bbo", "ETH")
    assert again == {"channel": "error", "data": 'Already subscribed: {"type":"bbo","coin":"ETH"}'}


async def test_an_unsubscribe_is_acknowledged_and_the_data_stops(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, speed=20.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "trades", "BTC")
        await next_of(ws, "trades")
        answer = await reply_to(ws, request("unsubscribe", "trades", "BTC"))
        assert answer["data"] == request("unsubscribe", "trades", "BTC")
        with trio.move_on_after(30):
            while True:
                assert (await receive(ws))["channel"] != "trades"
        assert sim.connections[0].topics == {}


async def test_a_refused_coin_is_an_invalid_subscription_until_the_fault_ends(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        sim.refuse_symbols(["SOL"])
        assert (await subscribe(ws, "trades", "SOL"))["data"].startswith("Invalid subscription")
        sim.refuse_symbols([])
        assert (await subscribe(ws, "trades", "SOL"))["channel"] == "subscriptionResponse"


async def test_swallowed_subscribes_get_no_answer(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        sim.swallow_subscribes(True)
        await send(ws, request("subscribe", "trades", "BTC"))
        with trio.move_on_after(10) as waited:
            await ws.get_message()
        assert waited.cancelled_caught and sim.connections[0].topics == {}


# ---- liveness and limits ----------------------------------------------------------------------


async def test_ping_gets_the_documented_pong_unless_pongs_are_silenced(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        assert await reply_to(ws, {"method": "ping"}) == {"channel": "pong"}
        sim.set_pong_silent(True)
        await send(ws, {"method": "ping"})
        with trio.move_on_after(5) as waited:
            await ws.get_message()
    assert waited.cancelled_caught and sim.pings_received == 2


async def test_a_connection_sent_nothing_for_sixty_seconds_is_cut(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        opened = trio.current_time()
        assert await close_code(ws) == 1006  # cut, no close frame
    assert trio.current_time() - opened == pytest.approx(60.0, abs=0.5)
    assert sim.idle_closes == 1


async def test_pings_keep_a_quiet_connection_open(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        for _ in range(30):  # 25 minutes
            await trio.sleep(50)
            assert await reply_to(ws, {"method": "ping"}) == {"channel": "pong"}
    assert sim.idle_closes == 0 and sim.pings_received == 30


async def test_messages_beyond_the_per_minute_limit_of_an_address_close_the_connection(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, max_messages_per_minute=5)
    async with open_websocket_url(sim.ws_url) as first, open_websocket_url(sim.ws_url) as second:
        for _ in range(3):
            assert await reply_to(first, {"method": "ping"}) == {"channel": "pong"}
            await trio.sleep(5)  # spread over a quarter minute: the minute still counts them
        assert await reply_to(second, {"method": "ping"}) == {"channel": "pong"}
        assert await reply_to(second, {"method": "ping"}) == {"channel": "pong"}
        await send(second, {"method": "ping"})  # the sixth of the address within a minute
        assert await close_code(second) == 1008
    assert sim.rate_limit_closes == 1


# ---- market data ------------------------------------------------------------------------------


async def test_a_trades_subscription_gets_the_last_trades_then_new_ones_numbered_on(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, speed=20.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "trades", "ETH")
        assert (await next_of(ws, "trades"))["data"] == []  # nothing traded yet
        first = [t["tid"] for t in (await next_of(ws, "trades"))["data"]]
        await trio.sleep(60)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "trades", "ETH")
        snapshot = (await next_of(ws, "trades"))["data"]
        update = (await next_of(ws, "trades"))["data"]
    assert first and first == list(range(1, len(first) + 1))  # the first trades of the coin
    assert len(snapshot) == SNAPSHOT_TRADES
    tids = [t["tid"] for t in snapshot + update]
    assert tids == list(range(tids[0], tids[0] + len(tids)))  # the snapshot leads into the updates
    for trade in snapshot + update:
        assert list(trade) == TRADE_FIELDS
        assert trade["coin"] == "ETH" and trade["side"] in ("B", "A") and fresh(trade["time"])
        assert float(trade["px"]) > 0 and float(trade["sz"]) > 0 and trade["px"][-1] != "."


async def test_every_coin_plays_the_tape_at_a_level_of_its_own(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, speed=20.0)
    prices = {}
    async with open_websocket_url(sim.ws_url) as ws:
        for coin in ("BTC", "ETH", "@107"):
            await subscribe(ws, "trades", coin)
        while len(prices) < 3:
            for trade in (await next_of(ws, "trades"))["data"]:
                prices[trade["coin"]] = float(trade["px"])
    assert prices["BTC"] == pytest.approx(tapes()[2], rel=0.01)
    assert prices["ETH"] == pytest.approx(tapes()[2] * 0.042, rel=0.01)
    assert len(set(prices.values())) == 3


async def test_best_bid_offer_comes_on_subscribe_and_when_it_changes(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, speed=20.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "bbo", "BTC")
        seen = [(await next_of(ws, "bbo"))["data"] for _ in range(3)]
    for data in seen:
        assert data["coin"] == "BTC" and fresh(data["time"])
        bid, ask = data["bbo"]
        assert set(bid) == set(ask) == {"px", "sz", "n"} and float(bid["px"]) < float(ask["px"])
    assert seen[0]["bbo"] != seen[1]["bbo"] != seen[2]["bbo"]  # only changes are sent


@pytest.mark.parametrize(
    ("coin", "channel"), [("BTC", "activeAssetCtx"), ("PURR/USDC", "activeSpotAssetCtx")]
)
async def test_an_asset_context_comes_on_subscribe_and_with_the_market(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock, coin: str, channel: str
) -> None:
    sim = await start(nursery, speed=20.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "activeAssetCtx", coin)
        contexts = [(await next_of(ws, channel))["data"] for _ in range(3)]
    for data in contexts:
        ctx = data["ctx"]
        assert data["coin"] == coin
        assert {"prevDayPx", "dayNtlVlm", "markPx", "midPx", "dayBaseVlm"} <= set(ctx)
        assert ("funding" in ctx) is (channel == "activeAssetCtx")
        assert float(ctx["markPx"]) > 0 and float(ctx["prevDayPx"]) > 0 and float(ctx["dayBaseVlm"]) > 0
    assert float(contexts[-1]["ctx"]["midPx"]) > 0


async def test_a_silent_server_sends_nothing_until_resumed(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, speed=20.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "trades", "BTC")
        await next_of(ws, "trades")
        sim.set_silent(True)
        with trio.move_on_after(10) as waited:
            await ws.get_message()
        sim.set_silent(False)
        assert (await next_of(ws, "trades"))["data"]
    assert waited.cancelled_caught


# ---- REST -------------------------------------------------------------------------------------


async def test_info_answers_meta_and_spot_meta(nursery: trio.Nursery) -> None:
    sim = await start(nursery, perps=("BTC", "kPEPE"), spot=("PURR/USDC", "@107"))
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        meta = (await http.post("/info", json={"type": "meta"})).json()
        spot = (await http.post("/info", json={"type": "spotMeta"})).json()
        bad = await http.post("/info", json={"type": "nope"})
        wrong = await http.get("/info")
    assert [entry["name"] for entry in meta["universe"]] == ["BTC", "kPEPE"]
    assert [(pair["name"], pair["index"]) for pair in spot["universe"]] == [("PURR/USDC", 0), ("@107", 107)]
    names = {token["index"]: token["name"] for token in spot["tokens"]}
    pairs = [[names[i] for i in pair["tokens"]] for pair in spot["universe"]]
    assert pairs == [["PURR", "USDC"], ["TOKEN107", "USDC"]]
    assert bad.status_code == 422 and wrong.status_code == 404


async def test_a_rest_outage_answers_503_until_it_ends(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        sim.rest_fail(True)
        assert (await http.post("/info", json={"type": "meta"})).status_code == 503
        sim.rest_fail(False)
        assert (await http.post("/info", json={"type": "meta"})).status_code == 200


async def test_only_the_ws_path_is_served(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(sim.url("/stream")):
            pass
    assert rejected.value.status_code == 404


def test_the_module_is_found_with_its_venue_and_symbols() -> None:
    spec = simulator_for("hyperliquid")
    assert (spec.name, spec.main, spec.spare) == ("hyperliquid", "hyperliquid", "SOL")
    assert spec.symbols["hyperliquid"] == ("BTC", "ETH")
    assert isinstance(spec.make(("hyperliquid",), 1.0), HyperliquidSimulator)
