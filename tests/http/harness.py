"""Shared by the HTTP API tests: a Binance simulator, a daemon on it, an HTTP client, and a Unix
socket subscriber. Real sockets on the real clock; every wait is on an event and bounded."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import trio

from feedd.config import Config, load_config
from feedd.control.service import WebSocketService
from feedd.fanout.lines import decode_record
from feedd.model import MarketData
from feedd.ops.daemon import Daemon
from feedd.sim import BinanceSimulator

TIMEOUT = 15
API = "/api/v1/websocket"


@contextlib.contextmanager
def temporary_workdir() -> Iterator[Path]:
    # short: AF_UNIX paths are limited to ~107 bytes, and pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="feedd-h-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(
    workdir: Path,
    spot: BinanceSimulator,
    *,
    symbols: tuple[str, ...] = ("BTCUSDT",),
    http: str = "",
    exchange: str = "",
    rest_url: str | None = None,
    **feed: object,
) -> Config:
    settings = {"reconnect_interval": 0.05, "max_backoff": 0.5, "stale_after": 5.0} | feed
    lines = "\n".join(f"{key} = {str(value).lower() if isinstance(value, bool) else value}"
                      for key, value in settings.items())
    quoted = ", ".join(f'"{s}"' for s in symbols)
    text = f"""
[feed]
cache_dir = "cache"
{lines}

[http]
listen = "127.0.0.1:0"
{http}

[unix]
path = "feedd.sock"

[exchanges.binance]
symbols = [{quoted}]
url = "{spot.ws_url}"
rest_url = "{rest_url or spot.rest_url}"
{exchange}
"""
    path = workdir / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ={})


@asynccontextmanager
async def simulator(**options: Any) -> AsyncIterator[BinanceSimulator]:
    sim = BinanceSimulator(speed=20.0, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        yield sim
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running(
    config: Config, **options: Any
) -> AsyncIterator[tuple[WebSocketService, httpx.AsyncClient]]:
    """A daemon and an HTTP client pointed at its API; the daemon stops gracefully at the end."""
    async with trio.open_nursery() as nursery:
        daemon: WebSocketService = await nursery.start(Daemon(config, **options).run)
        try:
            async with httpx.AsyncClient(base_url=f"http://{daemon.http_address}", timeout=TIMEOUT) as client:
                yield daemon, client
        finally:
            with trio.CancelScope(shield=True):
                for subscriber in Subscriber.opened:
                    await subscriber.stream.aclose()
                Subscriber.opened.clear()
        daemon.stop()


def subscribe_body(symbol: str, channels: list[str] | None = None, exchange: str = "binance") -> bytes:
    body: dict[str, Any] = {"exchange": exchange, "symbol": symbol}
    if channels is not None:
        body["channels"] = channels
    return orjson.dumps(body)


class Subscriber:
    """A Unix-socket client reading JSON lines; :func:`running` closes it at the end."""

    opened: ClassVar[list[Subscriber]] = []

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        #: disconnect and reconnect lines read between records
        self.notices: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, path: str, filter_line: bytes = b"{}\n") -> Subscriber:
        stream = await trio.open_unix_socket(path)
        subscriber = cls(stream)
        cls.opened.append(subscriber)
        await stream.send_all(filter_line)
        return subscriber

    async def record(self) -> MarketData:
        """The next record; feed events before it go to :attr:`notices`, anything else fails."""
        while True:
            while b"\n" not in self.buffer:
                data = await self.stream.receive_some(65536)
                assert data, "the daemon closed the socket"
                self.buffer += data
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.startswith((b'{"type":"disconnect"', b'{"type":"reconnect"', b'{"type":"backfill"')):
                self.notices.append(orjson.loads(line))
                continue
            assert not line.startswith(b'{"type"'), f"a notice, not a record: {line!r}"
            return decode_record(line)

    async def until(self, predicate: Callable[[MarketData], bool], limit: int = 10_000) -> list[MarketData]:
        """Records read until one satisfies ``predicate`` (included)."""
        seen: list[MarketData] = []
        while True:
            record = await self.record()
            seen.append(record)
            if predicate(record):
                return seen
            assert len(seen) < limit, "predicate never held"


class GatedRest:
    """An instrument-list endpoint that holds every request until :attr:`release` is set, then
    answers with ``body`` (the simulator's own list)."""

    def __init__(self, body: object) -> None:
        self.body = orjson.dumps(body)
        self.requested = trio.Event()
        self.release = trio.Event()
        self.url = ""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._answer, 0, host="127.0.0.1"))
            host, port = listeners[0].socket.getsockname()[:2]
            self.url = f"http://{host}:{port}"
            task_status.started()

    async def _answer(self, stream: trio.SocketStream) -> None:
        request = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while b"\r\n\r\n" not in request:
                data = await stream.receive_some(4096)
                if not data:
                    return
                request += data
            self.requested.set()
            await self.release.wait()
            head = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(self.body)}\r\nconnection: close\r\n\r\n")
            await stream.send_all(head.encode() + self.body)
