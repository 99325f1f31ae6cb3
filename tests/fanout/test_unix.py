from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import attrs
import orjson
import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from feedd.codec import encode_line, encode_record
from feedd.config import ConfigError, parse_config
from feedd.errors import PublisherError
from feedd.fanout.hub import Hub
from feedd.fanout.lines import ClientFilter, decode_record, parse_filter
from feedd.fanout.unix import UnixPublisher
from feedd.model import Disconnected, Ingress, MarketData, Reconnected

T0 = datetime(2024, 8, 8, 6, 53, 2, 668000, tzinfo=UTC)


def rec(i: int, exchange: str = "binance", symbol: str = "BTCUSDT", kind: str = "trade") -> Any:
    if kind == "trade":
        return MarketData(
            exchange=exchange,
            symbol=symbol,
            kind="trade",
            price=61837.63,
            volume=0.02,
            timestamp=T0,
            received_at=T0,
            side="sell",
            trade_id=str(i),
        )
    return MarketData(
        exchange=exchange,
        symbol=symbol,
        kind="ticker",
        price=61837.63,
        volume=12345.6,
        timestamp=T0,
        received_at=T0,
        bid=61837.62,
        ask=61837.64,
        high_24h=62000.5,
        low_24h=60000.25,
        change_24h=1.5,
        trade_id=str(i),  # tickers carry no id; the tests use it to tell records apart
    )


def mixed(n: int) -> list[MarketData]:
    exchanges = ("binance", "bybit", "coinbase")
    symbols = ("BTCUSDT", "ETHUSDT")
    kinds = ("trade", "ticker", "trade")
    return [rec(i, exchanges[i % 3], symbols[i % 2], kinds[i % 3]) for i in range(n)]


@pytest.fixture
def sock_path() -> Iterator[str]:
    # tmp_path can exceed the ~107-byte AF_UNIX limit; a short directory of our own cannot.
    directory = tempfile.mkdtemp(dir="/tmp", prefix="feedd-")
    yield os.path.join(directory, "feedd.sock")
    shutil.rmtree(directory, ignore_errors=True)


@attrs.define
class Running:
    hub: Hub
    pub: UnixPublisher
    send: trio.MemorySendChannel[Ingress]

    async def publish(self, records: list[MarketData]) -> None:
        await self.send.send(records)
        await wait_all_tasks_blocked()


@asynccontextmanager
async def running(path: str, **kwargs: Any) -> AsyncIterator[Running]:
    hub = Hub()
    pub = UnixPublisher(hub, path, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await nursery.start(pub.serve)
        yield Running(hub, pub, hub.sender())
        nursery.cancel_scope.cancel()


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = b""

    @classmethod
    async def connect(cls, path: str, filter_line: bytes | None = None) -> Client:
        client = cls(await trio.open_unix_socket(path))
        if filter_line is not None:
            await client.stream.send_all(filter_line)
        await wait_all_tasks_blocked()  # accepted, attached, filter read
        return client

    async def line(self) -> bytes | None:
        """The next line, or None at EOF."""
        while b"\n" not in self._buf:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line + b"\n"

    async def lines(self, n: int) -> list[bytes]:
        with trio.fail_after(5):
            out: list[bytes] = []
            for _ in range(n):
                line = await self.line()
                assert line is not None, f"EOF after {len(out)} lines"
                out.append(line)
            return out

    async def records(self, n: int) -> list[MarketData]:
        return [decode_record(line) for line in await self.lines(n)]

    async def records_until(self, trade_id: str) -> list[MarketData]:
        out: list[MarketData] = []
        with trio.fail_after(5):
            while not out or out[-1].trade_id != trade_id:
                out.extend(await self.records(1))
        return out


async def test_two_subscribers_receive_identical_correct_lines(sock_path: str) -> None:
    records = mixed(50)
    async with running(sock_path, filter_wait=0) as r:
        a = await Client.connect(sock_path)
        b = await Client.connect(sock_path)
        assert r.pub.clients == 2
        for start in range(0, 50, 20):
            await r.publish(records[start : start + 20])

        lines_a, lines_b = await a.lines(50), await b.lines(50)
        assert lines_a == lines_b
        assert [decode_record(line) for line in lines_a] == records
        assert r.pub.records_sent == 100
        assert r.pub.records_dropped == 0


@pytest.mark.parametrize(
    ("filter_obj", "wanted"),
    [
        ({"exchange": ["bybit"]}, lambda m: m.exchange == "bybit"),
        ({"symbol": ["ethusdt"]}, lambda m: m.symbol == "ETHUSDT"),
        ({"kind": ["ticker"]}, lambda m: m.kind == "ticker"),
        (
            {"exchange": ["binance", "coinbase"], "symbol": ["BTCUSDT"], "kind": ["trade"]},
            lambda m: m.exchange in ("binance", "coinbase") and m.symbol == "BTCUSDT" and m.kind == "trade",
        ),
    ],
)
async def test_filter_selects_by_exchange_symbol_and_kind(
    sock_path: str, filter_obj: dict[str, list[str]], wanted: Any
) -> None:
    records = mixed(60)
    expected = [m for m in records if wanted(m)]
    async with running(sock_path, filter_wait=10) as r:
        client = await Client.connect(sock_path, encode_line(filter_obj))
        unfiltered = await Client.connect(sock_path, b"{}\n")
        await r.publish(records[:30])
        await r.publish(records[30:])

        assert await client.records_until(expected[-1].trade_id or "") == expected
        assert await unfiltered.records(60) == records
        assert r.pub.records_sent == len(expected) + 60


async def test_records_published_before_the_filter_arrives_are_held_then_filtered(
    sock_path: str,
) -> None:
    records = mixed(30)
    async with running(sock_path, filter_wait=10) as r:
        client = await Client.connect(sock_path)  # no filter yet: the server is waiting
        await r.publish(records[:20])
        assert r.pub.records_sent == 0

        await client.stream.send_all(b'{"symbol": ["ETHUSDT"], "kind": ["trade"]}\n')
        await wait_all_tasks_blocked()
        await r.publish(records[20:])

        expected = [m for m in records if m.symbol == "ETHUSDT" and m.kind == "trade"]
        assert await client.records_until(expected[-1].trade_id or "") == expected


async def test_without_a_filter_line_everything_is_delivered_after_filter_wait(
    sock_path: str, mock_clock: MockClock
) -> None:
    records = mixed(10)
    async with running(sock_path, filter_wait=0.5) as r:
        client = await Client.connect(sock_path)
        await r.publish(records[:6])
        mock_clock.jump(0.4)
        await wait_all_tasks_blocked()
        assert r.pub.records_sent == 0  # still holding, waiting for a possible filter

        mock_clock.jump(0.2)
        await wait_all_tasks_blocked()
        await r.publish(records[6:])
        assert await client.records(10) == records


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", "not JSON"),
        (b'["BTCUSDT"]\n', "JSON object"),
        (b'{"symbol": "BTCUSDT"}\n', "'symbol' must be a non-empty list of strings"),
        (b'{"symbol": []}\n', "'symbol' must be a non-empty list of strings"),
        (b'{"kind": [1]}\n', "'kind' must be a non-empty list of strings"),
        (b'{"colour": ["red"]}\n', "unknown filter key(s) ['colour']"),
        (b'{"kind": ["book"]}\n', "unknown value(s) ['book']"),
    ],
)
async def test_invalid_filter_gets_one_error_line_and_is_closed(
    sock_path: str, line: bytes, message: str
) -> None:
    async with running(sock_path, filter_wait=10) as r:
        client = await Client.connect(sock_path, line)
        await r.publish(mixed(3))

        with trio.fail_after(5):
            error = await client.line()
            assert error is not None
            assert await client.line() is None  # closed, and no record was sent
        await client.stream.aclose()  # the server waits for that, so the client reads no reset
        await wait_all_tasks_blocked()
        obj = orjson.loads(error)
        assert obj["type"] == "error"
        assert message in obj["error"]
        assert r.pub.filter_errors == 1
        assert r.pub.clients == 0
        assert r.hub.sinks == ()


async def test_filter_line_sent_late_applies_from_then_on(sock_path: str, mock_clock: MockClock) -> None:
    records = mixed(60)
    async with running(sock_path, filter_wait=0.1) as r:
        client = await Client.connect(sock_path)
        mock_clock.jump(0.2)  # no filter within filter_wait: the client gets everything
        await wait_all_tasks_blocked()
        await r.publish(records[:30])
        assert await client.records(30) == records[:30]

        # `nc -U`: the user types a filter a while later
        await client.stream.send_all(b'{"symbol": ["ETHUSDT"]}\n')
        await wait_all_tasks_blocked()
        await r.publish(records[30:])
        expected = [m for m in records[30:] if m.symbol == "ETHUSDT"]
        assert await client.records_until(expected[-1].trade_id or "") == expected


async def test_a_second_filter_line_replaces_the_first(sock_path: str) -> None:
    records = mixed(60)
    async with running(sock_path, filter_wait=10) as r:
        client = await Client.connect(sock_path, b'{"kind": ["ticker"]}\n')
        await r.publish(records[:30])
        tickers = [m for m in records[:30] if m.kind == "ticker"]
        assert await client.records_until(tickers[-1].trade_id or "") == tickers

        await client.stream.send_all(b'{"symbol": ["BTCUSDT"]}\n\n')  # a blank line changes nothing
        await wait_all_tasks_blocked()
        await r.publish(records[30:])
        btc = [m for m in records[30:] if m.symbol == "BTCUSDT"]
        assert await client.records_until(btc[-1].trade_id or "") == btc


async def test_a_filter_line_split_across_writes_applies_once_complete(sock_path: str) -> None:
    records = mixed(30)
    async with running(sock_path, filter_wait=10) as r:
        client = await Client.connect(sock_path, b'{"kind": ')
        await r.publish(records[:15])
        assert r.pub.records_sent == 0  # still held: the filter is on its way
        await client.stream.send_all(b'["ticker"]}\n')
        await wait_all_tasks_blocked()
        await r.publish(records[15:])
        expected = [m for m in records if m.kind == "ticker"]
        assert await client.records_until(expected[-1].trade_id or "") == expected


async def test_a_bad_filter_line_sent_late_gets_the_error_line_and_is_closed(sock_path: str) -> None:
    records = mixed(6)
    async with running(sock_path, filter_wait=10) as r:
        client = await Client.connect(sock_path, b'{"kind": ["trade"]}\n')
        await r.publish(records)
        assert await client.records(4) == [m for m in records if m.kind == "trade"]

        await client.stream.send_all(b'{"kind": ["book"]}\n')
        await wait_all_tasks_blocked()
        await r.publish(records)
        with trio.fail_after(5):
            error = await client.line()
            assert error is not None
            assert await client.line() is None  # closed, and no record after the bad line
        await client.stream.aclose()
        await wait_all_tasks_blocked()
        assert "unknown value(s) ['book']" in orjson.loads(error)["error"]
        assert r.pub.filter_errors == 1
        assert r.pub.clients == 0
        assert r.hub.sinks == ()


async def test_unterminated_filter_line_at_end_of_input_is_an_error(sock_path: str) -> None:
    async with running(sock_path, filter_wait=10) as r:
        client = await Client.connect(sock_path, b'{"symbol": ["BTC')
        await client.stream.send_eof()
        with trio.fail_after(5):
            error = await client.line()
        assert error is not None
        assert "not terminated" in orjson.loads(error)["error"]
        assert r.pub.filter_errors == 1


def test_max_clients_must_be_positive() -> None:
    assert parse_config({"unix": {"max_clients": 3}}).unix.max_clients == 3
    with pytest.raises(ConfigError, match=r"x.toml: unix.max_clients: must be a positive number"):
        parse_config({"unix": {"max_clients": 0}}, "x.toml")
    with pytest.raises(ValueError, match="max_clients"):
        UnixPublisher(Hub(), "unused.sock", max_clients=0)


async def test_subscribers_beyond_max_clients_get_one_error_line_and_are_closed(sock_path: str) -> None:
    async with running(sock_path, filter_wait=0, max_clients=2) as r:
        first = await Client.connect(sock_path, b"{}\n")
        second = await Client.connect(sock_path, b"{}\n")
        refused = await Client.connect(sock_path, b"{}\n")
        with trio.fail_after(5):
            error = await refused.line()
            assert await refused.line() is None
        assert error is not None
        assert orjson.loads(error) == {"type": "error", "error": "too many subscribers (max 2)"}
        assert r.pub.clients_refused == 1
        assert r.pub.clients == 2

        await r.publish([rec(1)])
        assert await first.records(1) == [rec(1)]
        assert await second.records(1) == [rec(1)]

        await first.stream.aclose()
        await r.publish([rec(2)])  # the failed write is what tells the publisher it left
        assert r.pub.clients == 1
        later = await Client.connect(sock_path, b"{}\n")
        await r.publish([rec(3)])
        assert await later.records(1) == [rec(3)]
        assert await second.records(2) == [rec(2), rec(3)]


def test_parse_filter_takes_trades_as_the_config_spells_the_channel() -> None:
    assert parse_filter(b'{"kind": ["trades"]}') == parse_filter(b'{"kind": ["trade"]}')
    assert parse_filter(b'{"kind": ["trades", "ticker"]}').kinds == {"trade", "ticker"}


def test_parse_filter_normalizes_case() -> None:
    assert parse_filter(b'{"exchange": ["Bybit"], "symbol": ["btc-usd"]}') == ClientFilter(
        exchanges=frozenset({"bybit"}), symbols=frozenset({"BTC-USD"})
    )


async def test_subscriber_that_fell_behind_gets_gap_with_exact_count_then_newest(
    sock_path: str,
) -> None:
    big = [rec(i) for i in range(5000)]  # ~1.5 MB: more than a Unix socket holds
    tail = [rec(5000 + i) for i in range(20)]
    async with running(sock_path, filter_wait=0, client_buffer=5) as r:
        client = await Client.connect(sock_path)
        await r.publish(big)  # the socket fills; the rest of that write waits for the client
        # Twenty batches while the client reads nothing: only the newest five fit its buffer.
        for m in tail:
            r.send.send_nowait([m])
        await wait_all_tasks_blocked()

        lines = await client.lines(len(big) + 6)
        first, gap, last = lines[: len(big)], lines[len(big)], lines[len(big) + 1 :]
        assert [decode_record(line) for line in first] == big  # the write in progress, whole
        assert orjson.loads(gap) == {"type": "gap", "dropped": 15}
        assert [decode_record(line) for line in last] == tail[15:]
        await wait_all_tasks_blocked()
        assert r.pub.records_dropped == 15
        assert r.pub.records_sent == len(big) + 5


async def test_a_subscriber_whose_socket_has_room_gets_every_record_whatever_its_buffer(
    sock_path: str,
) -> None:
    records = [rec(i) for i in range(20)]
    async with running(sock_path, filter_wait=0, client_buffer=5) as r:
        client = await Client.connect(sock_path)
        for m in records:  # twenty batches in one hub wakeup: one flush, one write
            r.send.send_nowait([m])
        await wait_all_tasks_blocked()
        assert await client.records(20) == records
        assert r.pub.records_dropped == 0
        assert r.pub.flushes == 1


async def test_slow_subscriber_loses_oldest_while_fast_one_gets_everything(
    sock_path: str,
) -> None:
    total, batch, buffer = 6000, 20, 50
    records = [rec(i) for i in range(total)]
    async with running(sock_path, filter_wait=0, client_buffer=buffer) as r:
        slow = await Client.connect(sock_path)
        fast = await Client.connect(sock_path)
        fast_got: list[MarketData] = []

        async def read_fast() -> None:
            fast_got.extend(await fast.records(total))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_fast)
            # The slow client reads nothing while ~2 MB are published: its socket buffer
            # fills, its writer blocks, and its own buffer overflows. Nobody else waits.
            for start in range(0, total, batch):
                await r.publish(records[start : start + batch])
        assert fast_got == records

        # Now the slow client reads: a contiguous prefix (what the kernel held), then
        # exactly one gap notice with the exact number lost, then the newest `buffer`.
        expected_next, gaps, after_gap = 0, [], 0
        with trio.fail_after(5):
            while expected_next < total:
                line = await slow.line()
                assert line is not None
                obj = orjson.loads(line)
                if obj.get("type") == "gap":
                    gaps.append(obj["dropped"])
                    expected_next += obj["dropped"]
                    continue
                assert obj["trade_id"] == str(expected_next)
                expected_next += 1
                after_gap += bool(gaps)
        await wait_all_tasks_blocked()  # the writer counts a write once send_all returns
        assert len(gaps) == 1
        assert after_gap == buffer
        assert r.pub.records_dropped == gaps[0]
        assert r.pub.records_sent == 2 * total - gaps[0]


async def test_a_stale_socket_file_is_replaced(sock_path: str) -> None:
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(sock_path)
    leftover.close()  # the file stays; nobody listens on it
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)

    async with running(sock_path, filter_wait=0) as r:
        client = await Client.connect(sock_path)
        await r.publish([rec(1)])
        assert await client.records(1) == [rec(1)]



async def test_of_two_publishers_starting_together_over_a_stale_socket_one_listens_and_one_refuses(
    sock_path: str,
) -> None:
    """Both would find the stale file refusing connections; without the lock the second would
    then unlink the first's fresh socket and bind its own, and both would think they listen."""
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(sock_path)
    leftover.close()
    hubs = [Hub(), Hub()]
    listening: list[int] = []
    refused: list[str] = []

    async def claim(nursery: trio.Nursery, which: int) -> None:
        try:
            await nursery.start(UnixPublisher(hubs[which], sock_path, filter_wait=0).serve)
        except PublisherError as exc:
            refused.append(str(exc))
        else:
            listening.append(which)

    async with trio.open_nursery() as nursery:
        for hub in hubs:
            await nursery.start(hub.run)
        async with trio.open_nursery() as claims:
            claims.start_soon(claim, nursery, 0)
            claims.start_soon(claim, nursery, 1)
        assert refused == [f"{sock_path} is in use: another feedd owns it"]
        (owner,) = listening
        client = await Client.connect(sock_path)  # the socket on the path is the owner's
        with hubs[owner].sender() as send:
            await send.send([rec(1)])
        assert await client.records(1) == [rec(1)]
        nursery.cancel_scope.cancel()
    assert not await trio.Path(sock_path).exists()

async def test_a_live_socket_owned_by_another_publisher_refuses_to_start(
    sock_path: str,
) -> None:
    async with running(sock_path, filter_wait=0) as r:
        intruder = UnixPublisher(Hub(), sock_path)
        with pytest.raises(PublisherError, match="another feedd owns it") as info:
            await intruder.serve()
        assert sock_path in str(info.value)

        client = await Client.connect(sock_path)  # the owner is untouched
        await r.publish([rec(1)])
        assert await client.records(1) == [rec(1)]


async def test_a_path_that_is_not_a_socket_is_left_alone(sock_path: str) -> None:
    await trio.Path(sock_path).write_text("precious")
    with pytest.raises(PublisherError, match="not a socket"):
        await UnixPublisher(Hub(), sock_path).serve()
    assert await trio.Path(sock_path).read_text() == "precious"


async def test_socket_is_mode_0660_in_a_created_directory_and_removed_on_shutdown() -> None:
    directory = tempfile.mkdtemp(dir="/tmp", prefix="feedd-")
    path = os.path.join(directory, "run", "f.sock")
    try:
        async with running(path):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert not await trio.Path(path).exists()
    finally:
        shutil.rmtree(directory)


async def test_socket_is_removed_when_the_daemon_fails(sock_path: str) -> None:
    with pytest.raises(ExceptionGroup) as info:
        async with running(sock_path):
            raise RuntimeError("boom")
    assert info.group_contains(RuntimeError, match="boom")
    assert not await trio.Path(sock_path).exists()


async def test_a_client_leaving_does_not_disturb_the_others(sock_path: str) -> None:
    records = mixed(40)
    async with running(sock_path, filter_wait=0) as r:
        leaving = await Client.connect(sock_path)
        staying = await Client.connect(sock_path)
        quitting = await Client.connect(sock_path)
        await r.publish(records[:10])
        assert await leaving.records(5) == records[:5]

        await leaving.stream.aclose()  # mid-stream, with unread data
        await quitting.stream.aclose()  # while idle
        await r.publish(records[10:])

        assert await staying.records(40) == records
        await wait_all_tasks_blocked()
        assert r.pub.clients == 1
        assert r.pub.clients_total == 3
        assert len(r.hub.sinks) == 1


async def test_a_client_that_half_closes_still_receives_records(sock_path: str) -> None:
    """`nc -U sock < /dev/null` closes its sending side at once; it still wants the feed."""
    records = mixed(6)
    async with running(sock_path) as r:
        client = await Client.connect(sock_path, b'{"kind": ["trade"]}\n')
        await client.stream.send_eof()
        await r.publish(records)
        assert await client.records(4) == [x for x in records if x.kind == "trade"]

        silent = await Client.connect(sock_path)
        await silent.stream.send_eof()  # no filter line at all, then EOF
        await r.publish(records)
        assert await silent.records(6) == records


async def test_finish_lets_each_subscriber_write_what_it_holds_then_closes(sock_path: str) -> None:
    """The graceful stop: records a slow subscriber holds are written out before it is closed."""
    records = [rec(i) for i in range(20_000)]  # megabytes: more than the socket buffers hold
    hub = Hub()
    pub = UnixPublisher(hub, sock_path, filter_wait=0, client_buffer=len(records))
    served = trio.Event()

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await pub.serve(task_status=task_status)
        served.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await nursery.start(serve)
        slow = await Client.connect(sock_path)
        idle = await Client.connect(sock_path, b'{"symbol": ["ETHUSDT"]}\n')
        with hub.sender() as send:
            await send.send(records[:10_000])  # taken at once: its write blocks on a full socket
            await wait_all_tasks_blocked()
            await send.send(records[10_000:])  # held in the subscriber's buffer meanwhile
        await wait_all_tasks_blocked()
        assert max(s.pending for s in pub.subscribers) == 10_000

        pub.finish()
        await wait_all_tasks_blocked()
        assert not served.is_set()  # still writing to the slow one
        with pytest.raises(OSError):
            await trio.open_unix_socket(sock_path)  # accepting has stopped

        assert await idle.line() is None  # nothing for it: closed at once
        with trio.fail_after(5):
            got = [decode_record(line) for line in await slow.lines(len(records))]
            assert await slow.line() is None  # then the end of the stream
            await served.wait()
        nursery.cancel_scope.cancel()
    assert got == records
    assert not await trio.Path(sock_path).exists()


# ---- writes: at once, from the hub's own call, and coalesced when there are many subscribers ----


async def test_an_offer_is_written_before_the_offering_call_returns(sock_path: str) -> None:
    """No task of its own runs per batch: the hub's call itself writes to a subscriber whose
    socket has room (a hop costs a scheduler pass per batch, measured in bench/hops.py)."""
    records = mixed(5)
    async with running(sock_path, filter_wait=0) as r:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(sock_path)
        client.setblocking(False)
        await wait_all_tasks_blocked()  # accepted, attached, no filter to wait for
        r.pub.offer(records, [encode_record(m) for m in records])
        data = client.recv(1 << 16)  # no await in between: it is there already
        client.close()
    assert [decode_record(line) for line in data.splitlines()] == records


async def test_a_lone_subscriber_is_never_held_back(sock_path: str, mock_clock: MockClock) -> None:
    records = mixed(30)
    async with running(sock_path, filter_wait=0, write_interval=1.0) as r:
        client = await Client.connect(sock_path)
        for start in range(0, 30, 10):  # the clock stands still: only the count can hold back
            await r.publish(records[start : start + 10])
            assert r.pub.records_sent == start + 10
        assert await client.records(30) == records
        assert r.pub.flushes == 3


async def test_with_many_subscribers_records_arriving_meanwhile_go_out_with_the_next_flush(
    sock_path: str, mock_clock: MockClock
) -> None:
    records = mixed(30)
    async with running(sock_path, filter_wait=0, write_interval=1.0) as r:
        clients = [await Client.connect(sock_path) for _ in range(3)]
        await r.publish(records[:10])  # written at once, to all three
        assert r.pub.records_sent == 30
        await r.publish(records[10:20])
        await r.publish(records[20:])
        mock_clock.jump(1.999)  # three subscribers written: the next flush is (3 - 1) x 1 s later
        await wait_all_tasks_blocked()
        assert (r.pub.records_sent, r.pub.flushes) == (30, 1)

        mock_clock.jump(0.001)
        await wait_all_tasks_blocked()
        assert (r.pub.records_sent, r.pub.flushes) == (90, 2)  # both batches, one write each
        for client in clients:
            assert await client.records(30) == records


def test_write_interval_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="write_interval"):
        UnixPublisher(Hub(), "/tmp/x.sock", write_interval=-1.0)


# ---- feed events: disconnect and reconnect lines -------------------------------------------

AT = datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=UTC)


def down(exchange: str = "binance", symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")) -> Disconnected:
    return Disconnected(exchange, symbols, AT, "closed by peer: code 1006")


async def test_feed_events_reach_every_subscriber_in_order_with_the_records(sock_path: str) -> None:
    records = mixed(6)
    async with running(sock_path, filter_wait=0) as r:
        client = await Client.connect(sock_path, b"{}\n")
        await r.send.send(records[:3])
        await r.send.send(down())
        await r.send.send(Reconnected("binance", ("BTCUSDT", "ETHUSDT"), AT, 2.5))
        await r.publish(records[3:])
        lines = await client.lines(8)
    assert [decode_record(line) for line in lines[:3]] == records[:3]
    assert orjson.loads(lines[3]) == {
        "type": "disconnect", "exchange": "binance", "symbols": ["BTCUSDT", "ETHUSDT"],
        "at": "2026-12-03T10:00:00.123456Z", "reason": "closed by peer: code 1006",
    }
    assert orjson.loads(lines[4]) == {
        "type": "reconnect", "exchange": "binance", "symbols": ["BTCUSDT", "ETHUSDT"],
        "at": "2026-12-03T10:00:00.123456Z", "gap_seconds": 2.5,
    }
    assert [decode_record(line) for line in lines[5:]] == records[3:]
    assert r.hub.events == 2


@pytest.mark.parametrize(
    ("filter_line", "expected"),
    [
        (b'{"symbol": ["ethusdt"]}\n', ["ETHUSDT"]),  # only its own symbol
        (b'{"exchange": ["binance"], "kind": ["ticker"]}\n', ["BTCUSDT", "ETHUSDT"]),  # kinds aside
        (b'{"symbol": ["SOLUSDT"]}\n', None),  # not about it: not sent
        (b'{"exchange": ["bybit"]}\n', None),
    ],
)
async def test_a_filtered_subscriber_hears_only_of_its_own_symbols(
    sock_path: str, filter_line: bytes, expected: list[str] | None
) -> None:
    marker = rec(99, "bybit", "SOLUSDT", "ticker")
    async with running(sock_path, filter_wait=0) as r:
        client = await Client.connect(sock_path, filter_line)
        await r.send.send(down())
        await r.publish([marker])  # what a filter lets through of it comes after the event
        line = await client.line()
    if expected is None:
        assert line is not None and decode_record(line) == marker
    else:
        assert line is not None and orjson.loads(line)["symbols"] == expected


async def test_a_feed_event_for_a_subscriber_without_a_filter_yet_waits_for_its_filter(
    sock_path: str,
) -> None:
    async with running(sock_path, filter_wait=5) as r:
        client = await Client.connect(sock_path)  # no filter line yet: held
        await r.send.send(down())
        await wait_all_tasks_blocked()
        await client.stream.send_all(b'{"symbol": ["BTCUSDT"]}\n')
        [line] = await client.lines(1)
    assert orjson.loads(line)["symbols"] == ["BTCUSDT"]
