"""The recorder on its own: buffer policy, write errors, rotation, max_bytes, truncated tails,
and the round trip through replay that gives back the live records."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from feedd.codec import encode_record
from feedd.exchanges import make_venue
from feedd.model import Disconnected, MarketData
from feedd.record import format as fmt
from feedd.record.reader import RecordingFile
from feedd.record.replay import open_files, replay
from feedd.record.writer import RETRY_AFTER, Recorder

AT = datetime(2026, 12, 7, 9, 14, 0, 123456, tzinfo=UTC)
TOPICS = ["btcusdt@trade"]


def trade(number: int, at: datetime = AT) -> str:
    ms = int(at.timestamp() * 1000)
    data = {"e": "trade", "E": ms, "s": "BTCUSDT", "t": number, "p": "58001.03", "q": "0.5", "T": ms,
            "m": True}
    return orjson.dumps({"stream": "btcusdt@trade", "data": data}).decode()


def lines_of(path: str) -> list[dict[str, Any]]:
    return list(RecordingFile(path).lines())


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder(str(tmp_path / "rec"), buffer=3)
    yield rec


def binance(recorder: Recorder) -> Any:
    conn = recorder.connection(make_venue("binance"), "binance/stream#1", "ws://sim/stream")
    assert conn is not None
    recorder.known("binance", ["BTCUSDT"], {})
    return conn


def files(recorder: Recorder) -> list[str]:
    return sorted(str(p) for p in Path(recorder.directory).rglob("*.zst"))


def test_a_batch_beyond_the_buffer_is_dropped_whole_counted_and_marked_where_it_was(
    recorder: Recorder,
) -> None:
    conn = binance(recorder)
    attempt = conn.connected(TOPICS, ['{"method":"SUBSCRIBE"}'])
    conn.received(attempt, AT, [trade(1), trade(2)])
    conn.received(attempt, AT, [trade(3), trade(4)])  # 2 + 2 > 3: dropped, newest first
    recorder.write_out(0.0)
    conn.received(attempt, AT, [trade(5)])
    recorder.close(100.0)
    assert recorder.dropped == 2 and recorder.frames == 3
    [path] = files(recorder)
    kinds = [next(k for k in ("known", "connect", "f", "dropped") if k in line) for line in lines_of(path)]
    assert kinds == ["known", "connect", "f", "f", "dropped", "f"]
    assert [line["dropped"] for line in lines_of(path) if "dropped" in line] == [2]


class FullDisk:
    """A file whose every write fails as a full disk does."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        pass


def test_a_full_disk_is_counted_logged_once_and_never_reaches_the_tap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disks: list[FullDisk] = []

    def opener(path: str) -> Any:
        disks.append(FullDisk())
        return disks[-1]

    rec = Recorder(str(tmp_path / "rec"), opener=opener)
    conn = binance(rec)
    attempt = conn.connected(TOPICS, [])
    with caplog.at_level(logging.ERROR, logger="feedd.record.writer"):
        for round_ in range(3):
            now = round_ * (RETRY_AFTER + 2)
            for n in range(10):
                conn.received(attempt, AT, [trade(n)])  # never raises, never blocks
            rec.write_out(now)
            rec.write_out(now + 1.5)  # the flush is due: the write fails
    assert rec.errors == 3 and rec.dropped == 30 and rec.frames == 0
    assert "No space left on device" in (rec.last_error or "")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "the feed goes on" in errors[0].getMessage()


def test_dev_full_is_a_write_error_like_any_other(tmp_path: Path) -> None:
    rec = Recorder(str(tmp_path / "rec"),
                   opener=lambda path: open("/dev/full", "wb", buffering=0))  # noqa: SIM115
    conn = binance(rec)
    attempt = conn.connected(TOPICS, [])
    conn.received(attempt, AT, [trade(1)])
    rec.close(100.0)
    assert rec.errors == 1 and rec.dropped == 1 and "No space left" in (rec.last_error or "")


def test_writing_resumes_in_a_new_file_once_the_disk_takes_writes_again(tmp_path: Path) -> None:
    failing = [True]

    def opener(path: str) -> Any:
        if failing[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return open(path, "xb", buffering=0)

    rec = Recorder(str(tmp_path / "rec"), opener=opener)
    conn = binance(rec)
    attempt = conn.connected(TOPICS, [])
    conn.received(attempt, AT, [trade(1)])
    rec.write_out(2.0)
    failing[0] = False
    conn.received(attempt, AT + timedelta(seconds=1), [trade(2)])
    rec.write_out(2.0 + RETRY_AFTER)
    rec.close(100.0)
    [path] = files(rec)
    header = RecordingFile(path).header
    assert header["attempts"] == {"1": TOPICS}  # the session's topics, though its connect was lost
    out = list(replay(open_files([path], print)))
    assert [r.trade_id for _, batch in out for r in batch] == ["2"]  # type: ignore[union-attr]


def test_rotation_closes_the_file_and_the_next_part_carries_on_the_session(recorder: Recorder) -> None:
    recorder.rotate = 10.0
    conn = binance(recorder)
    attempt = conn.connected(TOPICS, [])
    conn.received(attempt, AT, [trade(1)])
    recorder.write_out(0.0)
    recorder.write_out(11.0)  # due: finished and closed
    assert conn.file is None and recorder.files == 1
    conn.received(attempt, AT + timedelta(seconds=11), [trade(2)])
    conn.closed(attempt, "test over")
    recorder.close(100.0)
    first, second = files(recorder)
    assert RecordingFile(second).header["part"] == 2
    assert RecordingFile(second).header["attempts"] == {"1": TOPICS}
    assert RecordingFile(second).header["run"] == RecordingFile(first).header["run"]
    out = list(replay(open_files([first, second], print)))
    assert [r.trade_id for _, batch in out for r in batch] == ["1", "2"]  # type: ignore[union-attr]


def test_max_bytes_deletes_the_oldest_files_first(tmp_path: Path) -> None:
    old = tmp_path / "rec" / "binance"
    old.mkdir(parents=True)
    (old / "binance_stream_1.20260101T000000.000000Z.jsonl.zst").write_bytes(b"x" * 5000)
    rec = Recorder(str(tmp_path / "rec"), max_bytes=6000, rotate=1.0)
    rec._scan()
    conn = binance(rec)
    attempt = conn.connected(TOPICS, [])
    for second in range(3):
        conn.received(attempt, AT + timedelta(seconds=second), [trade(n) for n in range(200)])
        rec.write_out(second * 2.0)
    rec.close(100.0)
    assert not (old / "binance_stream_1.20260101T000000.000000Z.jsonl.zst").exists()
    assert rec.deleted >= 1
    kept = sum(p.stat().st_size for p in (tmp_path / "rec").rglob("*.zst"))
    assert kept <= 6000


def test_replay_gives_the_record_live_decoding_gave_with_the_same_received_at(recorder: Recorder) -> None:
    conn = binance(recorder)
    attempt = conn.connected(TOPICS, [])
    frames = [trade(7), trade(8)]
    conn.received(attempt, AT, frames)
    event = Disconnected("binance", ("BTCUSDT",), AT + timedelta(seconds=2), "stale feed")
    conn.event(event)
    recorder.close(100.0)
    live_session = make_venue("binance").new_session()
    live_session.subscribe(TOPICS)
    live = [e for f in frames for e in live_session.decode(f, AT) if isinstance(e, MarketData)]
    out = list(replay(open_files(files(recorder), print)))
    assert out[0] == (fmt.ns_of(AT), live)
    assert [encode_record(r) for r in out[0][1]] == [encode_record(r) for r in live]  # type: ignore[union-attr]
    assert out[1] == (out[1][0], event)


def test_a_truncated_tail_is_skipped_and_named_and_what_came_before_is_replayed(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path / "rec"))
    conn = binance(recorder)
    attempt = conn.connected(TOPICS, [])
    conn.received(attempt, AT, [trade(1)])
    recorder.write_out(0.0)
    recorder.write_out(1.5)  # flushed: readable from here on
    conn.received(attempt, AT + timedelta(seconds=1), [trade(n) for n in range(2, 400)])
    recorder.write_out(3.0)
    [path] = files(recorder)
    Path(path).write_bytes(Path(path).read_bytes()[:-20])  # a crash mid-write
    warnings: list[str] = []
    out = list(replay(open_files([path], warnings.append), warn=warnings.append))
    ids = [r.trade_id for _, batch in out for r in batch]  # type: ignore[union-attr]
    assert ids[0] == "1" and len(ids) < 399
    assert len(warnings) == 1 and path in warnings[0] and "truncated" in warnings[0]


def test_an_unrecorded_venue_gets_no_tap(tmp_path: Path) -> None:
    rec = Recorder(str(tmp_path), venues=["coinbase"])
    assert rec.connection(make_venue("binance"), "binance/stream#1", "ws://x") is None
    assert rec.connection(make_venue("coinbase"), "coinbase/stream#1", "ws://x") is not None


def test_a_connection_gone_is_let_go_at_its_rotation_and_taken_back_when_it_records_again(
    recorder: Recorder,
) -> None:
    recorder.rotate = 10.0
    conn = binance(recorder)
    attempt = conn.connected(TOPICS, [])
    conn.received(attempt, AT, [trade(1)])
    conn.closed(attempt, "shard closed")
    recorder.write_out(0.0)
    recorder.write_out(11.0)  # rotated: no file, no attempt
    recorder.write_out(12.0)
    assert conn not in recorder.connections
    again = conn.connected(TOPICS, [])
    conn.received(again, AT + timedelta(seconds=12), [trade(2)])
    recorder.write_out(13.0)
    assert conn in recorder.connections and conn.file is not None
    recorder.close(14.0)
    assert len(files(recorder)) == 2 and recorder.frames == 2
