"""The recorder's cost per record, and replay's speed, in one run.

1. The simulator floods the daemon (as bench/flood.py: TLS, one frame per TLS record, @trade,
   one record per frame) twice: with no ``[record]`` table, then with one (zstd). Each prints
   the daemon's CPU time per record (user+sys from /proc); the difference is what recording
   costs the daemon, its tap and its own task together.
   Under a shared machine's noise that difference can be lost, so the recorder's own work is
   also measured in this process: the second run's frames recorded again (the tap's put, the
   lines, zstd, the writes), CPU µs per frame.
2. What the second run recorded is replayed as ``feedd replay`` does to stdout (adapters,
   validation, overlap, encoding), in this process, into /dev/null: records per CPU second on
   one core; beside it, the floor: the same frames through the same adapter, validation and
   encoding alone, from memory (what live decoding costs; replay cannot be cheaper).

A benchmark, not a test: the machine may be shared; read the spread of a few runs.

    .venv/bin/python bench/replay.py [--seconds 10] [--symbols 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from stack import SYMBOLS, cpu_seconds, stack, subscribe

from feedd.cli.replay import to_stdout
from feedd.codec import encode_record
from feedd.exchanges import make_venue
from feedd.feed.validate import Validator
from feedd.model import MarketData
from feedd.record import format as fmt
from feedd.record.replay import open_files, replay
from feedd.record.writer import Recorder


def flood(seconds: float, warmup: float, symbols: int, extra: str) -> tuple[int, float, float]:
    """(records, wall seconds, daemon CPU seconds) over the window."""
    with stack(symbols=symbols, flood=True, extra_config=extra) as running:
        client = subscribe(running.socket_path)
        buf = bytearray(1 << 20)

        def count_for(window: float) -> int:
            records = 0
            end = time.monotonic() + window
            while time.monotonic() < end:
                n = client.recv_into(buf)
                if not n:
                    raise SystemExit("the daemon closed the socket")
                records += buf[:n].count(b"\n")
            return records

        count_for(warmup)
        cpu_start, wall_start = cpu_seconds(running.daemon_pid), time.monotonic()
        records = count_for(seconds)
        cpu = cpu_seconds(running.daemon_pid) - cpu_start
        wall = time.monotonic() - wall_start
        client.close()
    return records, wall, cpu


def replay_once(folder: Path, errors: list[str]) -> tuple[int, float, float]:
    """Replay the recording to /dev/null as ``feedd replay`` does: (records, CPU s, wall s)."""
    files = open_files([str(folder)], errors.append)
    start_cpu, start_wall = time.process_time(), time.monotonic()
    counted = 0
    with open("/dev/null", "wb") as sink:

        class Counting:
            def write(self, data: bytes) -> int:
                nonlocal counted
                counted += data.count(b"\n")
                return sink.write(data)

            def flush(self) -> None:
                sink.flush()

        to_stdout(replay(files, warn=errors.append), None, Counting())  # type: ignore[arg-type]
    return counted, time.process_time() - start_cpu, time.monotonic() - start_wall


def recorded_batches(folder: Path) -> tuple[list[tuple[int, list[str]]], list[str]]:
    """Every batch of frames the recording holds, and the topics subscribed."""
    batches: list[tuple[int, list[str]]] = []
    topics: list[str] = []
    for file in open_files([str(folder)], print):
        last = -1
        for line in file.lines():
            if "connect" in line:
                topics = line["connect"]
            text = line.get("f")
            if text is None:
                continue
            if line["n"] == last:
                batches[-1][1].append(text)
            else:
                batches.append((line["t"], [text]))
                last = line["n"]
    return batches, topics


def floor(batches: list[tuple[int, list[str]]], topics: list[str]) -> tuple[int, float]:
    """(records, CPU s) of the live path alone: decode, validate, encode."""
    session = make_venue("binance").new_session()
    session.subscribe(topics)
    check = Validator({t.partition("@")[0].upper() for t in topics}).reason
    records = 0
    start = time.process_time()
    for t, frames in batches:
        at = fmt.datetime_of(t)
        out = [encode_record(e) for f in frames for e in session.decode(f, at)
               if type(e) is MarketData and check(e) is None]
        records += len(b"".join(out).splitlines())
    return records, time.process_time() - start


def recorder_cost(batches: list[tuple[int, list[str]]], topics: list[str]) -> tuple[int, float]:
    """(frames, CPU s) of recording them again: the tap's put, lines, zstd, writes."""
    folder = Path(tempfile.mkdtemp(prefix="feedd-bench-rec2-", dir="/tmp"))
    try:
        recorder = Recorder(str(folder), buffer=1 << 30)
        conn = recorder.connection(make_venue("binance"), "binance/stream#1", "wss://bench")
        assert conn is not None
        attempt = conn.connected(topics, [])
        frames = 0
        start = time.process_time()
        for index, (t, batch) in enumerate(batches):
            conn.received(attempt, fmt.datetime_of(t), batch)
            frames += len(batch)
            if index % 64 == 63:  # the recorder's task, every tick (0.2 s: many batches)
                recorder.write_out(index / 640)
        recorder.close(len(batches) / 640 + 1)
        return frames, time.process_time() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window of each flood")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--symbols", type=int, default=2, choices=range(1, len(SYMBOLS) + 1))
    parser.add_argument("--replays", type=int, default=3, help="replays of the recording (the best is shown)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="feedd-bench-rec-", dir="/tmp"))
    try:
        rows = []
        for label, extra in (("off", ""), ("on (zstd)", f'\n[record]\ndir = "{folder}"\n')):
            records, wall, cpu = flood(args.seconds, args.warmup, args.symbols, extra)
            rows.append((label, records / wall, cpu / records * 1e6, 100 * cpu / wall))
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        batches, topics = recorded_batches(folder)
        floor_records, floor_cpu = min((floor(batches, topics) for _ in range(args.replays)),
                                       key=lambda run: run[1])
        recorded_frames, recorder_cpu = min((recorder_cost(batches, topics) for _ in range(args.replays)),
                                            key=lambda run: run[1])
        errors: list[str] = []
        runs = []
        for _ in range(args.replays):
            runs.append(replay_once(folder, errors))
        counted = runs[0][0]
        replay_cpu = min(cpu for _, cpu, _ in runs)
        replay_wall = min(wall for _, _, wall in runs)
        median_cpu = sorted(cpu for _, cpu, _ in runs)[len(runs) // 2]
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"symbols: {args.symbols} x @trade, wss (TLS) from the simulator's flood; one record per frame")
    print("| recorder | socket records/s | daemon CPU µs/record | daemon CPU % of a core |")
    print("|---|---:|---:|---:|")
    for label, rate, us, share in rows:
        print(f"| {label} | {rate:,.0f} | {us:.2f} | {share:.0f}% |")
    print(f"recorder's cost, daemon on - off: {rows[1][2] - rows[0][2]:+.2f} µs of daemon CPU per record "
          "(frame)")
    print(f"recorder's own work, in process: {recorder_cpu / recorded_frames * 1e6:.2f} µs CPU per frame "
          f"({recorded_frames:,} frames in {len(batches):,} batches)")
    print(f"recording: {size / 1e6:.1f} MB on disk ({size / max(counted, 1):.1f} bytes per frame)")
    print(f"replay to stdout: {counted:,} records, best of {len(runs)}: {replay_cpu:.2f} s CPU "
          f"({replay_wall:.2f} s wall): {counted / replay_cpu:,.0f} records/s per CPU second "
          f"(median {counted / median_cpu:,.0f})")
    print(f"floor (adapter, validation, encoding from memory): {floor_records / floor_cpu:,.0f} records/s "
          f"per CPU second")
    for error in errors:
        print(f"  {error}")


if __name__ == "__main__":
    main()
