"""The Bybit options simulator speaks ``/v5/public/option``: COMMAND_RESP acks naming success and
fail topics, the option pong, trades by base coin, snapshot tickers, instruments by base coin."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from feedd.sim import BybitOptionSimulator

CALL, PUT, ETH_CALL = "BTC-25DEC26-100000-C", "BTC-25DEC26-90000-P", "ETH-25DEC26-3500-C"


async def start(nursery: trio.Nursery, **options: Any) -> BybitOptionSimulator:
    sim = BybitOptionSimulator(**options)
    await nursery.start(sim.serve)
    return sim


async def send(ws: WebSocketConnection, body: dict[str, Any]) -> dict[str, Any]:
    """Send a request; the next frame that is not data."""
    await ws.send_message(orjson.dumps(body).decode())
    while True:
        message = orjson.loads(await ws.get_message())
        if "topic" not in message:
            return message


async def test_the_ack_names_success_and_fail_topics_and_the_good_ones_stream(nursery: trio.Nursery) -> None:
    sim = await start(nursery, speed=20.0)
    async with open_websocket_url(sim.ws_url) as ws:
        reply = await send(ws, {"op": "subscribe", "args": ["publicTrade.BTC", f"tickers.{CALL}",
                                                            "tickers.BTC-1JAN20-1-C"], "req_id": "1"})
        assert set(reply) == {"success", "conn_id", "data", "type"}  # no op, no req_id
        assert reply["type"] == "COMMAND_RESP" and reply["success"] is False
        assert reply["data"] == {"failTopics": ["tickers.BTC-1JAN20-1-C"],
                                 "successTopics": ["publicTrade.BTC", f"tickers.{CALL}"]}
        trades: list[dict[str, Any]] = []
        tickers: list[dict[str, Any]] = []
        with trio.fail_after(10):
            while len(tickers) < 2 or len({t["s"] for t in trades}) < 3:
                message = orjson.loads(await ws.get_message())
                (trades.extend(message["data"]) if message["topic"] == "publicTrade.BTC"
                 else tickers.append(message))
    # one coin topic carries every BTC option, the unsubscribed put included; ids count one by one
    assert {t["s"] for t in trades} == {CALL, PUT, "BTC-25DEC26-110000-C-USDT"}
    ids = [int(t["i"]) for t in trades if t["s"] == CALL]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert {"mP", "iP", "mIv", "iv"} <= set(trades[0]) and "L" not in trades[0]
    assert {t["topic"] for t in tickers} == {f"tickers.{CALL}"}
    assert {t["type"] for t in tickers} == {"snapshot"}
    data = tickers[-1]["data"]
    assert float(data["bidPrice"]) < float(data["lastPrice"]) < float(data["askPrice"])
    assert abs(float(data["change24h"])) < 1  # a fraction


async def test_ping_gets_the_option_pong_and_unsubscribe_is_acknowledged(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        pong = await send(ws, {"req_id": "100001", "op": "ping"})
        assert set(pong) == {"args", "op"} and pong["op"] == "pong" and pong["args"][0].isdigit()
        await send(ws, {"op": "subscribe", "args": [f"tickers.{CALL}"]})
        reply = await send(ws, {"op": "unsubscribe", "args": [f"tickers.{CALL}"]})
    assert reply["data"]["successTopics"] == [f"tickers.{CALL}"]
    assert sim.pings_received == 1


async def test_refusing_an_option_refuses_its_coins_trade_topic(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    sim.refuse_symbols([ETH_CALL])
    async with open_websocket_url(sim.ws_url) as ws:
        reply = await send(ws, {"op": "subscribe", "args": ["publicTrade.ETH", "publicTrade.BTC"]})
    assert reply["data"] == {"failTopics": ["publicTrade.ETH"], "successTopics": ["publicTrade.BTC"]}


async def test_the_2001st_arg_of_a_connection_fails(nursery: trio.Nursery) -> None:
    symbols = [f"BTC-25DEC26-{strike}-C" for strike in range(1000, 2001)]
    sim = await start(nursery, symbols=symbols, max_args_chars=10**6)  # the count alone applies
    topics = [f"{kind}.{symbol}" for symbol in symbols for kind in ("tickers", "orderbook.25")]
    async with open_websocket_url(sim.ws_url) as ws:
        first = await send(ws, {"op": "subscribe", "args": topics[:1999]})
        second = await send(ws, {"op": "subscribe", "args": topics[1999:2002]})
    assert first["success"] is True and len(first["data"]["successTopics"]) == 1999
    assert second["data"] == {"failTopics": topics[2000:2002], "successTopics": [topics[1999]]}


async def test_instruments_are_listed_per_base_coin_and_paged_by_cursor(nursery: trio.Nursery) -> None:
    sim = await start(nursery, instruments_page_size=1)
    url = sim.rest_url + "/v5/market/instruments-info"
    async with httpx.AsyncClient() as http:
        first = (await http.get(url, params={"category": "option"})).json()["result"]
        cursor = first["nextPageCursor"]
        second = (await http.get(url, params={"category": "option", "cursor": cursor})).json()
        eth = (await http.get(url, params={"category": "option", "baseCoin": "ETH"})).json()["result"]
    assert [e["symbol"] for e in first["list"]] == [CALL]  # BTC unless asked: "returns BTC by default"
    assert second["result"]["list"][0]["symbol"] == PUT
    assert [e["symbol"] for e in eth["list"]] == [ETH_CALL] and eth["nextPageCursor"] == ""
    row = first["list"][0]
    assert (row["optionsType"], row["settleCoin"], row["status"]) == ("Call", "USDC", "Trading")
