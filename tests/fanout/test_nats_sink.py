"""The NATS JetStream sink against a real ``nats-server -js`` (tests/nats_server.py).

The stream is read back with nats-py, an independent client, so the subjects, message ids and
bytes are checked by someone else's implementation of the protocol. Every wait is on an event
(a record read, the sink's progress), bounded by ``fail_after``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from endtoend import Subscriber, load_text, short_tempdir
from nats_server import NatsServer, nats_server_fixture

from feedd.config import Config
from feedd.control.service import WebSocketService
from feedd.fanout.lines import decode_record
from feedd.fanout.nats import NatsSink, message_id
from feedd.model import MarketData
from feedd.nats.client import open_client
from feedd.nats.jetstream import StreamSettings, api_request, ensure_stream
from feedd.nats.servers import parse_server
from feedd.sim import BinanceSimulator

TIMEOUT = 30


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    yield from nats_server_fixture(tmp_path)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-n-") as path:
        yield path


def nats_config(workdir: Path, sim: BinanceSimulator, server: str, *nats_lines: str,
                symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")) -> Config:
    listed = ", ".join(f'"{s}"' for s in symbols)
    extra = "\n".join(nats_lines)
    return load_text(workdir, f"""
[feed]
cache_dir = "cache"
state_file = "subscriptions.json"
reconnect_interval = 0.05
max_backoff = 0.5

[unix]
path = "feedd.sock"

[nats]
servers = ["{server}"]
{extra}

[exchanges.binance]
symbols = [{listed}]
url = "{sim.ws_url}"
rest_url = "{sim.rest_url}"
""")


@asynccontextmanager
async def simulator(**options: Any) -> AsyncIterator[BinanceSimulator]:
    sim = BinanceSimulator(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        yield sim
        nursery.cancel_scope.cancel()


async def until(sink: NatsSink, condition: Any) -> None:
    """Wait (on the sink's progress: a batch acked, a connection made or lost) until it holds."""
    while not condition():
        await sink.progressed()


def read_stream(url: str, stream: str = "FEEDD") -> list[tuple[str, str | None, bytes]]:
    """Every message of the stream as nats-py reads it: (subject, Nats-Msg-Id, payload)."""
    import nats

    async def read() -> list[tuple[str, str | None, bytes]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            state = (await js.stream_info(stream)).state
            found = []
            for seq in range(state.first_seq, state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                found.append((msg.subject, (msg.headers or {}).get("Nats-Msg-Id"), msg.data or b""))
            return found
        finally:
            await nc.close()

    return asyncio.run(read())


async def stream_info(url: str, stream: str = "FEEDD") -> dict[str, Any]:
    async with open_client(parse_server(url)) as client:
        with trio.fail_after(TIMEOUT):
            return dict(await api_request(client, f"$JS.API.STREAM.INFO.{stream}"))


def key(record: MarketData) -> tuple[str, str, str, str]:
    tag = record.trade_id if record.kind == "trade" and record.trade_id else str(record.timestamp)
    return record.exchange, record.kind, record.symbol, tag


async def test_records_reach_their_subjects_with_the_bytes_the_socket_sends(
    nats_server: NatsServer, workdir: Path
) -> None:
    async with simulator(speed=20.0) as sim:
        config = nats_config(workdir, sim, nats_server.url)
        with trio.fail_after(TIMEOUT):
            async with WebSocketService(config, serve_unix=True) as ws:
                sink = ws.nats
                assert sink is not None
                subscriber = await Subscriber.connect(config.unix.path)
                lines: dict[tuple[str, str, str, str], bytes] = {}
                kinds: set[str] = set()
                while len(lines) < 60 or kinds != {"trade", "ticker"}:
                    line = await subscriber.line()
                    record = decode_record(line)
                    lines.setdefault(key(record), line + b"\n")  # the stream keeps the first too
                    kinds.add(record.kind)
                await until(sink, lambda: sink.acked >= sink.published > 0 and not sink.buffered)
        assert sink.rejected == sink.dropped == 0
    stored = await trio.to_thread.run_sync(read_stream, nats_server.url)
    compared = 0
    for subject, msg_id, payload in stored:
        record = decode_record(payload)
        assert subject == f"feedd.binance.{record.kind}.{record.symbol}"
        assert msg_id == message_id(record)
        if (line := lines.get(key(record))) is not None:
            assert payload == line  # the very bytes of the socket's line
            compared += 1
    assert compared >= 50
    assert {s.split(".")[2] for s, _, _ in stored} == {"trade", "ticker"}


async def test_an_active_active_pair_on_one_simulator_stores_each_trade_once(
    nats_server: NatsServer,
) -> None:
    seen: list[set[str]] = [set(), set()]
    async with simulator(speed=20.0) as sim:
        with short_tempdir("feedd-a-") as first, short_tempdir("feedd-b-") as second:
            configs = [nats_config(d, sim, nats_server.url, symbols=("BTCUSDT",)) for d in (first, second)]
            with trio.fail_after(TIMEOUT):
                async with WebSocketService(configs[0]) as one, WebSocketService(configs[1]) as two:
                    both = trio.Event()

                    def collector(mine: set[str]) -> Any:
                        async def collect(record: MarketData) -> None:
                            if record.kind == "trade" and record.trade_id is not None:
                                mine.add(record.trade_id)
                            if len(seen[0] & seen[1]) >= 40:
                                both.set()
                        return collect

                    one.add_data_callback(collector(seen[0]))
                    two.add_data_callback(collector(seen[1]))
                    await both.wait()
                    sinks = [one.nats, two.nats]
            # leaving the blocks stopped both services, each after its sink had its acks
    assert all(s is not None and s.buffered == 0 for s in sinks)
    stored = await trio.to_thread.run_sync(read_stream, nats_server.url)
    trade_ids = [msg_id for subject, msg_id, _ in stored if ".trade." in subject]
    assert len(trade_ids) == len(set(trade_ids))  # one copy each
    # every trade either daemon handed on is there (the stream may hold a few more: the last
    # ones, published while the callbacks were being stopped)
    assert {f"binance:trade:BTCUSDT:{t}" for t in seen[0] | seen[1]} <= set(trade_ids)
    assert sum(s.duplicates for s in sinks if s is not None) >= 40  # both published the shared ones


async def test_a_server_killed_mid_flood_costs_a_counted_gap_and_the_sink_reconnects(
    nats_server: NatsServer, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="feedd")
    async with simulator(flood=True) as sim:
        config = nats_config(workdir, sim, nats_server.url, "buffer = 2000", symbols=("BTCUSDT",))
        with trio.fail_after(TIMEOUT):
            async with WebSocketService(config, serve_unix=True) as ws:
                sink = ws.nats
                assert sink is not None
                subscriber = await Subscriber.connect(config.unix.path)
                await until(sink, lambda: sink.acked >= 5000)
                await trio.to_thread.run_sync(nats_server.kill)
                await until(sink, lambda: not sink.connected)
                assert ws.health()[0] == "degraded"
                assert any(r.startswith("nats: not connected") for r in ws.health()[1])
                for _ in range(20_000):  # the feed goes on to the socket meanwhile
                    await subscriber.line()
                assert sink.dropped > 0 and sink.gaps >= 1
                acked = sink.acked
                await trio.to_thread.run_sync(nats_server.start)
                await until(sink, lambda: sink.connected and sink.acked > acked + 5000)
                status = (await ws.get_connection_status())["sinks"]["nats"]
                assert ws.health()[0] == "ok"
    assert status["connected"] is True
    assert status["reconnects"] >= 1 and status["gaps"] >= 1 and status["dropped"] > 0
    assert status["last_error"]
    assert "nats: buffer full" in caplog.text
    assert "record(s) were dropped in that gap; caught up again" in caplog.text


async def test_a_full_stream_discards_its_oldest_records_and_publishing_goes_on(
    nats_server: NatsServer, workdir: Path
) -> None:
    limit = 256 * 1024
    async with simulator(flood=True) as sim:
        config = nats_config(workdir, sim, nats_server.url, f"max_bytes = {limit}", symbols=("BTCUSDT",))
        with trio.fail_after(TIMEOUT):
            async with WebSocketService(config) as ws:
                sink = ws.nats
                assert sink is not None
                await until(sink, lambda: sink.acked >= 5000)  # ~2 MB offered
                info = await stream_info(nats_server.url)
                assert sink.connected
    state = info["state"]
    assert state["bytes"] <= limit
    assert state["first_seq"] > 1  # the oldest went
    assert state["last_seq"] >= 5000
    assert sink.rejected == 0


async def test_an_existing_stream_with_other_settings_is_left_as_it_is_with_a_warning(
    nats_server: NatsServer, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    theirs = StreamSettings("FEEDD", ("feedd.>",), max_age=86400.0, duplicate_window=30.0)
    async with open_client(parse_server(nats_server.url)) as client:
        with trio.fail_after(TIMEOUT):
            assert await ensure_stream(client, theirs) == []  # created
    async with simulator(speed=20.0) as sim:
        config = nats_config(workdir, sim, nats_server.url)
        with trio.fail_after(TIMEOUT):
            async with WebSocketService(config) as ws:
                sink = ws.nats
                assert sink is not None
                await until(sink, lambda: sink.acked > 0)
                info = await stream_info(nats_server.url)
    assert info["config"]["duplicate_window"] == 30 * 10**9
    assert ("nats: stream FEEDD exists with other settings; left as it is: "
            "duplicate_window 30 s (want 120 s)") in caplog.text


async def test_without_a_server_the_feed_streams_and_health_is_degraded(workdir: Path) -> None:
    from nats_server import free_port

    got = trio.Event()
    async with simulator(speed=20.0) as sim:
        config = nats_config(workdir, sim, f"nats://127.0.0.1:{free_port()}", "buffer = 10")
        with trio.fail_after(TIMEOUT):
            async with WebSocketService(config) as ws:
                sink = ws.nats
                assert sink is not None
                records: list[MarketData] = []

                async def collect(record: MarketData) -> None:
                    records.append(record)
                    if len(records) >= 30:
                        got.set()

                ws.add_data_callback(collect)
                await got.wait()
                while sink.last_error is None:
                    await sink.progressed()
                state, reasons = ws.health()
                status = await ws.get_connection_status()
                metrics, _ = ws.metrics.render()
    assert state == "degraded"
    assert any("nats: not connected" in r and "cannot connect" in r for r in reasons)
    assert status["sinks"]["nats"]["connected"] is False
    assert status["sinks"]["nats"]["dropped"] >= 20
    assert b"feedd_nats_connected 0.0" in metrics
    assert b"feedd_nats_dropped_records_total" in metrics


def test_without_a_nats_table_nothing_of_nats_is_imported(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys, trio
        from feedd.config import parse_config
        from feedd.control.service import WebSocketService

        async def main():
            async with WebSocketService(parse_config({"feed": {"state_file": sys.argv[1]}})) as ws:
                assert ws.nats is None
            print(sorted(m for m in sys.modules if "nats" in m))

        trio.run(main)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "state.json")],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_message_ids_name_the_trade_or_the_tickers_exchange_time() -> None:
    from datetime import UTC, datetime

    from feedd.fanout.nats import subject_for
    from feedd.model import trade_record

    at = datetime(2024, 8, 8, 23, 54, 15, 342000, tzinfo=UTC)
    trade = trade_record("binance", "BTCUSDT", 1.0, 1.0, at, at, "buy", "3735683259")
    ticker = MarketData("bybit-linear", "BTCUSDT", "ticker", 1.0, 1.0, at, at)
    assert message_id(trade) == "binance:trade:BTCUSDT:3735683259"
    assert message_id(ticker) == "bybit-linear:ticker:BTCUSDT:1723161255342000"
    odd = trade_record("coinbase", "BTC-USD", 1.0, 1.0, at, at, "buy", "7\r\nX: 1")
    assert "\r" not in message_id(odd) and "\n" not in message_id(odd)
    assert subject_for("feedd", "coinbase", "trade", "A.B*>") == "feedd.coinbase.trade.A_B__"


def test_a_quote_goes_to_its_kinds_subject_and_its_id_tells_two_quotes_of_one_instant_apart() -> None:
    from datetime import UTC, datetime

    from feedd.fanout.nats import subject_for
    from feedd.model import quote_record

    at = datetime(2024, 8, 8, 23, 54, 15, 342000, tzinfo=UTC)
    first = quote_record("bybit", "BTCUSDT", 100.0, 1.0, 100.5, 2.0, at, at)
    moved = quote_record("bybit", "BTCUSDT", 100.0, 1.5, 100.5, 2.0, at, at)
    assert subject_for("feedd", "bybit", first.kind, first.symbol) == "feedd.bybit.quote.BTCUSDT"
    assert message_id(first) == "bybit:quote:BTCUSDT:1723161255342000:100.0:1.0:100.5:2.0"
    assert message_id(first) != message_id(moved)


async def test_a_full_buffer_drops_the_oldest_counts_one_gap_and_never_blocks() -> None:
    from datetime import UTC, datetime

    from feedd.config import NatsConfig
    from feedd.model import trade_record

    sink = NatsSink(NatsConfig(buffer=3))
    at = datetime(2024, 8, 8, tzinfo=UTC)
    records = [trade_record("binance", "BTCUSDT", 1.0, 1.0, at, at, "buy", str(i)) for i in range(5)]
    sink.offer(records[:2], [b"0\n", b"1\n"])
    sink.offer(records[2:], [b"2\n", b"3\n", b"4\n"])
    sink.offer(records[:1], [b"5\n"])
    assert (sink.dropped, sink.gaps, sink.buffered) == (3, 1, 3)
    assert [line for _, line in sink._pending] == [b"3\n", b"4\n", b"5\n"]
    assert sink.problem() == "nats: not connected"
