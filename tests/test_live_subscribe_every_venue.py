"""A live subscribe answers once the venue acknowledged it, for every exchange's own ack shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from endtoend import FAST_FEED, load_text, serving, short_tempdir, venue_section

from feedd import MarketData, WebSocketService
from feedd.sim import BybitSimulator, CoinbaseSimulator

TIMEOUT = 15


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-l-") as path:
        yield path


@pytest.mark.parametrize(
    ("venue", "configured", "added"),
    [("bybit", "BTCUSDT", "ETHUSDT"), ("bybit-linear", "BTCUSDT", "ETHUSDT"),
     ("bybit-inverse", "BTCUSD", "ETHUSD"), ("coinbase", "BTC-USD", "ETH-USD")],
)
async def test_a_live_subscribe_is_acknowledged_and_streams(
    workdir: Path, venue: str, configured: str, added: str
) -> None:
    bybit, coinbase = BybitSimulator(speed=20.0), CoinbaseSimulator(speed=20.0)
    records: list[MarketData] = []
    arrived = trio.Event()

    async def on_data(record: MarketData) -> None:
        if record.symbol == added:
            records.append(record)
            arrived.set()

    async with serving(bybit, coinbase):
        if venue == "coinbase":
            url, rest = coinbase.ws_url, coinbase.rest_url
        else:
            url, rest = bybit.endpoint(venue.partition("-")[2] or "spot"), bybit.rest_url
        config = load_text(workdir, FAST_FEED + venue_section(venue, url, rest, (configured,)))
        async with WebSocketService(config) as ws:
            with trio.fail_after(TIMEOUT):
                await ws.initialize()
                ws.add_data_callback(on_data)
                await ws.subscribe_to_symbol(venue, added)  # returns once the venue said yes
                await arrived.wait()
                listed = await ws.list_subscriptions()
    assert records[0].exchange == venue
    assert added in str(listed)
