"""End to end: the simulators' live traffic recorded by the daemon, then ``feedd replay`` gives
back, byte for byte, what the Unix socket carried."""

from __future__ import annotations

import errno
import io
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd.cli.replay import run_replay
from feedd.record import writer
from feedd.sim import BinanceSimulator, BybitSimulator, CoinbaseSimulator

TIMEOUT = 30
RECORDS = 600


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-r-") as path:
        yield path


def replayed(paths: list[str], *options: str) -> tuple[bytes, str, int]:
    out = io.BytesIO()
    errors: list[str] = []
    args = {"venues": [], "symbols": [], "kinds": [], "since": None, "until": None}
    code = run_replay(paths, **args, speed=None, socket=None, nats=None, out=out, err=errors.append)
    return out.getvalue(), "\n".join(errors), code


async def record_live(workdir: Path, compress: str = "zstd", *extra: str, records: int = RECORDS) -> bytes:
    """Run the daemon with a recorder against three venues' simulators; everything one Unix
    subscriber was sent, from its first line to the daemon's stop (``extra``: lines for each
    venue's table)."""
    coinbase, bybit = CoinbaseSimulator(speed=20.0), BybitSimulator(speed=20.0)
    spot = BinanceSimulator(speed=20.0)
    async with serving(coinbase, bybit, spot):
        config = load_text(
            workdir,
            FAST_FEED
            + f'\n[record]\ndir = "rec"\ncompress = "{compress}"\n'
            + venue_section("coinbase", coinbase.ws_url, coinbase.rest_url, ("BTC-USD", "ETH-USD"), *extra)
            + venue_section("binance", spot.ws_url, spot.rest_url, ("BTCUSDT", "ETHUSDT"), *extra)
            + venue_section("bybit", bybit.endpoint("spot"), bybit.rest_url, ("BTCUSDT",), *extra),
        )
        received = b""
        async with running(config) as daemon:
            stream = await trio.open_unix_socket(daemon.config.unix.path)
            await stream.send_all(b"{}\n")
            with trio.fail_after(TIMEOUT):
                while received.count(b"\n") < records:
                    received += await stream.receive_some(65536)
        # the daemon stopped: the publisher wrote what it held, then closed
        with trio.fail_after(TIMEOUT):
            while data := await stream.receive_some(65536):
                received += data
    return received


def the_recording_matches(received: bytes, replay_out: bytes) -> None:
    lines = replay_out.splitlines(keepends=True)
    first = received.splitlines(keepends=True)[0]
    assert first in lines, "the socket's first line is not among the replayed ones"
    start = lines.index(first)
    assert b"".join(lines[start:]) == received  # byte for byte, to the daemon's stop
    assert received.count(b"\n") >= RECORDS
    assert received.count(b'"exchange":"coinbase"') and received.count(b'"exchange":"binance"')


async def test_replay_prints_byte_for_byte_what_the_socket_carried_live(workdir: Path) -> None:
    received = await record_live(workdir)
    out, errors, code = replayed([str(workdir / "rec")])
    assert code == 0, errors
    assert errors == ""
    the_recording_matches(received, out)


async def test_replay_reproduces_the_records_of_rotations_with_their_overlap(workdir: Path) -> None:
    # every connection replaced make-before-break every second: the socket had each record once
    received = await record_live(workdir, "zstd", "rotate_after = 1.0", records=3 * RECORDS)
    out, errors, code = replayed([str(workdir / "rec")])
    assert code == 0 and errors == ""
    assert b'"overlap":"switch"' in b"".join(
        decompressed(p) for p in (workdir / "rec").rglob("*.zst"))
    the_recording_matches(received, out)


async def test_replay_reproduces_quotes_and_the_tickers_that_share_their_stream(workdir: Path) -> None:
    # Coinbase's ticker stream carries both kinds, Binance's bookTicker only quotes here: which
    # records a frame gives depends on the channels subscribed, which the recording keeps
    received = await record_live(workdir, "zstd", 'channels = ["trades", "quotes"]')
    out, errors, code = replayed([str(workdir / "rec")])
    assert code == 0 and errors == ""
    assert b'"kind":"quote"' in received and b'"kind":"ticker"' not in received
    the_recording_matches(received, out)


def decompressed(path: Path) -> bytes:
    import zstandard

    with path.open("rb") as handle:
        return zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).read()


async def test_a_gzip_recording_replays_the_same(workdir: Path) -> None:
    received = await record_live(workdir, compress="gzip")
    assert list((workdir / "rec").rglob("*.jsonl.gz"))
    out, errors, code = replayed([str(workdir / "rec")])
    assert code == 0 and errors == ""
    the_recording_matches(received, out)


async def test_the_command_line_and_zstdcat_read_the_recording(workdir: Path) -> None:
    received = await record_live(workdir)
    done = await trio.run_process([sys.executable, "-m", "feedd", "replay", str(workdir / "rec")],
                                  capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr
    the_recording_matches(received, done.stdout)
    some = sorted((workdir / "rec").rglob("*.zst"))[0]
    zstdcat = await trio.run_process(["zstdcat", str(some)], capture_stdout=True)
    head = zstdcat.stdout.splitlines()[0]
    assert head.startswith(b'{"feedd_recording":1')


async def test_a_damaged_file_is_named_and_skipped_and_the_rest_replayed(workdir: Path) -> None:
    received = await record_live(workdir)
    files = sorted((workdir / "rec").rglob("*.zst"))
    coinbase = [f for f in files if f.parent.name == "coinbase"]
    assert coinbase
    for file in coinbase:
        file.write_bytes(b"\x00garbage" * 100)
    out, errors, code = replayed([str(workdir / "rec")])
    assert code == 0
    for file in coinbase:
        assert str(file) in errors and "skipped" in errors
    assert b'"exchange":"coinbase"' not in out and b'"exchange":"binance"' in out
    # what the other venues sent is there, in the order the socket had it
    others = b"".join(line for line in received.splitlines(keepends=True) if b'"coinbase"' not in line)
    lines = out.splitlines(keepends=True)
    start = lines.index(others.splitlines(keepends=True)[0])
    assert b"".join(lines[start:]) == others


def test_nothing_readable_exits_1_naming_each_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.zst"
    bad.write_bytes(b"not a recording\n")
    out, errors, code = replayed([str(bad), str(tmp_path / "missing.jsonl")])
    assert code == 1 and out == b""
    assert str(bad) in errors and "missing.jsonl" in errors and "nothing could be read" in errors


class FullDisk:
    """A recording file on a full disk: every write fails."""

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        pass


def no_space(path: str) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("opener", [no_space, lambda path: FullDisk()], ids=["open-fails", "writes-fail"])
async def test_a_full_disk_and_a_full_recorder_buffer_never_hold_up_the_socket(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, opener: Any
) -> None:
    monkeypatch.setattr(writer, "_open", opener)
    spot = BinanceSimulator(speed=20.0)
    async with serving(spot):
        config = load_text(workdir, FAST_FEED + '\n[record]\ndir = "rec"\nbuffer = 1\n'
                           + venue_section("binance", spot.ws_url, spot.rest_url, ("BTCUSDT", "ETHUSDT")))
        async with running(config) as daemon:
            client = await Subscriber.connect(daemon.config.unix.path)
            with trio.fail_after(TIMEOUT):
                records = [await client.record() for _ in range(RECORDS)]
                late = [datetime.now(UTC) - r.received_at for r in records[-50:]]
                recorder = daemon.recorder
                assert recorder is not None
                # what it holds now, written at once (the next tick would, a flush due)
                recorder.write_out(trio.current_time() + 60)
    assert max(late) < timedelta(seconds=2)  # delivered as they came, the recorder failing
    assert recorder.frames == 0 and "No space left on device" in (recorder.last_error or "")
    assert (await daemon.get_connection_status())["sinks"]["recorder"]["dropped"] == recorder.dropped
    metrics, _ = daemon.metrics.render()
    assert f"feedd_record_dropped_frames_total {float(recorder.dropped)}".encode() in metrics
    assert f"feedd_record_errors_total {float(recorder.errors)}".encode() in metrics
