"""The Binance simulator speaks Binance's protocol: acks, errors, limits, routes, faults, flood.

Clients are real trio-websocket connections (or a raw wsproto client where a test needs one that
never answers pings). Anything that must wait for time to pass runs under an autojump MockClock.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
import trio
import trustme
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Ping, Request

from feedd.sim import BinanceSimulator, ControlRequest, load_recording, parse_control, parse_recording

# The documented 24hrTicker field set (protocols/samples/binance/ticker.json).
TICKER_FIELDS = {
    "e",
    "E",
    "s",
    "p",
    "P",
    "w",
    "x",
    "c",
    "Q",
    "b",
    "B",
    "a",
    "A",
    "o",
    "h",
    "l",
    "v",
    "q",
    "O",
    "C",
    "F",
    "L",
    "n",
}


async def start(nursery: trio.Nursery, **kwargs: Any) -> BinanceSimulator:
    sim = BinanceSimulator(**kwargs)
    await nursery.start(sim.serve)
    return sim


def _port(sim: BinanceSimulator) -> int:
    return int(sim.ws_url.rsplit(":", 1)[1].split("/")[0])


async def send(ws: WebSocketConnection, obj: Any) -> None:
    await ws.send_message(orjson.dumps(obj).decode())


async def receive(ws: WebSocketConnection) -> Any:
    return orjson.loads(await ws.get_message())


async def subscribe(ws: WebSocketConnection, *streams: str, request_id: int = 1) -> None:
    await send(ws, {"method": "SUBSCRIBE", "params": list(streams), "id": request_id})
    assert await receive(ws) == {"result": None, "id": request_id}


async def events(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` combined-stream events (control replies are not expected here)."""
    return [await receive(ws) for _ in range(count)]


async def close_code(ws: WebSocketConnection) -> int:
    """Read until the server ends the connection; its close code."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    reason = closed.value.reason
    assert reason is not None
    return reason.code


class RawClient:
    """A bare wsproto client: it shows every control frame and answers nothing by itself."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: deque[Event] = deque()

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int, target: str) -> AsyncIterator[RawClient]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream)
        await stream.send_all(client.ws.send(Request(host="127.0.0.1", target=target)))
        assert isinstance(await client.next_event(), AcceptConnection)
        async with stream:
            yield client

    async def next_event(self) -> Event:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("server closed the TCP connection")
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        return self.pending.popleft()


# ---- control requests (sans-IO) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("hello", {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}),
        (
            '{"params":["btcusdt@trade"],"id":1}',
            {"code": 2, "msg": "Invalid request: missing field `method` at line 1 column 35"},
        ),
        (
            '{"method":"SUBSCRIBE","params":[]}',
            {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
        ),
        (
            '{"method":"SUBSCRIBE","params":[],"id":1.5}',
            {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
        ),
        (
            '{"method":"SUBSCRIBE","params":[],"id":true}',
            {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
        ),
        (
            '{"method":"SUBSCRIBE","params":[],"id":"not ok!"}',
            {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
        ),
        (
            '{"method":"SUBSCRIBE","params":"btcusdt@trade","id":1}',
            {"code": 2, "msg": "Invalid request: property name must be a string"},
        ),
    ],
)
def test_malformed_requests_get_binance_error_replies(text: str, reply: dict[str, Any]) -> None:
    assert parse_control(text) == reply


def test_unknown_method_names_the_variant_and_the_valid_ones() -> None:
    reply = parse_control('{"method":"SUBSCRIB","params":[],"id":1}')
    assert isinstance(reply, dict)
    assert reply["code"] == 2
    assert reply["msg"].startswith(
        "Invalid request: unknown variant `SUBSCRIB`, expected one of SUBSCRIBE, UNSUBSCRIBE, "
        "LIST_SUBSCRIPTIONS, SET_PROPERTY, GET_PROPERTY at line 1 column "
    )
    assert "id" not in reply


@pytest.mark.parametrize("request_id", [None, 7, -3, "abc123", "0b5f2c1e-8a3e-4d7e-9d6c-3f0b5e2a1c44"])
def test_documented_id_forms_are_accepted(request_id: Any) -> None:
    parsed = parse_control(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id}).decode())
    assert parsed == ControlRequest(method="LIST_SUBSCRIPTIONS", params=[], id=request_id)


# ---- recordings ----------------------------------------------------------------------------


def test_recording_gaps_follow_receive_times_in_either_unit() -> None:
    frames = '{"stream":"x@trade","data":{"p":"1"}}\n{"p":"2"}\n{"p":"3"}\n'
    nanos = parse_recording("n", frames, "1000000000\n1500000000\n1500000000\n")
    seconds = parse_recording("s", frames, "1.0\n1.5\n1.5\n")
    for recording in (nanos, seconds):
        assert recording.payloads == ({"p": "1"}, {"p": "2"}, {"p": "3"})
        assert recording.gaps == pytest.approx((0.25, 0.5, 0.0))


@pytest.mark.parametrize(("name", "kind"), [("trade", "trade"), ("aggTrade", "aggTrade")])
def test_bundled_recordings_hold_real_binance_payloads(name: str, kind: str) -> None:
    recording = load_recording("binance", name)
    assert 1000 <= len(recording) <= 1500
    assert {p["e"] for p in recording.payloads} == {kind}
    assert all(gap >= 0 for gap in recording.gaps)
    assert 1 < sum(recording.gaps) < 600


# ---- subscriptions and data ------------------------------------------------------------------


async def test_subscribe_acks_same_id_then_streams_fresh_trades(nursery: trio.Nursery) -> None:
    sim = await start(nursery, speed=20.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, {"method": "SUBSCRIBE", "params": ["ethusdt@trade"], "id": 42})
        assert await receive(ws) == {"result": None, "id": 42}
        trades = await events(ws, 20)
    now = time.time() * 1000
    assert {t["stream"] for t in trades} == {"ethusdt@trade"}
    data = [t["data"] for t in trades]
    assert set(data[0]) == {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
    assert {d["e"] for d in data} == {"trade"}
    assert {d["s"] for d in data} == {"ETHUSDT"}
    ids = [d["t"] for d in data]
    assert ids == list(range(ids[0], ids[0] + 20))
    assert all(now - 10_000 < d["E"] <= now and d["T"] <= d["E"] for d in data)
    # ETH trades at its own level, not BTC's; sizes are positive decimal strings.
    assert all(500 < float(d["p"]) < 10_000 and float(d["q"]) > 0 for d in data)


async def test_trade_ids_keep_increasing_after_the_tape_loops(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, symbols=["BTCUSDT"])
    length = len(load_recording("binance", "trade"))
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "btcusdt@trade")
        ids = [e["data"]["t"] for e in await events(ws, length + 50)]
    assert ids == list(range(ids[0], ids[0] + length + 50))


async def test_unknown_and_upper_case_streams_are_acked_and_silent(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "xyzusdt@trade", "BTCUSDT@trade", "btcusdt@depth")
        with trio.move_on_after(10) as quiet:
            message = await ws.get_message()
            pytest.fail(f"expected silence, got {message!r}")
        assert quiet.cancelled_caught


async def test_list_subscriptions_returns_streams_in_subscription_order(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "xyzusdt@ticker", "abcusdt@trade")
        await send(ws, {"method": "UNSUBSCRIBE", "params": ["xyzusdt@ticker"], "id": 2})
        assert await receive(ws) == {"result": None, "id": 2}
        await send(ws, {"method": "SUBSCRIBE", "params": ["defusdt@trade"], "id": 3})
        assert await receive(ws) == {"result": None, "id": 3}
        await send(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 4})
        assert await receive(ws) == {"result": ["abcusdt@trade", "defusdt@trade"], "id": 4}


async def test_errors_arrive_on_the_wire_without_an_id(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await ws.send_message("{not json")
        assert await receive(ws) == {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 2"}
        await ws.send_message('{"params":[],"id":1}')
        reply = await receive(ws)
        assert reply["code"] == 2 and "missing field `method`" in reply["msg"] and "id" not in reply


async def test_streams_in_the_url_are_subscribed_at_connect(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.url("/stream?streams=btcusdt@trade/ethusdt@ticker")) as ws:
        conn = await sim.wait_subscribed({"btcusdt@trade", "ethusdt@ticker"})
        assert conn.path.startswith("/stream")
        await send(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        while (reply := await receive(ws)).get("id") != 1:
            pass
        assert reply["result"] == ["btcusdt@trade", "ethusdt@ticker"]


async def test_raw_ws_path_sends_bare_payloads(nursery: trio.Nursery) -> None:
    sim = await start(nursery, speed=20.0)
    async with open_websocket_url(sim.url("/ws/btcusdt@bookTicker")) as ws:
        quote = await receive(ws)
    # §2.3: a spot bookTicker has no "e"/"E"; without the envelope only its keys identify it.
    assert set(quote) == {"u", "s", "b", "B", "a", "A"}
    assert quote["s"] == "BTCUSDT" and float(quote["b"]) < float(quote["a"])


async def test_set_property_combined_false_unwraps_events(nursery: trio.Nursery) -> None:
    sim = await start(nursery, speed=20.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, {"method": "SET_PROPERTY", "params": ["combined", False], "id": 1})
        assert await receive(ws) == {"result": None, "id": 1}
        await send(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 2})
        assert await receive(ws) == {"result": False, "id": 2}
        await subscribe(ws, "btcusdt@trade", request_id=3)
        assert (await receive(ws))["e"] == "trade"


async def test_spot_ticker_has_the_documented_fields_and_follows_trades(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "bnbusdt@ticker")
        tickers = [e["data"] for e in await events(ws, 3)]
    assert all(set(t) == TICKER_FIELDS for t in tickers)
    last = tickers[-1]
    assert last["e"] == "24hrTicker" and last["s"] == "BNBUSDT"
    assert float(last["l"]) <= float(last["c"]) <= float(last["h"])
    assert float(last["b"]) < float(last["a"])
    assert float(last["v"]) > 0 and last["n"] == last["L"] - last["F"] + 1
    change = (float(last["c"]) - float(last["o"])) / float(last["o"]) * 100
    assert float(last["P"]) == pytest.approx(change, abs=0.01)
    assert len({t["c"] for t in tickers}) > 1  # the last price moves with the replayed trades


async def test_more_than_1024_streams_on_a_connection_is_an_error(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, *(f"s{i}usdt@trade" for i in range(1024)))
        await send(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 2})
        reply = await receive(ws)
        assert reply["code"] == 2 and reply["id"] == 2
        assert len((await sim.wait_connections(1))[0].streams) == 1024


# ---- limits ----------------------------------------------------------------------------------


async def test_sixth_message_within_a_second_closes_the_connection(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        for request_id in range(6):
            await send(ws, {"method": "LIST_SUBSCRIPTIONS", "id": request_id})
        assert await close_code(ws) == 1008
    assert sim.rate_limit_closes == 1


async def test_five_messages_per_second_are_allowed(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        for request_id in range(15):
            await send(ws, {"method": "LIST_SUBSCRIPTIONS", "id": request_id})
            assert await receive(ws) == {"result": [], "id": request_id}
            if request_id % 5 == 4:
                await trio.sleep(1.0)
    assert sim.rate_limit_closes == 0


async def test_client_that_never_pongs_is_closed_after_the_pong_timeout(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    pings = 0
    async with RawClient.connect(_port(sim), "/stream") as client:
        start_time = trio.current_time()
        while not isinstance(event := await client.next_event(), CloseConnection):
            pings += isinstance(event, Ping)
        elapsed = trio.current_time() - start_time
        await client.stream.send_all(client.ws.send(event.response()))
    assert event.code == 1008
    assert 80 <= elapsed < 81  # first ping at 20 s, unanswered for 60 s (§2.4)
    assert pings >= 1
    assert sim.pong_timeouts == 1


async def test_trio_websocket_client_answers_pings_and_stays(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, ping_interval=5.0, pong_timeout=2.0)
    async with open_websocket_url(sim.ws_url) as ws:
        await trio.sleep(60)
        await send(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert await receive(ws) == {"result": [], "id": 1}
    assert sim.pong_timeouts == 0


# ---- futures ---------------------------------------------------------------------------------


async def test_futures_book_ticker_only_on_public_route(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, futures=True)
    assert sim.ws_url.endswith("/market/stream")
    async with open_websocket_url(sim.url("/public/stream")) as ws:
        await subscribe(ws, "btcusdt@bookTicker", "btcusdt@aggTrade")
        received = await events(ws, 30)
    assert {e["stream"] for e in received} == {"btcusdt@bookTicker"}
    quote = received[0]["data"]
    assert quote["e"] == "bookTicker" and {"E", "T", "u", "b", "B", "a", "A"} <= set(quote)


async def test_futures_market_route_carries_agg_trades_and_tickers_without_quotes(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery, futures=True)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "solusdt@bookTicker", "solusdt@aggTrade", "solusdt@ticker")
        by_stream: dict[str, list[dict[str, Any]]] = {}
        with trio.move_on_after(3):
            while True:
                event = await receive(ws)
                by_stream.setdefault(event["stream"], []).append(event["data"])
    assert set(by_stream) == {"solusdt@aggTrade", "solusdt@ticker"}
    ticker = by_stream["solusdt@ticker"][0]
    assert not {"b", "B", "a", "A"} & set(ticker)  # §2.6
    assert ticker["e"] == "24hrTicker" and ticker["s"] == "SOLUSDT"
    agg = by_stream["solusdt@aggTrade"]
    assert all("M" not in a and a["e"] == "aggTrade" for a in agg)  # §2.6
    assert [a["a"] for a in agg] == list(range(agg[0]["a"], agg[0]["a"] + len(agg)))


# ---- REST ------------------------------------------------------------------------------------


async def test_exchange_info_lists_symbols_and_a_break_symbol_and_can_fail(nursery: trio.Nursery) -> None:
    sim = await start(nursery, symbols=["BTCUSDT", "ETHBTC"])
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        info = (await client.get("/api/v3/exchangeInfo")).json()
        missing = await client.get("/api/v3/nothing")
        sim.rest_fail(True)
        outage = await client.get("/api/v3/exchangeInfo")
        sim.rest_fail(False)
        again = await client.get("/api/v3/exchangeInfo")
    assert info["timezone"] == "UTC" and isinstance(info["serverTime"], int)
    assert info["symbols"] == [
        {"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT"},
        {"symbol": "ETHBTC", "status": "TRADING", "baseAsset": "ETH", "quoteAsset": "BTC"},
        {"symbol": sim.break_symbol, "status": "BREAK", "baseAsset": "BCHSV", "quoteAsset": "USDT"},
    ]
    assert missing.status_code == 404 and "msg" in missing.json()
    assert outage.status_code == 503
    assert again.status_code == 200


async def test_futures_exchange_info_lives_under_fapi(nursery: trio.Nursery) -> None:
    sim = await start(nursery, futures=True)
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        assert (await client.get("/api/v3/exchangeInfo")).status_code == 404
        info = (await client.get("/fapi/v1/exchangeInfo")).json()
    assert [s["symbol"] for s in info["symbols"] if s["status"] == "TRADING"] == list(sim.symbols)


# ---- handshakes and faults -------------------------------------------------------------------


async def test_unknown_path_is_rejected_with_404(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(sim.url("/nope")):
            pass
    assert rejected.value.status_code == 404
    assert sim.connection_attempts == 1 and sim.connections_accepted == 0


async def test_refused_handshakes_get_503_until_the_count_runs_out(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    sim.refuse_connections(2)
    for _ in range(2):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(sim.ws_url):
                pass
        assert rejected.value.status_code == 503
    async with open_websocket_url(sim.ws_url):
        pass
    sim.refuse_connections(-1)
    for _ in range(3):
        with pytest.raises(ConnectionRejected):
            async with open_websocket_url(sim.ws_url):
                pass
    sim.refuse_connections(0)
    async with open_websocket_url(sim.ws_url):
        pass
    assert (sim.connection_attempts, sim.connections_refused, sim.connections_accepted) == (7, 5, 2)


async def test_drop_connections_cuts_every_connection(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as first, open_websocket_url(sim.url("/ws")) as second:
        await sim.wait_connections(2)
        sim.drop_connections()
        assert await close_code(first) == 1006  # abnormal: TCP closed without a close frame
        assert await close_code(second) == 1006
    await sim.wait_until(lambda: not sim.connections)


async def test_drop_connections_with_a_code_closes_cleanly(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await sim.wait_connections(1)
        sim.drop_connections(code=1011, reason="maintenance")
        assert await close_code(ws) == 1011


async def test_silent_server_sends_no_data_until_resumed(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "btcusdt@bookTicker")
        await receive(ws)
        sim.set_silent(True)
        with trio.move_on_after(1):  # frames already in flight
            while True:
                await ws.get_message()
        with trio.move_on_after(30) as quiet:
            message = await ws.get_message()
            pytest.fail(f"expected silence, got {message!r}")
        assert quiet.cancelled_caught
        sim.set_silent(False)
        assert (await receive(ws))["stream"] == "btcusdt@bookTicker"


async def test_silent_server_sends_no_pings_and_keeps_the_connection(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with RawClient.connect(_port(sim), "/stream") as client:
        await sim.wait_connections(1)
        sim.set_silent(True)
        with trio.move_on_after(200) as quiet:
            event = await client.next_event()
            pytest.fail(f"expected nothing, got {event}")
        assert quiet.cancelled_caught
        sim.set_silent(False)
        with trio.fail_after(21):
            assert isinstance(await client.next_event(), Ping)
    assert sim.pong_timeouts == 0


async def test_send_malformed_delivers_an_unparsable_frame(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await sim.wait_connections(1)
        sim.send_malformed()
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(await ws.get_message())


async def test_server_shutdown_is_announced_then_the_connection_closes(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as combined, open_websocket_url(sim.url("/ws")) as raw:
        await sim.wait_connections(2)
        sent_at = trio.current_time()
        sim.send_server_shutdown(close_after=2.0)
        announced = await receive(combined)
        assert announced["stream"] == "!serverShutdown"
        assert announced["data"]["e"] == "serverShutdown"
        assert isinstance(announced["data"]["E"], int)
        assert (await receive(raw))["e"] == "serverShutdown"
        assert await close_code(combined) == 1001
        assert trio.current_time() - sent_at >= 2.0
        assert await close_code(raw) == 1001
    # The exchange takes new connections meanwhile (another server answers them).
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "btcusdt@trade")


async def test_tls_endpoint_serves_wss(
    nursery: trio.Nursery, tls_pair: tuple[trustme.CA, ssl.SSLContext]
) -> None:
    ca, server_context = tls_pair
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    sim = await start(nursery, ssl_context=server_context)
    assert sim.ws_url.startswith("wss://")
    async with open_websocket_url(sim.ws_url, ssl_context=client_context) as ws:
        await subscribe(ws, "btcusdt@trade")


# ---- flood -----------------------------------------------------------------------------------


async def test_flood_delivers_well_formed_trades_unpaced(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """Flooded channels are written as fast as the client reads: on a clock that stands still
    (it jumps only after a real second with every task blocked), twenty thousand frames arrive
    without the replay's pacing ever sleeping."""
    mock_clock.autojump_threshold = 1.0
    sim = await start(nursery, flood=True)
    count = 20_000
    async with open_websocket_url(sim.ws_url, message_queue_size=256) as ws:
        await subscribe(ws, "btcusdt@trade", "ethusdt@bookTicker", "xyzusdt@trade")
        started = trio.current_time()
        frames = [orjson.loads(await ws.get_message()) for _ in range(count)]
        elapsed = trio.current_time() - started
    trades = [f["data"] for f in frames if f["stream"] == "btcusdt@trade"]
    assert {f["stream"] for f in frames} <= {"btcusdt@trade", "ethusdt@bookTicker"}
    assert len(trades) > count * 0.9
    ids = [t["t"] for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    now = time.time() * 1000
    assert all(t["s"] == "BTCUSDT" and now - 10_000 < t["E"] <= now and float(t["p"]) > 0 for t in trades)
    assert elapsed == 0  # nothing waited for the clock
    assert sim.flood_frames_sent >= len(trades)



async def test_last_trade_id_is_the_last_trade_a_silenced_flood_delivers(nursery: trio.Nursery) -> None:
    sim = await start(nursery, flood=True)
    async with open_websocket_url(sim.ws_url) as ws:
        await subscribe(ws, "btcusdt@trade")
        ids = [(await receive(ws))["data"]["t"]]
        sim.set_silent(True)  # the round being written still goes out whole
        last = sim.last_trade_id("BTCUSDT")
        with trio.fail_after(10):
            while ids[-1] < last:
                ids.append((await receive(ws))["data"]["t"])
    assert ids == list(range(ids[0], last + 1))

async def test_malformed_stream_names_are_refused_with_the_request_id(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with open_websocket_url(sim.ws_url) as ws:
        await send(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "not a stream"], "id": 9})
        assert await receive(ws) == {"code": 2, "msg": "Invalid request: invalid stream", "id": 9}
        await send(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 10})
        assert await receive(ws) == {"result": [], "id": 10}


# ---- command line ----------------------------------------------------------------------------


async def test_module_entry_point_prints_urls_and_stops_on_sigint(nursery: trio.Nursery) -> None:
    command = [sys.executable, "-m", "feedd.sim", "binance", "--futures", "--speed", "2"]
    process: trio.Process = await nursery.start(
        partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
    )
    assert process.stdout is not None
    output = b""
    with trio.fail_after(20):
        while output.count(b"\n") < 2:
            output += await process.stdout.receive_some()
    lines = dict(line.split(" ", 1) for line in output.decode().splitlines())
    assert lines["ws_url"].startswith("ws://127.0.0.1:") and lines["ws_url"].endswith("/market/stream")
    async with open_websocket_url(lines["ws_url"]) as ws:
        await subscribe(ws, "btcusdt@aggTrade")
        assert (await receive(ws))["data"]["e"] == "aggTrade"
    process.send_signal(signal.SIGINT)
    with trio.fail_after(10):
        assert await process.wait() == 0


async def test_a_throttled_handshake_gets_binances_too_many_requests_body(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    sim.refuse_connections(1, status=429, retry_after=60)
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(sim.ws_url):
            pass
    assert rejected.value.status_code == 429
    assert dict(rejected.value.headers)[b"retry-after"] == b"60"
    assert orjson.loads(rejected.value.body or b"") == {"code": -1003, "msg": "Too Many Requests"}


@pytest.mark.parametrize(("futures", "path", "key"), [
    (False, "/api/v3/historicalTrades", "id"), (True, "/fapi/v1/aggTrades", "a"),
])
async def test_the_rest_history_has_every_trade_made_even_unstreamed_ones(
    autojump_clock: trio.testing.MockClock, futures: bool, path: str, key: str
) -> None:
    sim = BinanceSimulator(futures=futures, speed=20.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        sim.keep_trading()  # nobody subscribes: trades are made all the same
        await trio.sleep(5)
        async with httpx.AsyncClient() as http:
            latest = (await http.get(f"{sim.rest_url}{path}?symbol=BTCUSDT&limit=5")).json()
            assert len(latest) == 5
            first = latest[0][key]
            page = (await http.get(f"{sim.rest_url}{path}?symbol=BTCUSDT&fromId={first}&limit=3")).json()
            assert [t[key] for t in page] == [first, first + 1, first + 2]
            unknown = await http.get(f"{sim.rest_url}{path}?symbol=NOPEUSDT")
            assert (unknown.status_code, unknown.json()["code"]) == (400, -1121)
            bad = await http.get(f"{sim.rest_url}{path}?symbol=BTCUSDT&limit=5000")
            assert (bad.status_code, bad.json()["code"]) == (400, -1130)
        nursery.cancel_scope.cancel()
