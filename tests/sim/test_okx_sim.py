"""The OKX simulator speaks OKX v5's public protocol: per-arg acks, errors with codes, the text
ping, the 30 s cut with 4004, the hourly request limit, generated trades and tickers in contracts
for derivatives, the instruments list per instType, the 64008 notice, faults.

Clients are real trio-websocket connections; anything that waits for time runs under an
autojump MockClock.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from feedd.sim import OkxSimulator
from feedd.sim.okx import PATH

TICKER_FIELDS = {"instType", "instId", "last", "lastSz", "askPx", "askSz", "bidPx", "bidSz", "open24h",
                 "high24h", "low24h", "volCcy24h", "vol24h", "sodUtc0", "sodUtc8", "ts"}


async def start(nursery: trio.Nursery, **kwargs: Any) -> OkxSimulator:
    sim = OkxSimulator(**kwargs)
    await nursery.start(sim.serve)
    return sim


async def send(ws: WebSocketConnection, obj: Any) -> None:
    await ws.send_message(orjson.dumps(obj).decode())


async def receive(ws: WebSocketConnection) -> Any:
    return orjson.loads(await ws.get_message())


async def replies(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` event replies, data pushes skipped."""
    found: list[dict[str, Any]] = []
    while len(found) < count:
        message = await receive(ws)
        if "event" in message:
            found.append(message)
    return found


def request(op: str, *topics: tuple[str, str], req_id: str | None = "7") -> dict[str, Any]:
    body: dict[str, Any] = {"op": op, "args": [{"channel": c, "instId": i} for c, i in topics]}
    return body if req_id is None else {"id": req_id, **body}


async def pushes(ws: WebSocketConnection, channel: str, inst_id: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while len(found) < count:
        message = await receive(ws)
        if message.get("arg") == {"channel": channel, "instId": inst_id} and "data" in message:
            found.append(message)
    return found


async def close_reason(ws: WebSocketConnection) -> tuple[int, str | None]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    reason = closed.value.reason
    assert reason is not None
    return reason.code, reason.reason


async def test_every_arg_is_acked_with_the_request_id_and_the_connection_id(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, request("subscribe", ("trades", "BTC-USDT"), ("tickers", "BTC-USDT-SWAP")))
        first, second = await replies(ws, 2)
        [conn] = sim.connections
    assert first == {"id": "7", "event": "subscribe", "arg": {"channel": "trades", "instId": "BTC-USDT"},
                     "connId": conn.conn_id}
    assert second["arg"] == {"channel": "tickers", "instId": "BTC-USDT-SWAP"}
    assert sim.ws_url.endswith(PATH)


async def test_without_an_id_the_ack_has_none(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, request("subscribe", ("trades", "BTC-USDT"), req_id=None))
        [ack] = await replies(ws, 1)
    assert "id" not in ack and ack["event"] == "subscribe"


async def test_an_unknown_instrument_is_refused_alone_naming_it_and_the_rest_is_acked(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, request("subscribe", ("trades", "ETH-XYZ"), ("trades", "BTC-USDT")))
        error, ack = await replies(ws, 2)
    assert error["event"] == "error" and error["code"] == "60018" and error["id"] == "7"
    assert "channel:trades,instId:ETH-XYZ" in error["msg"] and "arg" not in error
    assert ack["event"] == "subscribe" and ack["arg"]["instId"] == "BTC-USDT"
    assert sim.errors_sent == 1


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "60012"),
        ('{"op": "subscribe", "argss": []}', "60012"),
        ('{"op": "login", "args": [{}]}', "60019"),
        ('{"id": 5, "op": "subscribe", "args": []}', "60012"),
    ],
)
async def test_bad_requests_get_their_error_code_and_the_connection_stays(
    nursery: trio.Nursery, text: str, code: str
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await ws.send_message(text)
        [error] = await replies(ws, 1)
        assert error["event"] == "error" and error["code"] == code
        await send(ws, request("subscribe", ("trades", "BTC-USDT")))
        [ack] = await replies(ws, 1)
        assert ack["event"] == "subscribe"


async def test_unsubscribe_is_acked_per_arg_and_the_channel_stops(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, speed=10.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, request("subscribe", ("trades", "BTC-USDT")))
        await pushes(ws, "trades", "BTC-USDT", 2)
        await send(ws, request("unsubscribe", ("trades", "BTC-USDT")))
        [ack] = await replies(ws, 1)
        assert ack["event"] == "unsubscribe"
        assert sim.connections[0].topics == {}
        with trio.move_on_after(5):
            while True:
                assert "data" not in await receive(ws)


async def test_the_481st_request_within_an_hour_is_too_frequent(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, requests_per_hour=3)
    async with open_websocket_url(sim.ws_url) as ws:
        for op in ("subscribe", "unsubscribe", "subscribe"):
            await send(ws, request(op, ("tickers", "BTC-USDT")))
        await replies(ws, 3)
        await send(ws, request("unsubscribe", ("tickers", "BTC-USDT")))
        [refused] = await replies(ws, 1)
        assert (refused["code"], refused["id"]) == ("60014", "7")
        for _ in range(145):  # an hour, kept open by pings
            await trio.sleep(25)
            await ws.send_message("ping")
            while await ws.get_message() != "pong":
                pass
        await send(ws, request("unsubscribe", ("tickers", "BTC-USDT")))
        [ack] = await replies(ws, 1)
        assert ack["event"] == "unsubscribe"


async def test_the_text_ping_gets_the_text_pong(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await ws.send_message("ping")
        assert await ws.get_message() == "pong"
        sim.set_pong_silent(True)
        await ws.send_message("ping")
        with trio.move_on_after(0.2):
            await ws.get_message()
            pytest.fail("a silent server answered the ping")
    assert sim.pings_received == 2


async def test_a_connection_without_data_or_pings_is_closed_with_4004_after_30_s(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, request("subscribe", ("trades", "BTC-USDT")))
        await replies(ws, 1)
        sim.set_silent(True)
        opened = trio.current_time()
        assert await close_reason(ws) == (4004, "No data received in 30s")
    assert trio.current_time() - opened == pytest.approx(30.0, abs=0.5)
    assert sim.idle_closes == 1


async def test_pings_within_30_s_keep_a_quiet_connection_open(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, instruments=("BTC-USDT", "ETH-USDT"))
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, request("subscribe", ("trades", "BTC-USDT")))
        await replies(ws, 1)
        sim.set_silent(True)
        for _ in range(20):
            await trio.sleep(25)
            await ws.send_message("ping")
    assert sim.idle_closes == 0


async def test_trades_are_numbered_one_by_one_with_fresh_times_and_taker_sides(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, speed=10.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, request("subscribe", ("trades", "BTC-USDT"), ("trades", "BTC-USD-261225")))
        spot = await pushes(ws, "trades", "BTC-USDT", 5)
        future = await pushes(ws, "trades", "BTC-USD-261225", 3)
    rows = [m["data"][0] for m in spot]
    ids = [int(r["tradeId"]) for r in rows]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert {r["side"] for r in rows} <= {"buy", "sell"} and all(r["count"] == "1" for r in rows)
    assert all(abs(int(r["ts"]) - time.time() * 1000) < 10_000 for r in rows)
    assert all(float(r["sz"]) < 1 for r in rows)  # spot: base currency
    assert all(m["data"][0]["sz"].isdigit() for m in future)  # futures: whole contracts


async def test_a_tickers_subscriber_gets_the_current_ticker_at_once(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, request("subscribe", ("tickers", "BTC-USD-SWAP")))
        await replies(ws, 1)
        [push] = await pushes(ws, "tickers", "BTC-USD-SWAP", 1)
    ticker = push["data"][0]
    assert set(ticker) == TICKER_FIELDS and ticker["instType"] == "SWAP"
    assert float(ticker["bidPx"]) < float(ticker["last"]) < float(ticker["askPx"])
    # inverse contracts of 100 USD: vol24h contracts = volCcy24h BTC x price / 100
    assert float(ticker["vol24h"]) == pytest.approx(float(ticker["volCcy24h"]) * float(ticker["last"]) / 100,
                                                    rel=1e-6)


async def test_instruments_are_listed_per_instrument_type_with_contract_values(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        lists = {t: (await http.get("/api/v5/public/instruments", params={"instType": t})).json()
                 for t in ("SPOT", "SWAP", "FUTURES", "OPTION")}
        missing = await http.get("/api/v5/public/instruments")
    assert [e["instId"] for e in lists["SPOT"]["data"]] == ["BTC-USDT", "ETH-USDT"]
    swaps = {e["instId"]: e for e in lists["SWAP"]["data"]}
    assert (swaps["BTC-USDT-SWAP"]["ctVal"], swaps["BTC-USDT-SWAP"]["ctType"]) == ("0.01", "linear")
    assert (swaps["BTC-USD-SWAP"]["ctVal"], swaps["BTC-USD-SWAP"]["ctValCcy"]) == ("100", "USD")
    assert [e["instId"] for e in lists["FUTURES"]["data"]] == ["BTC-USD-261225"]
    assert lists["OPTION"] == {"code": "0", "msg": "", "data": []}
    assert missing.status_code == 400 and missing.json()["code"] == "50014"


async def test_the_upgrade_notice_comes_before_the_connection_is_closed(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, request("subscribe", ("trades", "BTC-USDT")))
        await replies(ws, 1)
        sim.send_server_shutdown(close_after=60.0)
        [notice] = await replies(ws, 1)
        sent = trio.current_time()
        assert (notice["event"], notice["code"]) == ("notice", "64008")
        assert (await close_reason(ws))[0] == 1001
    assert trio.current_time() - sent == pytest.approx(60.0, abs=0.5)


async def test_other_paths_are_rejected_and_refusals_have_okx_bodies(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    with pytest.raises(ConnectionRejected) as missing:
        async with open_websocket_url(sim.url("/ws/v5/private")):
            pass
    assert missing.value.status_code == 404
    sim.refuse_connections(1, status=429)
    with pytest.raises(ConnectionRejected) as refused:
        async with open_websocket_url(sim.ws_url):
            pass
    assert refused.value.status_code == 429
    assert orjson.loads(refused.value.body or b"{}")["code"] == "50011"


async def test_refused_symbols_and_swallowed_subscribes(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    sim.refuse_symbols(["BTC-USDT"])
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, request("subscribe", ("trades", "BTC-USDT")))
        [error] = await replies(ws, 1)
        assert error["code"] == "60018"
        sim.swallow_subscribes(True)
        await send(ws, request("subscribe", ("trades", "ETH-USDT")))
        await ws.send_message("ping")
        assert await ws.get_message() == "pong"  # the subscribe got no answer


def test_instruments_must_be_okx_ids() -> None:
    with pytest.raises(ValueError, match="OKX ids"):
        OkxSimulator(instruments=("btcusdt",))
