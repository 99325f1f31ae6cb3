"""Delay at a realistic rate: recorded trades replayed faster than life, over TLS, to a subscriber.

For each record the subscriber computes, on the same host clock, how long ago the daemon read its
frame off the socket (``received_at``): the delay feedd adds (decode, validate, hub, Unix socket).
The trade's own ``timestamp`` is no yardstick here: the simulator keeps the recorded gap between
trade time and event time, which is the exchange's, not ours. Prints percentiles. A benchmark,
not a test.

    .venv/bin/python bench/latency.py [--seconds 10] [--speed 20] [--symbols 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from stack import SYMBOLS, stack, subscribe


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    pick = [values[min(len(values) - 1, int(q * len(values)))] for q in (0.5, 0.9, 0.99)]
    return "  ".join(f"p{q} {v * 1e3:7.3f} ms" for q, v in zip((50, 90, 99), pick, strict=True)) + (
        f"  max {values[-1] * 1e3:7.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--speed", type=float, default=20.0, help="replay speed (1 = as recorded)")
    parser.add_argument("--symbols", type=int, default=2, choices=range(1, len(SYMBOLS) + 1))
    parser.add_argument("--transport", default="native", choices=["native", "trio-websocket"])
    args = parser.parse_args()

    in_daemon: list[float] = []
    with stack(symbols=args.symbols, flood=False, speed=args.speed, transport=args.transport) as running:
        client = subscribe(running.socket_path)
        pending = b""
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            data = client.recv(1 << 20)
            now = datetime.now(UTC)
            if not data:
                raise SystemExit("the daemon closed the socket")
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                record = orjson.loads(line)
                if "received_at" not in record:
                    continue
                received = datetime.fromisoformat(record["received_at"])
                in_daemon.append((now - received).total_seconds())
        client.close()

    print(f"{len(in_daemon)} records in {args.seconds:.0f} s "
          f"({len(in_daemon) / args.seconds:,.0f}/s), transport {args.transport}")
    print(f"socket read → subscriber: {percentiles(in_daemon)}")


if __name__ == "__main__":
    main()
