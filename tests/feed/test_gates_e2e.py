"""End to end: simulators that throttle or break handshakes, the daemon, a Unix-socket subscriber.

Real sockets on the real clock (a Retry-After of one second), every wait on an event and bounded
by ``fail_after``. Each simulator listens on a port of its own, and the daemon's gates are per
host and port, so a fault on one venue's simulator must leave the other venue alone.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd.config import Config
from feedd.control.service import WebSocketService
from feedd.sim import BinanceSimulator

TIMEOUT = 15


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-h-") as path:
        yield path


def both_venues(workdir: Path, spot: BinanceSimulator, futures: BinanceSimulator) -> Config:
    text = FAST_FEED + venue_section("binance", spot.ws_url, spot.rest_url, ("BTCUSDT",))
    text += venue_section("binance-usdm", futures.ws_url, futures.rest_url, ("BTCUSDT",))
    return load_text(workdir, text)


async def records_of_both(daemon: WebSocketService) -> None:
    """Read the socket until both venues have delivered a record."""
    client = await Subscriber.connect(daemon.config.unix.path)
    seen: set[str] = set()
    await client.until(lambda record: seen.add(record.exchange) or seen == {"binance", "binance-usdm"})


async def test_a_429_is_waited_out_for_its_retry_after_and_the_other_venue_streams_on(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="feedd")
    spot, futures = BinanceSimulator(speed=20.0), BinanceSimulator(futures=True, speed=20.0)
    async with serving(spot, futures):
        spot.refuse_connections(1, status=429, retry_after=1)
        async with running(both_venues(workdir, spot, futures)) as daemon:
            with trio.fail_after(TIMEOUT):
                await records_of_both(daemon)
            binance = daemon.statuses["binance"].snapshot()
            usdm = daemon.statuses["binance-usdm"]
    first, second = list(spot.handshake_times)[:2]
    assert second - first >= 1.0  # reconnect_interval is 0.05 s: the Retry-After decided
    assert spot.refusals == {429: 1}
    assert binance["handshakes_refused"] == {"429": 1}
    assert binance["connection_attempts"] == 2
    assert binance["throttled_until"] is None  # over, once streaming
    assert usdm.reconnects == 0 and usdm.handshakes.refused == {}
    throttled = [r.getMessage() for r in caplog.records if "answered the handshake" in r.getMessage()]
    assert len(throttled) == 1 and "HTTP 429" in throttled[0] and "for 1 s" in throttled[0]
    assert not [r for r in caplog.records if "429" in r.getMessage() and "reconnecting in" in r.getMessage()]



async def test_tls_errors_take_the_backoff_ladder_and_the_other_venue_streams_on(
    workdir: Path, tls: ssl.SSLContext
) -> None:
    spot = BinanceSimulator(speed=20.0, ssl_context=tls)
    futures = BinanceSimulator(futures=True, speed=20.0)
    async with serving(spot, futures):
        spot.fail_tls(2)
        async with running(both_venues(workdir, spot, futures)) as daemon:
            with trio.fail_after(TIMEOUT):
                await records_of_both(daemon)
            conn = next(iter(daemon.statuses["binance"].connections.values()))
            usdm = daemon.statuses["binance-usdm"]
    assert spot.ws_url.startswith("wss://")
    assert spot.tls_failures == 2 and spot.connections_accepted == 1
    assert conn.reconnects == 2
    assert "WRONG_VERSION_NUMBER" in (conn.last_error or "")
    assert usdm.reconnects == 0
