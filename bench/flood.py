"""Throughput of the whole hot path: simulator flood over TLS → daemon → one Unix subscriber.

feedd alone, against its own simulator (one frame per TLS record unless --frames-per-write says
otherwise); prints records/s and the daemon's CPU time per record (user+sys from /proc). For
feedd beside cryptofeed, in one run, use compare.py. A benchmark, not a test: run it a few
times and read the spread.

    .venv/bin/python bench/flood.py [--seconds 10] [--symbols 2] [--frames-per-write 1]
                                    [--transport native|trio-websocket]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from stack import SYMBOLS, cpu_seconds, rss_mib, stack, subscribe


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--symbols", type=int, default=2, choices=range(1, len(SYMBOLS) + 1))
    parser.add_argument("--transport", default="native", choices=["native", "trio-websocket"])
    parser.add_argument("--frames-per-write", type=int, default=1,
                        help="frames per simulator write (1: one TLS record per frame, as exchanges)")
    args = parser.parse_args()

    with stack(symbols=args.symbols, flood=True, transport=args.transport,
               frames_per_write=args.frames_per_write) as running:
        client = subscribe(running.socket_path)
        buf = bytearray(1 << 20)

        def count_for(seconds: float) -> tuple[int, int]:
            records = gaps = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                n = client.recv_into(buf)
                if not n:
                    raise SystemExit("the daemon closed the socket")
                chunk = bytes(buf[:n])
                records += chunk.count(b"\n")
                gaps += chunk.count(b'"gap"')
            return records, gaps

        count_for(args.warmup)
        if os.environ.get("FEEDD_BENCH_PROFILE"):  # a py-spy profile of the daemon, for digging
            subprocess.Popen(["py-spy", "record", "-p", str(running.daemon_pid), "-d", str(int(args.seconds)),
                              "-f", "raw", "-o", os.environ["FEEDD_BENCH_PROFILE"], "-r", "200"])
        cpu_start, wall_start = cpu_seconds(running.daemon_pid), time.monotonic()
        records, gaps = count_for(args.seconds)
        cpu = cpu_seconds(running.daemon_pid) - cpu_start
        wall = time.monotonic() - wall_start
        rss = rss_mib(running.daemon_pid)
        client.close()

    rate = records / wall
    us_per_record = cpu / records * 1e6 if records else float("inf")
    print(f"symbols:                 {args.symbols} x @trade, wss (TLS) from the simulator, "
          f"{args.frames_per_write} frame(s) per write, transport {args.transport}")
    print(f"records received:        {records} in {wall:.1f} s ({gaps} gap notices)")
    print(f"throughput:              {rate:,.0f} records/s")
    print(f"daemon CPU:              {cpu:.2f} s = {100 * cpu / wall:.0f}% of one core, "
          f"{us_per_record:.1f} µs per record")
    print(f"daemon memory:           {rss:.0f} MiB resident at the end of the window")


if __name__ == "__main__":
    main()
