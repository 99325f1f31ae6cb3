from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from feedd.cli.main import build_parser
from feedd.cli.tail import format_record, tail
from feedd.codec import encode_event, encode_line, encode_record
from feedd.errors import TailError
from feedd.fanout.hub import Hub
from feedd.fanout.unix import UnixPublisher
from feedd.model import Disconnected, MarketData, Reconnected

TS = datetime(2024, 8, 8, 6, 53, 2, 668921, tzinfo=UTC)

TRADE = MarketData(
    exchange="binance",
    symbol="BTCUSDT",
    kind="trade",
    price=61837.63,
    volume=0.02,
    timestamp=TS,
    received_at=TS,
    side="buy",
    trade_id="3735683259",
)
TICKER = MarketData(
    exchange="bybit-linear",
    symbol="ETHUSDT",
    kind="ticker",
    price=2650.5,
    volume=12345.6,
    timestamp=TS,
    received_at=TS,
    bid=2650.49,
    ask=2650.51,
    change_24h=-1.5,
)


def trade(i: int, symbol: str = "BTCUSDT") -> MarketData:
    return MarketData(
        exchange="binance",
        symbol=symbol,
        kind="trade",
        price=100.0 + i,
        volume=1.0,
        timestamp=TS,
        received_at=TS,
        side="sell",
        trade_id=str(i),
    )


@pytest.fixture
def sock_path() -> Iterator[str]:
    directory = tempfile.mkdtemp(dir="/tmp", prefix="feedd-")
    yield os.path.join(directory, "feedd.sock")
    shutil.rmtree(directory, ignore_errors=True)


def test_format_trade() -> None:
    assert format_record(TRADE) == (
        "06:53:02.668 binance      BTCUSDT  trade  buy  0.02 @ 61837.63  id=3735683259"
    )


def test_format_ticker() -> None:
    assert format_record(TICKER) == (
        "06:53:02.668 bybit-linear ETHUSDT  ticker 2650.5  bid 2650.49 ask 2650.51  24h -1.50%  vol 12345.6"
    )


def test_format_quote_shows_both_sides_with_their_sizes() -> None:
    from feedd.model import quote_record

    quote = quote_record("binance", "BTCUSDT", 61837.63, 3.78826, 61837.64, 1.54698, TS, TS)
    assert format_record(quote) == (
        "06:53:02.668 binance      BTCUSDT  quote  3.78826 @ 61837.63 / 1.54698 @ 61837.64"
    )


def test_format_shows_absent_values_and_tiny_numbers_plainly() -> None:
    bare_ticker = MarketData(
        exchange="coinbase",
        symbol="SHIB-USD",
        kind="ticker",
        price=1.234e-05,
        volume=5e9,
        timestamp=TS,
        received_at=TS,
    )
    assert format_record(bare_ticker) == (
        "06:53:02.668 coinbase     SHIB-USD ticker 0.00001234  bid - ask -  vol 5000000000.0"
    )


async def test_tail_prints_records_and_stops_at_limit(sock_path: str) -> None:
    hub = Hub()
    out = io.StringIO()
    records = [trade(i) for i in range(5)]
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await nursery.start(UnixPublisher(hub, sock_path, filter_wait=0).serve)
        counted: list[int] = []

        async def run_tail() -> None:
            counted.append(await tail(sock_path, out=out, limit=3))

        nursery.start_soon(run_tail)
        await wait_all_tasks_blocked()
        await hub.sender().send(records)
        with trio.fail_after(5):
            while not counted:
                await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    assert counted == [3]
    assert out.getvalue().splitlines() == [format_record(m) for m in records[:3]]


async def test_tail_sends_its_filter(sock_path: str) -> None:
    hub = Hub()
    out = io.StringIO()
    records = [trade(i, "ETHUSDT" if i % 2 else "BTCUSDT") for i in range(10)]
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await nursery.start(UnixPublisher(hub, sock_path, filter_wait=10).serve)
        counted: list[int] = []

        async def run_tail() -> None:
            counted.append(await tail(sock_path, symbols=["ethusdt"], kinds=["trade"], out=out, limit=5))

        nursery.start_soon(run_tail)
        await wait_all_tasks_blocked()
        await hub.sender().send(records)
        with trio.fail_after(5):
            while not counted:
                await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    assert counted == [5]
    assert out.getvalue().splitlines() == [format_record(m) for m in records if m.symbol == "ETHUSDT"]


async def serve_once(
    path: str,
    payload: bytes,
    received: list[bytes],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A stand-in server: accept one client, note its first bytes, send payload, close."""
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(path)  # done in a worker thread by trio: wait for it via start()
    listener.listen(1)
    task_status.started()
    with listener:
        conn, _ = await listener.accept()
        with conn:
            await conn.send(payload)
            conn.shutdown(socket.SHUT_WR)
            received.append(await conn.recv(4096))


async def test_tail_prints_gap_notices_and_returns_the_count_at_eof(sock_path: str) -> None:
    payload = encode_record(trade(1)) + encode_line({"type": "gap", "dropped": 12}) + encode_record(trade(14))
    out = io.StringIO()
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_once, sock_path, payload, received)
        assert await tail(sock_path, out=out) == 2

    assert received == [b""]  # no filter given, so no filter line sent
    assert out.getvalue().splitlines() == [
        format_record(trade(1)),
        "-- gap: 12 records dropped --",
        format_record(trade(14)),
    ]


async def test_tail_prints_disconnect_and_reconnect_lines_as_the_interval_to_distrust(
    sock_path: str,
) -> None:
    at = datetime(2026, 12, 3, 10, 0, 0, 500000, tzinfo=UTC)
    payload = (
        encode_record(trade(1))
        + encode_event(Disconnected("binance", ("BTCUSDT", "ETHUSDT"), at, "closed by peer: code 1011"))
        + encode_event(Reconnected("binance", ("BTCUSDT", "ETHUSDT"), at, 2.345))
        + encode_record(trade(2))
    )
    out = io.StringIO()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_once, sock_path, payload, [])
        assert await tail(sock_path, out=out) == 2
    assert out.getvalue().splitlines()[1:3] == [
        "-- binance disconnected (BTCUSDT, ETHUSDT) at 2026-12-03T10:00:00.500000Z: "
        "closed by peer: code 1011 --",
        "-- binance reconnected (BTCUSDT, ETHUSDT) at 2026-12-03T10:00:00.500000Z, after 2.3 s --",
    ]


async def test_tail_raises_the_servers_error_line(sock_path: str) -> None:
    payload = encode_line({"type": "error", "error": "filter 'kind' has unknown value(s)"})
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_once, sock_path, payload, received)
        with pytest.raises(TailError, match="unknown value"):
            await tail(sock_path, kinds=["book"], out=io.StringIO())
    assert received == [b'{"kind":["book"]}\n']


async def test_tail_against_a_missing_socket_names_the_path(sock_path: str) -> None:
    with pytest.raises(TailError, match=f"no feedd socket at {re.escape(sock_path)}"):
        await tail(sock_path, out=io.StringIO())


async def test_tail_against_a_stale_socket_names_the_path(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    with pytest.raises(TailError, match=f"nothing listens on {re.escape(sock_path)}"):
        await tail(sock_path, out=io.StringIO())


async def test_kind_trades_is_the_same_filter_as_trade(sock_path: str) -> None:
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_once, sock_path, b"", received)
        await tail(sock_path, kinds=["trades", "trade", "ticker"], out=io.StringIO())
    assert received == [b'{"kind":["trade","ticker"]}\n']


def test_command_line_accepts_both_spellings_of_trades() -> None:
    for word in ("trade", "trades", "ticker"):
        assert build_parser().parse_args(["tail", "--kind", word]).kind == [word]


def feedd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "feedd", *args]


async def serve_records_until_the_client_leaves(
    path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """A stand-in daemon that streams records to one client until it goes (at most 1M records)."""
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    task_status.started()
    with listener:
        conn, _ = await listener.accept()
        batch = b"".join(encode_record(trade(i)) for i in range(100))
        async with trio.SocketStream(conn) as stream:
            for _ in range(10_000):
                try:
                    await stream.send_all(batch)
                except trio.BrokenResourceError:
                    return


async def test_tail_into_a_reader_that_stops_early_exits_quietly(sock_path: str) -> None:
    """``feedd tail | head -3``: the pipe closes under tail; that is the end, not a traceback."""
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_records_until_the_client_leaves, sock_path)
        process = await trio.lowlevel.open_process(
            feedd_command("tail", "--socket", sock_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdout is not None and process.stderr is not None
        try:
            head = b""
            with trio.fail_after(30):
                while head.count(b"\n") < 3:
                    chunk = await process.stdout.receive_some(4096)
                    assert chunk, "feedd tail ended before printing 3 lines"
                    head += chunk
                await process.stdout.aclose()  # what `head -3` does after its third line
                code = await process.wait()
                err = b""
                while chunk := await process.stderr.receive_some(4096):
                    err += chunk
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert head.decode().splitlines()[0] == format_record(trade(0))
    assert err.decode() == ""
    assert code == 0


async def test_tail_says_so_when_the_daemon_closes_the_connection(sock_path: str) -> None:
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_once, sock_path, encode_record(trade(1)), received)
        with trio.fail_after(30):
            result = await trio.run_process(
                feedd_command("tail", "--socket", sock_path),
                capture_stdout=True, capture_stderr=True, check=False,
            )
    assert result.stdout.decode().splitlines() == [format_record(trade(1))]
    assert result.stderr.decode() == (
        f"feedd tail: the daemon closed the connection at {sock_path} after 1 record(s) (did it stop?)\n"
    )
    assert result.returncode == 1


async def test_tail_that_reached_its_limit_exits_0_without_a_message(sock_path: str) -> None:
    received: list[bytes] = []
    payload = encode_record(trade(1)) + encode_record(trade(2))
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_once, sock_path, payload, received)
        with trio.fail_after(30):
            result = await trio.run_process(
                feedd_command("tail", "--socket", sock_path, "--limit", "2"),
                capture_stdout=True, capture_stderr=True, check=False,
            )
    assert len(result.stdout.decode().splitlines()) == 2
    assert result.stderr == b""
    assert result.returncode == 0


async def test_error_line_without_a_reason_says_so(sock_path: str) -> None:
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_once, sock_path, encode_line({"type": "error"}), received)
        with pytest.raises(TailError) as info:
            await tail(sock_path, out=io.StringIO())
    assert str(info.value) == f"feedd at {sock_path} refused the request: it gave no reason"


async def test_record_with_a_field_of_the_wrong_type_is_a_tail_error(sock_path: str) -> None:
    line = encode_record(trade(1)).replace(b'"timestamp":"', b'"timestamp":5,"x":"')
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_once, sock_path, line, received)
        with pytest.raises(TailError, match="unreadable line"):
            await tail(sock_path, out=io.StringIO())
