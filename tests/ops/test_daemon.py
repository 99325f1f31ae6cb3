"""End to end: simulator → daemon (runner, hub, Unix publisher) → Unix-socket subscribers.

Real sockets on the real clock, with short intervals: every wait is on an event (a record read,
a simulator state change), bounded by ``fail_after`` so a regression fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from endtoend import Subscriber, running

from feedd.config import Config, load_config
from feedd.control.service import WebSocketService
from feedd.fanout.lines import decode_record
from feedd.model import MarketData
from feedd.ops.daemon import run_until_signalled
from feedd.sim import BinanceSimulator
from feedd.wire.transport import TRANSPORTS, OpenTransport

SPOT_STREAMS = {"btcusdt@trade", "btcusdt@ticker", "ethusdt@trade", "ethusdt@ticker"}
TIMEOUT = 15


@pytest.fixture
def workdir() -> Iterator[Path]:
    # short: AF_UNIX paths are limited to ~107 bytes, and pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="feedd-t-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(
    workdir: Path,
    spot: BinanceSimulator,
    futures: BinanceSimulator | None = None,
    *,
    spot_symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"),
    **feed: object,
) -> Config:
    symbols = ", ".join(f'"{s}"' for s in spot_symbols)
    settings = {"reconnect_interval": 0.05, "max_backoff": 0.5, "stale_after": 5.0} | feed
    lines = "\n".join(f"{key} = {str(value).lower() if isinstance(value, bool) else value}"
                      for key, value in settings.items())
    text = f"""
[feed]
cache_dir = "cache"
{lines}

[http]
listen = "127.0.0.1:0"

[unix]
path = "feedd.sock"

[exchanges.binance]
symbols = [{symbols}]
url = "{spot.ws_url}"
rest_url = "{spot.rest_url}"
"""
    if futures is not None:
        text += f"""
[exchanges.binance-usdm]
symbols = ["BTCUSDT"]
url = "{futures.ws_url}"
rest_url = "{futures.rest_url}"
"""
    path = workdir / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ={})


@asynccontextmanager
async def simulators(**spot_options: object) -> AsyncIterator[tuple[BinanceSimulator, BinanceSimulator]]:
    spot = BinanceSimulator(speed=20.0, **spot_options)  # type: ignore[arg-type]
    futures = BinanceSimulator(futures=True, speed=20.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(spot.serve)
        await nursery.start(futures.serve)
        yield spot, futures
        nursery.cancel_scope.cancel()


class GatedRest:
    """An HTTP endpoint that holds every request until :attr:`release` is set, then answers 503."""

    def __init__(self) -> None:
        self.requested = trio.Event()
        self.release = trio.Event()
        self.url = ""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._answer, 0, host="127.0.0.1"))
            host, port = listeners[0].socket.getsockname()[:2]
            self.url = f"http://{host}:{port}"
            task_status.started()

    async def _answer(self, stream: trio.SocketStream) -> None:
        request = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while b"\r\n\r\n" not in request:
                data = await stream.receive_some(4096)
                if not data:
                    return
                request += data
            self.requested.set()
            await self.release.wait()
            await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")


def assert_good(record: MarketData, venues: set[str], symbols: set[str]) -> None:
    assert record.exchange in venues
    assert record.symbol in symbols
    assert record.price > 0
    assert abs((record.received_at - record.timestamp).total_seconds()) < 60
    if record.kind == "trade":
        assert record.side in ("buy", "sell")
        assert record.trade_id
        assert record.volume > 0
    else:
        assert record.kind == "ticker"
        assert record.high_24h is not None and record.low_24h is not None
        assert record.low_24h <= record.high_24h
        assert record.change_24h is not None


async def test_two_subscribers_receive_identical_correct_records(workdir: Path) -> None:
    async with simulators() as (spot, futures):
        spot.set_silent(True)
        futures.set_silent(True)
        async with running(write_config(workdir, spot, futures)) as daemon:
            with trio.fail_after(TIMEOUT):
                await spot.wait_subscribed(SPOT_STREAMS)
                await futures.wait_subscribed({"btcusdt@aggTrade", "btcusdt@ticker"})
                await futures.wait_subscribed("btcusdt@bookTicker")
                first = await Subscriber.connect(daemon.config.unix.path)
                second = await Subscriber.connect(daemon.config.unix.path)
                await trio.testing.wait_all_tasks_blocked()
                spot.set_silent(False)
                futures.set_silent(False)
                lines_a = [await first.line() for _ in range(150)]
                lines_b = [await second.line() for _ in range(150)]
    assert lines_a == lines_b
    records = [decode_record(line) for line in lines_a]
    for record in records:
        assert_good(record, {"binance", "binance-usdm"}, {"BTCUSDT", "ETHUSDT"})
    kinds = {(r.exchange, r.kind) for r in records}
    assert ("binance", "trade") in kinds and ("binance-usdm", "trade") in kinds
    spot_tickers = [r for r in records if r.exchange == "binance" and r.kind == "ticker"]
    assert all(r.bid is not None and r.ask is not None for r in spot_tickers)


async def test_a_venue_whose_instrument_list_hangs_delays_only_itself(workdir: Path) -> None:
    gate = GatedRest()
    async with simulators() as (spot, futures), trio.open_nursery() as nursery:
        await nursery.start(gate.serve)
        # a start waits this long for a list before it takes the cache (there is none here)
        config = write_config(workdir, spot, futures, instruments_wait=60.0)
        config = attrs.evolve(config, exchanges={
            **config.exchanges,
            "binance": attrs.evolve(config.exchanges["binance"], rest_url=gate.url),
        })
        # started, and streaming the other venue, while binance still waits for its list
        async with running(config) as daemon:
            with trio.fail_after(TIMEOUT):
                await gate.requested.wait()
                client = await Subscriber.connect(daemon.config.unix.path)
                await client.until(lambda r: r.exchange == "binance-usdm")
                assert daemon.venues["binance"].instruments.source == "unchecked"
                assert spot.connection_attempts == 0
                gate.release.set()
                await client.until(lambda r: r.exchange == "binance")
        nursery.cancel_scope.cancel()
    assert daemon.venues["binance"].instruments.source == "unavailable"  # 503 and no cache yet


async def test_usdm_ticker_carries_bid_and_ask_from_the_public_route(workdir: Path) -> None:
    async with simulators() as (spot, futures), running(write_config(workdir, spot, futures)) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(
                daemon.config.unix.path, b'{"exchange": ["binance-usdm"], "kind": ["ticker"]}\n'
            )
            seen = await client.until(lambda r: r.bid is not None)
    ticker = seen[-1]
    assert ticker.ask is not None and ticker.bid is not None
    assert ticker.bid <= ticker.ask
    assert {r.exchange for r in seen} == {"binance-usdm"}


async def test_server_drop_reconnects_with_backoff_and_resubscribes_every_stream(workdir: Path) -> None:
    async with simulators() as (spot, _), running(write_config(workdir, spot)) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            old = await spot.wait_subscribed(SPOT_STREAMS)
            await client.record()
            spot.drop_connections()
            await spot.wait_until(lambda: bool(spot.connections) and spot.connections[0] is not old)
            await spot.wait_subscribed(SPOT_STREAMS)
            # records flow again: a trade newer than the drop arrives
            accepted = spot.connections_accepted
            await client.until(lambda r: r.kind == "trade")
        status = daemon.statuses["binance"]
    assert accepted >= 2
    assert status.reconnects >= 1
    assert status.state == "connected"


async def test_a_silent_feed_is_reopened_by_the_watchdog(workdir: Path) -> None:
    async with simulators() as (spot, _):
        config = write_config(workdir, spot, stale_after=0.5, max_backoff=0.1)
        async with running(config) as daemon:
            with trio.fail_after(TIMEOUT):
                await spot.wait_subscribed(SPOT_STREAMS)
                spot.set_silent(True)
                await spot.wait_until(lambda: spot.connections_accepted >= 2)
                conn = next(iter(daemon.statuses["binance"].connections.values()))
                assert "stale feed" in (conn.last_error or "")
                spot.set_silent(False)
                client = await Subscriber.connect(daemon.config.unix.path)
                await client.record()


async def test_malformed_frames_are_counted_and_never_fatal(workdir: Path) -> None:
    async with simulators() as (spot, _), running(write_config(workdir, spot)) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            await spot.wait_subscribed(SPOT_STREAMS)
            await client.record()
            for _ in range(3):
                spot.send_malformed()
            status = daemon.statuses["binance"]
            await client.until(lambda r: status.decode_errors >= 3)
            await client.until(lambda r: r.kind == "trade")
    assert status.reconnects == 0
    assert spot.connections_accepted == 1


async def test_an_unknown_symbol_is_an_error_naming_it_while_valid_streams_flow(workdir: Path) -> None:
    async with simulators() as (spot, _):
        config = write_config(workdir, spot, spot_symbols=("BTCUSDT", "NOPEUSDT"))
        async with running(config) as daemon:
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                records = [await client.record() for _ in range(20)]
            status = daemon.statuses["binance"]
            subscribed = spot.connections[0].streams
    assert "NOPEUSDT" in status.subscription_errors
    assert "NOPEUSDT" in status.subscription_errors["NOPEUSDT"]
    assert "unknown symbol" in (status.last_error or "")
    assert {r.symbol for r in records} == {"BTCUSDT"}
    assert not any(name.startswith("nopeusdt") for name in subscribed)


async def test_instrument_cache_keeps_symbol_checks_through_a_rest_outage(workdir: Path) -> None:
    async with simulators() as (spot, _):
        async with running(write_config(workdir, spot)) as daemon:
            with trio.fail_after(TIMEOUT):  # a venue subscribes once its list is in
                await spot.wait_subscribed(SPOT_STREAMS)
            assert daemon.venues["binance"].instruments.source == "rest"
        spot.rest_fail(True)
        config = write_config(workdir, spot, spot_symbols=("BTCUSDT", "NOPEUSDT"))
        async with running(config) as daemon:
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                record = await client.record()
            assert daemon.venues["binance"].instruments.source == "cache"
    assert record.symbol == "BTCUSDT"
    assert "NOPEUSDT" in daemon.statuses["binance"].subscription_errors


async def test_without_rest_or_cache_symbols_go_unchecked_and_still_stream(workdir: Path) -> None:
    async with simulators() as (spot, _):
        spot.rest_fail(True)
        async with running(write_config(workdir, spot)) as daemon:
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                assert (await client.record()).exchange == "binance"
            assert daemon.venues["binance"].instruments.source == "unavailable"


async def test_server_shutdown_rotates_make_before_break_with_no_gap_and_no_duplicate(
    workdir: Path,
) -> None:
    """The old connection streams until the replacement delivers; the subscriber sees every
    trade once, in sequence, and hears of no disconnect."""
    async with simulators() as (spot, _), running(write_config(workdir, spot, stable_after=0.2)) as daemon:
        with trio.fail_after(TIMEOUT):
            await spot.wait_subscribed(SPOT_STREAMS)
            status = daemon.statuses["binance"]
            client = await Subscriber.connect(daemon.config.unix.path)
            seen = [await client.record()]
            spot.send_server_shutdown(close_after=2.0)
            while status.rotations < 1:
                seen.append(await client.record())
            await spot.wait_until(lambda: len(spot.connections) == 1)  # the old one is gone
            after = datetime.now(UTC)
            seen += await client.until(lambda r: r.kind == "trade" and r.received_at > after)
    ids: dict[str, list[int]] = {}
    for record in seen:
        if record.kind == "trade":
            ids.setdefault(record.symbol, []).append(int(record.trade_id or 0))
    for symbol, run in ids.items():
        assert run == list(range(run[0], run[0] + len(run))), (symbol, run)  # no gap, no duplicate
    assert spot.connections_accepted == 2
    assert (status.rotations, status.reconnects, status.consecutive_failures) == (1, 0, 0)
    assert client.notices == []


async def test_refused_connections_back_off_then_recover(workdir: Path) -> None:
    async with simulators() as (spot, _):
        spot.refuse_connections(3)
        async with running(write_config(workdir, spot)) as daemon:
            with trio.fail_after(TIMEOUT):
                await spot.wait_subscribed(SPOT_STREAMS)
                client = await Subscriber.connect(daemon.config.unix.path)
                await client.record()
            conn = next(iter(daemon.statuses["binance"].connections.values()))
    assert spot.connections_refused == 3
    assert conn.reconnects == 3
    assert "503" in (conn.last_error or "")


async def test_subscribing_many_streams_stays_under_the_venue_message_limit(workdir: Path) -> None:
    async with simulators() as (spot, _):
        config = write_config(workdir, spot, spot_symbols=("BTCUSDT",))
        config = attrs.evolve(config, exchanges={
            "binance": attrs.evolve(config.exchanges["binance"], check_symbols=False)
        })
        async with running(config) as daemon:
            supervisor = daemon.venues["binance"]
            with trio.fail_after(TIMEOUT):
                await spot.wait_subscribed("btcusdt@trade")
                names = [f"sym{i}usdt" for i in range(5)]
                for name in names:  # 10 live SUBSCRIBE requests, twice the 5/s limit
                    supervisor.subscribe(name, ["trades", "ticker"])
                await spot.wait_subscribed({f"{n}@ticker" for n in names})
    assert spot.rate_limit_closes == 0
    assert spot.connections_accepted == 1


async def test_unsubscribe_stops_the_stream_without_reconnecting(workdir: Path) -> None:
    async with simulators() as (spot, _), running(write_config(workdir, spot)) as daemon:
        supervisor = daemon.venues["binance"]
        with trio.fail_after(TIMEOUT):
            conn = await spot.wait_subscribed(SPOT_STREAMS)
            supervisor.unsubscribe("ETHUSDT", ["trades", "ticker"])
            await spot.wait_until(lambda: not any(s.startswith("ethusdt") for s in conn.streams))
            client = await Subscriber.connect(daemon.config.unix.path)
            records = [await client.record() for _ in range(10)]
    assert {r.symbol for r in records} == {"BTCUSDT"}
    assert spot.connections_accepted == 1


async def test_a_disabled_feed_starts_sinks_but_no_venue(workdir: Path) -> None:
    async with simulators() as (spot, _):
        config = write_config(workdir, spot, enabled=False)
        async with running(config) as daemon:
            assert daemon.venues == {}
            assert daemon.statuses["binance"].state == "disabled"
            assert await trio.Path(daemon.config.unix.path).is_socket()
    assert spot.connection_attempts == 0


@pytest.mark.parametrize("transport", ["native", "trio-websocket"])
async def test_each_transport_streams_answers_pings_and_reconnects(
    workdir: Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    for name, open_ in list(TRANSPORTS.items()):

        def counting(*args: Any, _name: str = name, _open: OpenTransport = open_, **kwargs: Any) -> Any:
            opened.append(_name)
            return _open(*args, **kwargs)

        monkeypatch.setitem(TRANSPORTS, name, counting)
    async with simulators(ping_interval=0.05, pong_timeout=1.0) as (spot, _):
        config = write_config(workdir, spot, transport=f'"{transport}"')
        async with running(config) as daemon:
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                await client.record()
                spot.drop_connections()
                await spot.wait_until(lambda: spot.connections_accepted >= 2)
                await spot.wait_subscribed(SPOT_STREAMS)
                # pings every 50 ms for 1.5 s: the simulator closes after 1 s without a pong
                start = trio.current_time()
                await client.until(lambda r: trio.current_time() - start > 1.5)
    assert spot.pong_timeouts == 0
    assert spot.connections_accepted == 2
    assert daemon.statuses["binance"].reconnects == 1
    assert opened == [transport, transport]  # the one [feed] transport names, both times


async def test_a_failing_venue_never_disturbs_another(workdir: Path) -> None:
    async with simulators() as (spot, futures):
        futures.refuse_connections(-1)
        # four jittered steps before "failed": a failed venue retries every max_backoff exactly,
        # so its two shards (market, public) must leave the ladder out of step, or each one's
        # handshake always comes while the other is connecting too and "failed" is never seen
        config = write_config(workdir, spot, futures, max_retries=4)
        async with running(config) as daemon:
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                usdm = daemon.statuses["binance-usdm"]
                # checked as the refusals come: between its retries a failed venue is "connecting"
                await futures.wait_until(
                    lambda: futures.connections_refused >= 4 and usdm.state == "failed"
                )
                records = [await client.record() for _ in range(30)]
            spot_status = daemon.statuses["binance"]
            assert usdm.consecutive_failures >= 4
            assert spot_status.state == "connected"
    assert {r.exchange for r in records} == {"binance"}
    assert spot_status.reconnects == 0


async def test_topics_are_sharded_by_the_venue_stream_limit_and_route(workdir: Path) -> None:
    async with simulators() as (spot, futures):
        config = write_config(workdir, spot, futures)
        config = attrs.evolve(config, exchanges={
            "binance-usdm": attrs.evolve(config.exchanges["binance-usdm"], check_symbols=False)
        })
        async with running(config) as daemon:
            supervisor = daemon.venues["binance-usdm"]
            names = [f"S{i}USDT" for i in range(100)]  # + BTCUSDT: 101 symbols
            for name in names:
                supervisor.subscribe(name, ["trades", "ticker"])
            market = {f"{n.lower()}@{s}" for n in [*names, "BTCUSDT"] for s in ("aggTrade", "ticker")}
            public = {f"{n.lower()}@bookTicker" for n in [*names, "BTCUSDT"]}
            with trio.fail_after(TIMEOUT):
                await futures.wait_until(
                    lambda: {s for c in futures.connections if c.route == "market" for s in c.streams}
                    >= market
                    and {s for c in futures.connections if c.route == "public" for s in c.streams}
                    >= public
                )
            connections = futures.connections
    routes = sorted(c.route for c in connections)
    assert routes == ["market", "market", "public"]  # 202 market topics need two connections of 200
    assert all(len(c.streams) <= 200 for c in connections)
    assert futures.rate_limit_closes == 0
    assert len(daemon.statuses["binance-usdm"].connections) == 3


async def test_a_stop_signal_in_the_middle_of_start_up_exits_0_and_removes_the_socket(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon ends before it says it started: a stop, not a crash (it was a RuntimeError
    from nursery.start, a traceback and exit 1)."""
    starting = trio.Event()

    async def stuck_venue_start(self: WebSocketService, venue_id: str) -> None:
        starting.set()  # the socket listens; the venues have not started
        await trio.sleep_forever()

    monkeypatch.setattr(WebSocketService, "start_venue", stuck_venue_start)
    async with simulators() as (spot, _):
        config = write_config(workdir, spot)
        code: list[int] = []

        async def run() -> None:
            code.append(await run_until_signalled(config))

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await starting.wait()
                assert await trio.Path(config.unix.path).is_socket()
                os.kill(os.getpid(), signal.SIGTERM)
    assert code == [0]
    assert not await trio.Path(config.unix.path).exists()
