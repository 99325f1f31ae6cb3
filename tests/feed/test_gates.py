"""Throttled handshakes: Retry-After parsing, the per-host gate every venue shares, connect pacing.

The runner tests drive real :class:`ConnectionRunner` s through a fake network on trio's mock
clock, so minutes of Retry-After cost nothing; tests/feed/test_gates_e2e.py runs the daemon
against simulators that refuse for real.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from feedd.config import Config
from feedd.control.service import WebSocketService
from feedd.errors import TransportError
from feedd.exchanges import make_venue
from feedd.exchanges.base import ConnectLimit, Venue
from feedd.exchanges.binance import BinanceSpot
from feedd.feed.backoff import Backoff
from feedd.feed.gates import (
    DEFAULT_BAN,
    DEFAULT_RETRY_AFTER,
    MAX_WAIT,
    HandshakeGates,
    HostGate,
    host_of,
)
from feedd.feed.runner import ConnectionRunner, RunnerSettings
from feedd.feed.status import VenueStatus
from feedd.feed.validate import Validator
from feedd.model import MarketData, Message
from feedd.wire.upgrade import HandshakeRefused, parse_retry_after

NOW = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
SPOT = "wss://stream.example.com/stream"
LINEAR = "wss://stream.example.com/v5/public/linear"
ELSEWHERE = "wss://other.example.com/ws"


# ---- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (b"30", 30.0),
        ("2.5", 2.0),  # not delta-seconds by the letter; its whole seconds are what was meant
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),  # IMF-fixdate
        ("Thursday, 03-Dec-26 10:01:00 GMT", 60.0),  # RFC 850
        ("Thu Dec  3 10:00:45 2026", 45.0),  # asctime, which carries no zone: GMT
        (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),  # already past
    ],
)
def test_retry_after_is_delta_seconds_or_an_http_date(value: str | bytes, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "soon", "-5", "1e3", "30s", "Thu, 32 Dec 2026 10:00:00 GMT", "x" * 200]
)
def test_a_retry_after_that_is_neither_is_not_understood(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


def test_a_refusal_carries_its_status_and_retry_after_whatever_the_header_case() -> None:
    refused = HandshakeRefused.from_headers(SPOT, 429, [(b"Content-Type", b"x"), (b"RETRY-AFTER", b" 30 ")])
    assert isinstance(refused, TransportError)
    assert (refused.status, refused.retry_after, refused.retry_after_text) == (429, 30.0, "30")
    assert str(refused) == "handshake rejected: HTTP 429 (Retry-After '30')"
    unclear = HandshakeRefused.from_headers(SPOT, 429, [(b"retry-after", b"later")])
    assert (unclear.retry_after, unclear.retry_after_text) == (None, "later")
    bare = HandshakeRefused.from_headers(SPOT, 503, [])
    assert (bare.retry_after, str(bare)) == (None, "handshake rejected: HTTP 503")


def test_gates_are_keyed_by_host_and_port() -> None:
    assert host_of(SPOT) == host_of(LINEAR) == "stream.example.com:443"
    assert host_of("wss://Stream.Binance.com:9443/stream") == "stream.binance.com:9443"
    assert host_of("ws://127.0.0.1:9001/a") != host_of("ws://127.0.0.1:9002/a")
    assert host_of("ws://[::1]/x") == "[::1]:80"


# ---- the host's gate -------------------------------------------------------------------------


def refusal(status: int, retry_after: str | None = None) -> HandshakeRefused:
    return HandshakeRefused(SPOT, status, retry_after)


@pytest.mark.parametrize(
    ("status", "retry_after", "wait"),
    [
        (429, "30", 30.0),
        (429, None, DEFAULT_RETRY_AFTER),
        (429, "whenever", DEFAULT_RETRY_AFTER),
        (418, None, DEFAULT_BAN),
        (418, "1200", 1200.0),
        (503, "10", 10.0),  # an outage that says when to come back is taken at its word
        (429, str(10 * 24 * 3600), MAX_WAIT),
    ],
)
async def test_a_throttling_refusal_blocks_the_host_for_its_wait(
    autojump_clock: trio.testing.MockClock, status: int, retry_after: str | None, wait: float
) -> None:
    gate = HostGate("stream.example.com:443")
    assert gate.block(refusal(status, retry_after), "binance") == pytest.approx(wait)
    assert gate.wait() == pytest.approx(wait)
    await trio.sleep(wait)
    assert gate.wait() == 0 and gate.throttled_until() is None


async def test_a_5xx_without_retry_after_leaves_the_host_open(autojump_clock: trio.testing.MockClock) -> None:
    gate = HostGate("stream.example.com:443")
    assert gate.block(refusal(502), "binance") is None
    assert gate.wait() == 0


async def test_a_throttle_is_logged_once_however_many_connections_hear_it(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="feedd.feed.gates")
    gates = HandshakeGates()
    spot = gates.gate(SPOT, "bybit", None)
    linear = gates.gate(LINEAR, "bybit-linear", None)
    assert spot.refused(refusal(429, "60"))
    await trio.sleep(5)
    assert linear.refused(refusal(429, "60"))  # in flight when the block began: same event
    assert spot.wait() == pytest.approx(60.0)  # extended to the later answer's end
    lines = [r for r in caplog.records if "answered the handshake" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    message = lines[0].getMessage()
    assert "HTTP 429" in message and "Retry-After '60'" in message and "for 60 s" in message
    assert "stream.example.com:443" in message and "from any venue" in message


async def test_a_long_run_of_throttles_is_logged_at_1_2_4_8_and_its_end_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="feedd.feed.gates")
    gate = HandshakeGates().gate(SPOT, "binance", None)
    for _ in range(9):
        gate.refused(refusal(429, "10"))
        await trio.sleep(10)
    gate.accepted()
    gate.accepted()
    messages = [r.getMessage() for r in caplog.records]
    throttles = [m for m in messages if "answered the handshake" in m]
    assert len(throttles) == 4  # refusals 1, 2, 4 and 8
    assert "refusal #8 in a row" in throttles[-1]
    assert [m for m in messages if "accepts handshakes again" in m] == [
        "stream.example.com:443 accepts handshakes again after 9 throttling refusal(s)"
    ]


async def test_a_ban_is_logged_as_an_error_that_says_so(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    gate = HandshakeGates().gate(SPOT, "binance", None)
    assert gate.refused(refusal(418))
    [line] = [r for r in caplog.records if "answered the handshake" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert "IP address banned" in line.getMessage() and f"for {DEFAULT_BAN:.0f} s" in line.getMessage()


# ---- runners through the gate -----------------------------------------------------------------


class OpenTransport:
    """A connection that stays open and quiet (the runner's watchdog is set far away)."""

    async def send(self, frame: Message) -> None:
        pass

    async def receive_batch(self) -> list[Message]:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def aclose(self) -> None:
        pass


Outcome = Callable[[str, int], Exception | None]


class Network:
    """``open_transport`` stand-in: each attempt (per URL, numbered from 1) is refused with the
    exception ``outcome`` gives, or connects when it gives None."""

    def __init__(self, outcome: Outcome = lambda url, n: None) -> None:
        self.outcome = outcome
        self.attempts: dict[str, list[float]] = {}
        self.changed = trio.Event()

    @asynccontextmanager
    async def open(self, url: str, *, connect_timeout: float) -> AsyncIterator[OpenTransport]:
        times = self.attempts.setdefault(url, [])
        times.append(trio.current_time())
        self.changed.set()
        self.changed = trio.Event()
        error = self.outcome(url, len(times))
        if error is not None:
            raise error
        yield OpenTransport()

    async def wait_attempts(self, url: str, count: int) -> list[float]:
        while len(self.attempts.get(url, ())) < count:
            await self.changed.wait()
        return self.attempts[url]


SETTINGS = RunnerSettings(reconnect_interval=1.0, max_backoff=8.0, max_retries=0, stale_after=1e6)


def runner(
    network: Network, gates: HandshakeGates, url: str, venue: Venue, *, name: str | None = None
) -> tuple[ConnectionRunner, VenueStatus]:
    status = VenueStatus(venue.venue_id)
    send, _ = trio.open_memory_channel[list[MarketData]](100)
    gate = gates.gate(url, venue.venue_id, venue.connect_limit, status.handshakes)
    status.hosts[gate.host.host] = gate.host
    return ConnectionRunner(
        venue=venue, url=url, name=name or f"{venue.venue_id}#1", topics=("btcusdt@trade",),
        settings=SETTINGS, status=status, records=send, validator=Validator({"BTCUSDT"}),
        open_transport=network.open, gate=gate,
        backoff=Backoff(SETTINGS.reconnect_interval, SETTINGS.max_backoff, rng=random.Random(7)),
    ), status


async def test_a_429_makes_the_venue_and_every_other_venue_on_its_host_wait_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def outcome(url: str, n: int) -> Exception | None:
        return HandshakeRefused(url, 429, "120") if url == SPOT and n == 1 else None

    network = Network(outcome)
    gates = HandshakeGates()
    spot, spot_status = runner(network, gates, SPOT, make_venue("bybit"))
    linear, linear_status = runner(network, gates, LINEAR, make_venue("bybit-linear"))
    other, _ = runner(network, gates, ELSEWHERE, make_venue("binance"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spot.run)
        await network.wait_attempts(SPOT, 1)
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        assert spot.conn.state == "backoff"
        # the other venue on the host shows the block before it even tries
        for status in (spot_status, linear_status):
            snapshot = status.snapshot()
            assert snapshot["throttled_until"] is not None
            assert "HTTP 429" in snapshot["throttle_reason"] and "to bybit" in snapshot["throttle_reason"]
        nursery.start_soon(linear.run)
        nursery.start_soon(other.run)
        [other_at] = await network.wait_attempts(ELSEWHERE, 1)
        [linear_at] = await network.wait_attempts(LINEAR, 1)
        spot_at = (await network.wait_attempts(SPOT, 2))[1]
        nursery.cancel_scope.cancel()
    assert other_at == started  # another host: untouched
    assert linear_at >= 120.0 and spot_at >= 120.0  # the backoff alone would have been ~1 s
    assert spot_status.handshakes.refused == {429: 1}
    assert spot_status.handshakes.attempts == 2 and linear_status.handshakes.attempts == 1
    assert spot.conn.consecutive_failures == 1 and "HTTP 429" in (spot.conn.last_error or "")
    assert spot_status.snapshot()["throttled_until"] is None


async def test_a_418_ban_waits_its_longer_default(autojump_clock: trio.testing.MockClock) -> None:
    network = Network(lambda url, n: HandshakeRefused(url, 418, None) if n == 1 else None)
    spot, status = runner(network, HandshakeGates(), SPOT, make_venue("binance"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spot.run)
        first, second = await network.wait_attempts(SPOT, 2)
        nursery.cancel_scope.cancel()
    assert second - first >= DEFAULT_BAN
    assert status.snapshot()["handshakes_refused"] == {"418": 1}


async def test_a_throttle_is_one_log_line_not_one_per_waiting_connection(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    refused: list[str] = []

    def outcome(url: str, n: int) -> Exception | None:
        if refused:
            return None
        refused.append(url)  # the host's first answer is a 429, whichever shard asked
        return HandshakeRefused(url, 429, "30")

    network = Network(outcome)
    gates = HandshakeGates()
    venue = make_venue("binance")
    runners = [runner(network, gates, f"{SPOT}?shard={i}", venue, name=f"binance#{i}")[0] for i in range(5)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runners[0].run)
        await network.wait_attempts(runners[0].url, 1)  # answered 429 before the others try
        for each in runners[1:]:
            nursery.start_soon(each.run)
        for each in runners:
            await network.wait_attempts(each.url, 2 if each.url in refused else 1)
        nursery.cancel_scope.cancel()
    connected = [network.attempts[each.url][-1] for each in runners]
    assert min(connected) >= 30.0  # the four others waited the 429 out too
    messages = [r.getMessage() for r in caplog.records]
    # one line for the refusal (and none from the runner repeating it), one when it is over
    assert len([m for m in messages if "HTTP 429" in m]) == 1
    assert len([m for m in messages if "accepts handshakes again" in m]) == 1


@pytest.mark.parametrize("failure", [
    HandshakeRefused(SPOT, 503, None),
    TransportError(f"cannot connect to {SPOT}: TLSError: [SSL: WRONG_VERSION_NUMBER] wrong version number"),
], ids=["5xx", "tls"])
async def test_a_5xx_or_a_tls_error_takes_the_normal_backoff_ladder(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, failure: Exception
) -> None:
    network = Network(lambda url, n: failure if n <= 4 else None)
    spot, status = runner(network, HandshakeGates(), SPOT, make_venue("binance"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spot.run)
        times = await network.wait_attempts(SPOT, 5)
        assert spot.gate.wait() == 0  # nothing asked the host to be left alone
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for n, gap in enumerate(gaps):
        top = min(SETTINGS.max_backoff, SETTINGS.reconnect_interval * 2.0**n)
        assert top / 2 <= gap <= top, (n, gap)
    # failures 1, 2 and 4 of the run: a long outage logs a few lines, not one per retry
    assert len([r for r in caplog.records if "reconnecting in" in r.getMessage()]) == 3
    assert status.handshakes.attempts == 5


class TightVenue(BinanceSpot):
    """Binance with a connect limit small enough to reach in a test."""

    connect_limit: ConnectLimit | None = ConnectLimit(3, 10.0)


async def test_a_burst_of_connections_is_spread_within_the_connect_limit(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    network = Network()
    gates = HandshakeGates()
    venue = TightVenue()
    shards = [runner(network, gates, f"{SPOT}?shard={i}", venue, name=f"binance#{i}") for i in range(8)]
    async with trio.open_nursery() as nursery:
        for each, _ in shards:
            nursery.start_soon(each.run)
        for each, _ in shards:
            await network.wait_attempts(each.url, 1)
        nursery.cancel_scope.cancel()
    times = sorted(t for each, _ in shards for t in network.attempts[each.url])
    assert len(times) == 8  # every shard connected once, none failed
    for start in times:  # any 10 s (the venue's window) holds at most 3 attempts
        assert len([t for t in times if start <= t < start + 10.0]) <= 3
    assert times[-1] - times[0] < 25.0  # spread, not stalled: two windows and their margins
    assert sum(status.handshakes.paced for _, status in shards) == 5
    paced = [r for r in caplog.records if "wait their turn" in r.getMessage()]
    assert len(paced) == 1


async def test_venues_with_the_same_limit_on_one_host_share_one_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = Network()
    gates = HandshakeGates()
    venues = [TightVenue(), TightVenue()]
    shards = [runner(network, gates, f"{SPOT}?{i}", venues[i % 2], name=f"v#{i}")[0] for i in range(6)]
    async with trio.open_nursery() as nursery:
        for each in shards:
            nursery.start_soon(each.run)
        for each in shards:
            await network.wait_attempts(each.url, 1)
        nursery.cancel_scope.cancel()
    times = sorted(t for each in shards for t in network.attempts[each.url])
    assert len([t for t in times if t < 10.0]) == 3


def test_each_venue_states_its_documented_connect_limit() -> None:
    assert make_venue("binance").connect_limit == ConnectLimit(300, 300.0)
    assert make_venue("binance-usdm").connect_limit == ConnectLimit(300, 300.0)
    for venue in ("bybit", "bybit-linear", "bybit-inverse"):
        assert make_venue(venue).connect_limit == ConnectLimit(500, 300.0)
    assert make_venue("coinbase").connect_limit == ConnectLimit(8, 1.0)


async def test_metrics_show_attempts_refusals_by_status_and_the_current_throttle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    service = WebSocketService(Config())  # not running: the collector reads whatever is there
    status = service.statuses["binance"] = VenueStatus("binance")
    gate = service.gates.gate(SPOT, "binance", None, status.handshakes)
    status.hosts[gate.host.host] = gate.host
    await gate.before_connect()
    gate.refused(refusal(503))
    await gate.before_connect()
    gate.refused(refusal(429, "90"))
    body, _ = service.metrics.render()
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    venue = (("venue", "binance"),)
    assert found[("feedd_connection_attempts_total", venue)] == 2
    assert found[("feedd_handshake_refused_total", (("status", "503"), *venue))] == 1
    assert found[("feedd_handshake_refused_total", (("status", "429"), *venue))] == 1
    assert found[("feedd_handshake_throttled_total", (("status", "429"), *venue))] == 1
    assert ("feedd_handshake_throttled_total", (("status", "503"), *venue)) not in found
    assert found[("feedd_handshake_throttle_seconds", venue)] == pytest.approx(90.0)
