"""A benchmark subscriber (a child process of compare.py): reads records from a daemon's Unix
socket as fast as it can and measures each one's delay from the server's send time.

Every trade the benchmark server sends carries its send time (µs since the epoch, host clock)
as its quantity, which both daemons pass through (feedd as ``"volume"``, a float that
holds such an integer exactly; cryptofeed as ``"amount"``). Parsing is a regular expression
over each chunk read, so that a hundred of these processes cost the machine little next to the
daemon being measured.

    python subscriber.py connect|listen|stall PATH COUNT

``connect``: connect to feedd's socket. ``listen``: listen on PATH for cryptofeed's UDS backend.
``stall``: connect or listen (``stall-listen``) and never read. Prints one JSON line when COUNT
records arrived, or when nothing arrived for a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time

SENT_US = re.compile(rb'"(?:volume|amount)": ?(\d+)')
GAP = re.compile(rb'"dropped": ?(\d+)')
IDLE_TIMEOUT = 5.0


def open_socket(mode: str, path: str) -> socket.socket:
    if mode in ("listen", "stall-listen"):
        if os.path.exists(path):
            os.unlink(path)
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(1)
        print("ready", flush=True)
        conn, _ = server.accept()
        server.close()
        return conn
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(path)
    conn.sendall(b"{}\n")  # no filter: feedd starts at once instead of waiting for one
    print("ready", flush=True)
    return conn


def percentile(values: list[int], q: float) -> int:
    return values[min(len(values) - 1, int(q * len(values)))] if values else -1


def main() -> None:
    mode, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conn = open_socket(mode, path)
    if mode.startswith("stall"):
        sys.stdin.read()  # until the benchmark is done with us
        return
    conn.settimeout(IDLE_TIMEOUT)
    latencies: list[int] = []
    dropped = 0
    tail = b""
    first = last = 0.0
    try:
        while len(latencies) + dropped < count:
            data = conn.recv(1 << 20)
            if not data:
                break
            now_us = time.time_ns() // 1000
            last = time.perf_counter()
            if not first:
                first = last
            chunk = tail + data
            cut = chunk.rfind(b"\n") + 1 if mode == "connect" else chunk.rfind(b"}}") + 2
            chunk, tail = chunk[:cut], chunk[cut:]
            latencies += [now_us - int(t) for t in SENT_US.findall(chunk)]
            dropped += sum(int(n) for n in GAP.findall(chunk))
    except TimeoutError:
        pass
    # the first tenth is the warm-up (connections settling, caches filling)
    steady = sorted(latencies[len(latencies) // 10 :])
    print(json.dumps({
        "n": len(latencies), "dropped": dropped, "secs": last - first,
        "p50": percentile(steady, 0.5), "p99": percentile(steady, 0.99),
        "p999": percentile(steady, 0.999), "max": steady[-1] if steady else -1,
    }), flush=True)


if __name__ == "__main__":
    main()
