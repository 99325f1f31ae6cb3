"""What a task hop costs on the way from the socket to a subscriber, per batch and per record.

    .venv/bin/python bench/hops.py

One trio process; each figure is the best of five runs (the least disturbed on a shared
machine). A batch of B records goes through:

- ``call``: a plain function call (the floor: what the work costs without a hop);
- ``channel hop``: ``send_nowait`` into a memory channel, a second task wakes and takes it (the
  reader -> hub hop);
- ``event hop``: an ``Event`` wakes a writer task which then awaits a checkpoint, as a trio
  ``send_all`` does (the hub -> subscriber-writer hop feedd had before);
- ``unix write``: one non-blocking write of the batch's lines to a Unix socket whose reader (a
  child process) is waiting for it: the system call every subscriber write costs, the wakeup of
  the reader's process included.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import trio
import trio.testing

LINE = b'{"exchange":"binance","symbol":"BTCUSDT","kind":"trade","price":61012.34,"volume":0.00123,' \
       b'"timestamp":"2026-11-25T07:19:20.708000Z","received_at":"2026-11-25T07:19:20.708208Z",' \
       b'"bid":null,"ask":null,"high_24h":null,"low_24h":null,"change_24h":null,"side":"sell",' \
       b'"trade_id":"1795591160708162"}\n'
ROUNDS = 20_000


def best(measure: Callable[[], Awaitable[float]]) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        return min([await measure() for _ in range(5)])
    return run


async def call(batch: list[bytes]) -> float:
    sink: list[list[bytes]] = []
    take = sink.append
    start = time.perf_counter()
    for _ in range(ROUNDS):
        take(batch)
        sink.clear()
        await trio.lowlevel.checkpoint()  # the reader's own pass: there in every variant
    return (time.perf_counter() - start) / ROUNDS * 1e6


async def channel_hop(batch: list[bytes]) -> float:
    send, receive = trio.open_memory_channel[list[bytes]](1024)
    done = trio.Event()

    async def hub() -> None:
        count = 0
        async for _ in receive:
            count += 1
            if count == ROUNDS:
                done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub)
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        for _ in range(ROUNDS):
            send.send_nowait(batch)
            await trio.lowlevel.checkpoint()
        await done.wait()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed / ROUNDS * 1e6


async def event_hop(batch: list[bytes]) -> float:
    pending: list[list[bytes]] = []
    wakeup = trio.Event()
    done = trio.Event()

    async def writer() -> None:
        nonlocal wakeup
        count = 0
        while True:
            await wakeup.wait()
            wakeup = trio.Event()
            count += len(pending)
            pending.clear()
            await trio.lowlevel.checkpoint()  # send_all's own checkpoint after its write
            if count >= ROUNDS:
                done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        for _ in range(ROUNDS):
            pending.append(batch)
            wakeup.set()
            await trio.lowlevel.checkpoint()
        await done.wait()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed / ROUNDS * 1e6


def unix_write(batch: list[bytes]) -> float:
    """Plain Python (no trio): the system call alone, on a socket whose reader sleeps in recv."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader = subprocess.Popen(
        [sys.executable, "-c", "import socket,sys\n"
         "s = socket.socket(fileno=int(sys.argv[1]))\n"
         "while s.recv(1 << 20): pass", str(theirs.fileno())],
        pass_fds=[theirs.fileno()])
    theirs.close()
    ours.setblocking(False)
    payload = b"".join(batch)
    fd = ours.fileno()
    rounds = ROUNDS // 4
    total = 0.0
    for _ in range(rounds):
        time.sleep(50e-6)  # the reader drains and sleeps in recv again, as a paced subscriber
        start = time.perf_counter()
        with contextlib.suppress(BlockingIOError):
            os.write(fd, payload)
        total += time.perf_counter() - start
    ours.close()
    reader.wait()
    return total / rounds * 1e6


async def main() -> None:
    print(f"{'':14}{'batch':>6}{'µs/batch':>10}{'µs/record':>11}{'adds µs/batch':>15}")
    for size in (1, 10, 100):
        batch = [LINE] * size
        floor = await best(lambda b=batch: call(b))()
        print(f"{'call (floor)':14}{size:6}{floor:10.2f}{floor / size:11.3f}{'':>15}")
        for name, measure in (("channel hop", channel_hop), ("event hop", event_hop)):
            per_batch = await best(lambda b=batch, m=measure: m(b))()
            print(f"{name:14}{size:6}{per_batch:10.2f}{per_batch / size:11.3f}{per_batch - floor:15.2f}")
        write = min(unix_write(batch) for _ in range(5))
        print(f"{'unix write':14}{size:6}{write:10.2f}{write / size:11.3f}{write:15.2f}")


if __name__ == "__main__":
    trio.run(main)
