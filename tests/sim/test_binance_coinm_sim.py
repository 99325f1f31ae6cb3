"""The Binance COIN-M simulator speaks dstream and dapi: one unrouted endpoint, COIN-M payloads
(contracts, the pair's ``ps``, base volume in the ticker's ``q``), exchangeInfo by contractStatus."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionRejected, WebSocketConnection, open_websocket_url

from feedd.sim import BinanceCoinmSimulator
from feedd.sim.binance_coinm import contract_size


async def start(nursery: trio.Nursery, **options: Any) -> BinanceCoinmSimulator:
    sim = BinanceCoinmSimulator(**options)
    await nursery.start(sim.serve)
    return sim


async def first_of(ws: WebSocketConnection, streams: set[str]) -> dict[str, Any]:
    """The first event of each of ``streams``, by stream name."""
    found: dict[str, Any] = {}
    while set(found) != streams:
        message = orjson.loads(await ws.get_message())
        if message.get("stream") in streams:
            found.setdefault(message["stream"], message["data"])
    return found


async def test_one_endpoint_carries_trades_book_tickers_and_tickers(nursery: trio.Nursery) -> None:
    sim = await start(nursery, speed=5.0)
    assert sim.ws_url.endswith("/stream")
    streams = {"btcusd_perp@aggTrade", "btcusd_perp@bookTicker", "btcusd_perp@ticker"}
    async with open_websocket_url(sim.ws_url) as ws:
        request = {"method": "SUBSCRIBE", "params": sorted(streams), "id": 1}
        await ws.send_message(orjson.dumps(request).decode())
        assert orjson.loads(await ws.get_message()) == {"result": None, "id": 1}
        with trio.fail_after(10):
            found = await first_of(ws, streams)
    trade, quote, ticker = (found[f"btcusd_perp@{k}"] for k in ("aggTrade", "bookTicker", "ticker"))
    assert set(trade) == {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m"}  # no "M" (§6.3)
    assert trade["q"].isdigit() and int(trade["q"]) >= 1  # whole contracts
    assert 10_000 < float(trade["p"]) < 500_000  # BTCUSD at BTC's level
    assert quote["e"] == "bookTicker" and quote["ps"] == "BTCUSD" and float(quote["b"]) < float(quote["a"])
    assert ticker["ps"] == "BTCUSD" and not {"b", "a", "x"} & set(ticker)  # no bid/ask in @ticker
    # v counts contracts of 100 USD, q the coins: their ratio is a price near the last one
    implied = int(ticker["v"]) * contract_size("BTCUSD_PERP") / float(ticker["q"])
    assert 0.8 < implied / float(ticker["c"]) < 1.2


async def test_no_routed_paths_on_dstream(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    for path in ("/market/stream", "/public/ws"):
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(sim.url(path)):
                pass
        assert refused.value.status_code == 404


async def test_exchange_info_lists_contracts_by_contract_status_with_their_sizes(
    nursery: trio.Nursery,
) -> None:
    sim = await start(nursery)
    async with httpx.AsyncClient() as http:
        body = (await http.get(sim.rest_url + "/dapi/v1/exchangeInfo")).json()
        missing = await http.get(sim.rest_url + "/fapi/v1/exchangeInfo")
    entries = {entry["symbol"]: entry for entry in body["symbols"]}
    assert entries["BTCUSD_PERP"]["contractStatus"] == "TRADING"
    assert entries["BTCUSD_PERP"]["contractType"] == "PERPETUAL"
    assert entries["BTCUSD_261225"]["contractType"] == "CURRENT_QUARTER"
    assert entries["BTCUSD_261225"]["deliveryDate"] == 1_798_185_600_000  # 2026-12-25 08:00 UTC
    assert entries["BTCUSD_270924"]["contractStatus"] == "PENDING_TRADING"
    assert (entries["BTCUSD_PERP"]["contractSize"], entries["ETHUSD_PERP"]["contractSize"]) == (100, 10)
    assert all("status" not in entry for entry in body["symbols"])
    assert missing.status_code == 404
