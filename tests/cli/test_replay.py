"""``feedd replay``'s outputs and options: stdout, the Unix socket, NATS, pacing, filters."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from feedd.cli.replay import run_replay, stdout_paced, to_nats, to_socket, to_stdout
from feedd.exchanges import make_venue
from feedd.model import Disconnected
from feedd.record.replay import open_files, replay
from feedd.record.writer import Recorder

sys.path.insert(0, str(Path(__file__).parent.parent / "fanout"))

AT = datetime(2026, 12, 7, 9, 14, 0, 500000, tzinfo=UTC)
TOPICS = ["btcusdt@trade", "ethusdt@trade", "btcusdt@bookTicker"]


def trade(symbol: str, number: int, at: datetime) -> str:
    ms = int(at.timestamp() * 1000)
    data = {"e": "trade", "E": ms, "s": symbol, "t": number, "p": "100.5", "q": "2", "T": ms, "m": False}
    return orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": data}).decode()


def ticker(number: int) -> str:
    data = {"u": number, "s": "BTCUSDT", "b": "100.1", "B": "1", "a": "100.2", "A": "2"}
    return orjson.dumps({"stream": "btcusdt@bookTicker", "data": data}).decode()


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[Path]:
    """Binance frames over 3 s: BTC and ETH trades, BTC quotes, a disconnect event."""
    rec = Recorder(str(tmp_path / "rec"))
    conn = rec.connection(make_venue("binance"), "binance/stream#1", "ws://sim")
    assert conn is not None
    rec.known("binance", ["BTCUSDT", "ETHUSDT"], {})
    attempt = conn.connected(TOPICS, [])
    for second in range(4):
        at = AT + timedelta(seconds=second)
        frames = [trade("BTCUSDT", second, at), trade("ETHUSDT", second, at), ticker(second)]
        conn.received(attempt, at, frames)
    conn.closed(attempt, "gone")
    conn.event(Disconnected("binance", ("BTCUSDT", "ETHUSDT"), AT + timedelta(seconds=4), "gone"))
    rec.close(0.0)
    yield tmp_path / "rec"


def stdout_of(recording: Path, **options: object) -> tuple[bytes, list[str], int]:
    out = io.BytesIO()
    errors: list[str] = []
    args: dict[str, object] = {"venues": [], "symbols": [], "kinds": [], "since": None, "until": None,
                               "speed": None, "socket": None, "nats": None}
    args.update(options)
    code = run_replay([str(recording)], **args, out=out, err=errors.append)  # type: ignore[arg-type]
    return out.getvalue(), errors, code


def test_stdout_has_every_record_then_the_event_line(recording: Path) -> None:
    out, errors, code = stdout_of(recording)
    assert code == 0 and errors == []
    lines = [orjson.loads(line) for line in out.splitlines()]
    first = [(x.get("symbol"), x.get("kind")) for x in lines[:2]]
    assert first == [("BTCUSDT", "trade"), ("ETHUSDT", "trade")]
    assert sum(1 for x in lines if x.get("kind") == "trade") == 8
    assert lines[-1]["type"] == "disconnect" and lines[-1]["reason"] == "gone"
    assert lines[0]["received_at"] == "2026-12-07T09:14:00.500000Z"


def test_the_filters_are_the_sockets_own(recording: Path) -> None:
    out, _, _ = stdout_of(recording, symbols=["btcusdt"], kinds=["trade"])
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert {(x.get("symbol"), x.get("kind")) for x in lines[:-1]} == {("BTCUSDT", "trade")}
    assert lines[-1]["type"] == "disconnect" and lines[-1]["symbols"] == ["BTCUSDT"]  # narrowed
    out, _, _ = stdout_of(recording, venues=["coinbase"])
    assert out == b""


def test_since_and_until_bound_the_receive_times(recording: Path) -> None:
    out, _, _ = stdout_of(recording, since="2026-12-07T09:14:01Z", until="2026-12-07T09:14:02.600Z",
                          kinds=["trade"])
    stamps = {orjson.loads(line)["received_at"] for line in out.splitlines()}
    assert stamps == {"2026-12-07T09:14:01.500000Z", "2026-12-07T09:14:02.500000Z"}


def test_a_bad_option_exits_2_naming_it(recording: Path) -> None:
    _, errors, code = stdout_of(recording, since="yesterday")
    assert code == 2 and "--since" in errors[0]
    _, errors, code = stdout_of(recording, speed=0.0)
    assert code == 2 and "--speed" in errors[0]


async def test_speed_paces_at_n_times_the_recorded_time(
    recording: Path, autojump_clock: trio.abc.Clock
) -> None:
    written: list[float] = []

    class Timed(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            written.append(trio.current_time())
            return super().write(data)

    out = Timed()
    await stdout_paced(replay(open_files([str(recording)], print)), None, out, 2.0)
    start = written[0]
    # four batches a second apart, then the event a second later: half that at 2x
    assert [round(t - start, 6) for t in written] == [0.0, 0.5, 1.0, 1.5, 2.0]


async def test_the_socket_serves_a_subscriber_what_stdout_prints(recording: Path) -> None:
    expected = io.BytesIO()
    to_stdout(replay(open_files([str(recording)], print)), None, expected)
    path = str(recording.parent / "replay.sock")
    received = b""
    serving = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(to_socket, replay(open_files([str(recording)], print)), None, path, 1000.0,
                           lambda _: serving.set())
        with trio.fail_after(10):
            await serving.wait()
            stream = await trio.open_unix_socket(path)
            await stream.send_all(b"{}\n")
            while data := await stream.receive_some(65536):
                received += data
    assert received == expected.getvalue()


async def test_nats_gets_every_record_as_the_sink_publishes_live(recording: Path, tmp_path: Path) -> None:
    from nats_server import nats_server_fixture
    from test_nats_sink import read_stream

    for server in nats_server_fixture(tmp_path):
        with trio.fail_after(20):
            await to_nats(replay(open_files([str(recording)], print)), None, server.url, float("inf"))
        stored = await trio.to_thread.run_sync(read_stream, server.url)
        expected = io.BytesIO()
        to_stdout(replay(open_files([str(recording)], print)), None, expected)
        records = [line + b"\n" for line in expected.getvalue().splitlines() if b'"type"' not in line]
        assert [payload for _, _, payload in stored] == records
        assert stored[0][0] == "feedd.binance.trade.BTCUSDT"
