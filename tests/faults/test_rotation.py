"""Make-before-break rotation on every venue, against its simulator: a subscriber sees no gap, no
duplicate and no disconnect while each connection is replaced every second; the other venue
streams on untouched; status and metrics count rotations, not reconnects or failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd.model import MarketData
from feedd.sim import BinanceSimulator, BybitSimulator, CoinbaseSimulator, registry, simulator_for

TIMEOUT = 30
ROTATIONS = 3
#: the main venue of every simulator found beyond the three first exchanges' (by discovery, so
#: a venue added later is rotated too, through its SimSpec)
ADDED = [spec.main for spec in registry().values() if spec.name not in ("binance", "bybit", "coinbase")]


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-r-") as path:
        yield path


def simulator(venue: str) -> Any:
    if venue in ADDED:
        return simulator_for(venue).make((venue,), 20.0)
    if venue.startswith("binance"):
        return BinanceSimulator(futures=venue == "binance-usdm", speed=20.0)
    if venue.startswith("bybit"):
        return BybitSimulator(speed=20.0)
    return CoinbaseSimulator(speed=20.0)


def section(venue: str, sim: Any, *extra: str) -> str:
    """The venue's config table pointing at its (serving) simulator, two symbols subscribed (an
    added venue: its spec's symbols)."""
    if venue in ADDED:
        return simulator_for(venue).config_section(venue, sim, None, *extra)
    if venue.startswith("binance"):
        return venue_section(venue, sim.ws_url, sim.rest_url, ("BTCUSDT", "ETHUSDT"), *extra)
    if venue.startswith("bybit"):
        category = {"bybit": "spot", "bybit-linear": "linear", "bybit-inverse": "inverse"}[venue]
        symbols = ("BTCUSD", "ETHUSD") if venue == "bybit-inverse" else ("BTCUSDT", "ETHUSDT")
        return venue_section(venue, sim.endpoint(category), sim.rest_url, symbols, *extra)
    return venue_section(venue, sim.ws_url, sim.rest_url, ("BTC-USD", "ETH-USD"), *extra)


def assert_each_trade_once_and_in_sequence(records: list[MarketData]) -> None:
    runs: dict[tuple[str, str], list[str]] = {}
    for record in records:
        if record.kind == "trade":
            assert record.trade_id is not None
            runs.setdefault((record.exchange, record.symbol), []).append(record.trade_id)
    assert runs
    for key, ids in runs.items():
        assert len(ids) == len(set(ids)), f"{key}: a trade delivered twice"
        if all(i.isdigit() for i in ids):  # venues that number trades: no gap either
            numbers = [int(i) for i in ids]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), f"{key}: a gap"


@pytest.mark.parametrize("venue", ["binance", "binance-usdm", "bybit", "bybit-linear", "coinbase", *ADDED])
async def test_scheduled_rotation_loses_and_repeats_nothing(workdir: Path, venue: str) -> None:
    control_venue = "coinbase" if venue.startswith("binance") else "binance"
    sim, control = simulator(venue), simulator(control_venue)
    async with serving(sim, control):
        text = FAST_FEED + section(venue, sim, "rotate_after = 1.0") + section(control_venue, control)
        async with running(load_text(workdir, text)) as daemon:
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                status = daemon.statuses[venue]
                seen = await client.until(lambda r: status.rotations >= ROTATIONS)
                # and the replacement keeps delivering after the last hand-over
                seen += await client.until(lambda r: r.exchange == venue and r.kind == "trade")
                state = daemon.get_connection_status()
    assert_each_trade_once_and_in_sequence([r for r in seen if r.exchange == venue])
    assert_each_trade_once_and_in_sequence([r for r in seen if r.exchange == control_venue])
    assert client.notices == []
    assert (status.reconnects, status.consecutive_failures) == (0, 0)
    assert daemon.statuses[control_venue].reconnects == 0
    assert daemon.statuses[control_venue].rotations == 0
    assert state["exchanges"][venue]["rotations"] >= ROTATIONS
