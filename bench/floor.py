"""The floor: the least a trio daemon can do per record on the benchmark's wire (a benchmark).

    .venv/bin/python bench/compare.py --feedd bench/floor.sh --only feedd ...

Speaks just enough of ``feedd run --config PATH`` for compare.py to run it in feedd's place:
it reads the ``[unix] path`` and the one venue's ``url`` from the config, serves one Unix-socket
subscriber, subscribes to ``btcusdt@trade``, and for every frame makes the record's JSON line
(``orjson.loads``, two floats, ``orjson.dumps`` of the line's fields) and writes each read's
lines with one non-blocking write, on feedd's own transport (``feedd.wire``: TLS and
WebSocket driven by the reading task, one socket read per wakeup). No validation, no
``MarketData``, no hub, no status, metrics, watchdog, backfill or HTTP: what is left is trio's
run loop, one wakeup per socket read, and the per-record minimum of decrypting, parsing and
encoding. So its CPU per record, beside feedd's and cryptofeed's in one run, says how much of
feedd's cost is the daemon's own work and how much is the floor any trio program pays.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tomllib
from datetime import UTC, datetime
from typing import Any

import orjson
import trio

from feedd.wire.transport import open_native

_OPTS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


async def serve(config: dict[str, Any]) -> None:
    path = config["unix"]["path"]
    (venue,) = config["exchanges"].values()
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(path)
    listener.listen(1)
    subscriber, _ = await listener.accept()
    await subscriber.recv(4096)  # its filter line
    fd = subscriber.fileno()
    async with open_native(venue["url"], connect_timeout=10.0) as transport:
        await transport.send('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}')
        loads = orjson.loads
        dumps = orjson.dumps
        while True:
            batch = await transport.receive_batch()
            received_at = datetime.now(UTC)
            lines = []
            for frame in batch:
                data = loads(frame).get("data")
                if data is None:
                    continue
                lines.append(dumps({
                    "exchange": "binance", "symbol": data["s"], "kind": "trade",
                    "price": float(data["p"]), "volume": float(data["q"]),
                    "timestamp": datetime.fromtimestamp(data["T"] / 1000, UTC),
                    "received_at": received_at, "side": "sell" if data["m"] else "buy",
                    "trade_id": str(data["t"]),
                }, option=_OPTS))
            if lines:
                payload = b"".join(lines)
                while True:
                    with contextlib.suppress(BlockingIOError):  # full: wait below
                        payload = payload[os.write(fd, payload):]
                    if not payload:
                        break
                    await trio.lowlevel.wait_writable(fd)


def main() -> None:
    args = sys.argv[1:]
    if args[:2] != ["run", "--config"] or len(args) != 3:
        sys.exit("usage: floor.py run --config PATH")
    with open(args[2], "rb") as file:
        config = tomllib.load(file)
    trio.run(serve, config)


if __name__ == "__main__":
    main()
