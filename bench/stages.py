"""What each stage of the hot path costs per record, in one process, without the scheduler.

    .venv/bin/python bench/stages.py [--batch 1,5,100]

The frames are bench/wire.py's Binance ``@trade`` frames, one per TLS record as exchanges send
them, encrypted by an ``ssl.SSLObject`` server over memory BIOs. Each stage runs on batches of
``--batch`` frames (at 5k frames/s paced a wakeup carries ~5, in a flood hundreds), and the
figure is the best of several rounds in µs per record (the least disturbed on a shared
machine): TLS decrypt (``feedd.wire.tls``), WebSocket framing (``feedd.wire.wsframe``), the
Binance decode with ``MarketData`` construction (``trade_record`` alone beside it), validation,
the JSON line (``hub._line``) and one non-blocking write of the batch's lines to a Unix socket.
What this leaves out is the wakeup itself (epoll, the run loop, the reader's own loop): the
daemon's CPU per record from compare.py minus the sum here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trustme

sys.path.insert(0, str(Path(__file__).parent))
from wire import TRADES, trade_frame

from feedd.exchanges import binance
from feedd.exchanges.fields import QuoteCache
from feedd.fanout.hub import _line
from feedd.feed.validate import Validator
from feedd.model import trade_record
from feedd.wire import wsframe
from feedd.wire.tls import TLSClient

ROUNDS = 7


def tls_pair() -> tuple[TLSClient, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client = TLSClient(client_context, "127.0.0.1")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(incoming, outgoing, server_side=True)
    while not client.handshake():
        incoming.write(client.data_to_send())
        with contextlib.suppress(ssl.SSLWantReadError):
            server.do_handshake()
        client.receive_data(outgoing.read())
    incoming.write(client.data_to_send())
    with contextlib.suppress(ssl.SSLWantReadError):
        server.do_handshake()
    client.receive_data(outgoing.read())
    client.read()  # session tickets
    return client, server, incoming, outgoing


def best(run: Callable[[], float]) -> float:
    return min(run() for _ in range(ROUNDS))


def measure(batch: int, frames: int) -> dict[str, float]:
    client, server, _, outgoing = tls_pair()
    template = TRADES["trade"]
    wire_frames = [trade_frame(template) for _ in range(frames)]
    # one TLS record per frame, ciphertext grouped into batches as one socket read brings them
    reads: list[bytes] = []
    for start in range(0, frames, batch):
        for frame in wire_frames[start : start + batch]:
            server.write(frame)
        reads.append(outgoing.read())
    session = binance.BinanceSession("binance", QuoteCache())
    validator = Validator({"BTCUSDT"})
    out: dict[str, float] = {}
    plaintexts: list[bytes] = []
    messages: list[list[Any]] = []

    def tls() -> float:
        # a fresh client per round cannot be had cheaply; decrypting needs the records in
        # sequence, so the round is timed once, over every read (see main: one round)
        t0 = time.perf_counter()
        for data in reads:
            client.receive_data(data)
            plaintexts.append(client.read().data)
        return time.perf_counter() - t0

    out["tls decrypt"] = tls() / frames * 1e6

    def ws() -> float:
        messages.clear()
        t0 = time.perf_counter()
        for data in plaintexts:
            protocol = wsframe.ClientProtocol()
            protocol.receive_data(data)
            messages.append(protocol.read().messages)
        return time.perf_counter() - t0

    out["websocket frames"] = best(ws) / frames * 1e6
    received_at = datetime.now(UTC)
    records: list[Any] = []

    def decode() -> float:
        records.clear()
        t0 = time.perf_counter()
        for batch_messages in messages:
            for message in batch_messages:
                records.extend(session.decode(message, received_at))
        return time.perf_counter() - t0

    out["decode (incl. MarketData)"] = best(decode) / frames * 1e6
    sample = records[0]

    def construct() -> float:
        args = (sample.exchange, sample.symbol, sample.price, sample.volume, sample.timestamp,
                sample.received_at, sample.side, sample.trade_id)
        t0 = time.perf_counter()
        for _ in range(frames):
            trade_record(*args)
        return time.perf_counter() - t0

    out["  of which MarketData"] = best(construct) / frames * 1e6

    def validate() -> float:
        reason = validator.reason
        t0 = time.perf_counter()
        for record in records:
            reason(record)
        return time.perf_counter() - t0

    out["validate"] = best(validate) / frames * 1e6

    def encode() -> float:
        t0 = time.perf_counter()
        for start in range(0, frames, batch):
            [_line(r) for r in records[start : start + batch]]
        return time.perf_counter() - t0

    out["JSON line"] = best(encode) / frames * 1e6
    lines = [_line(r) for r in records]
    writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    writer.setblocking(False)
    reader.setblocking(False)

    def write() -> float:
        fd = writer.fileno()
        total = 0.0
        for start in range(0, frames, batch):
            payload = b"".join(lines[start : start + batch])
            t0 = time.perf_counter()
            os.write(fd, payload)
            total += time.perf_counter() - t0
            reader.recv(1 << 20)
        return total

    out["join + unix write"] = best(write) / frames * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", default="1,5,100", help="frames per batch (comma-separated)")
    parser.add_argument("--frames", type=int, default=20_000)
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch.split(",")]
    results = {b: measure(b, args.frames) for b in sizes}
    stages = list(results[sizes[0]])
    print("| stage, µs per record | " + " | ".join(f"{b} frame(s) a batch" for b in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(f"{results[b][stage]:.2f}" for b in sizes) + " |")
    total = {b: sum(v for k, v in results[b].items() if not k.startswith(" ")) for b in sizes}
    print("| sum | " + " | ".join(f"{total[b]:.2f}" for b in sizes) + " |")


if __name__ == "__main__":
    main()
