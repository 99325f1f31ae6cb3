"""What the end-to-end tests share: a running daemon, serving simulators, a Unix-socket subscriber.

Real sockets on the real clock, with short intervals: every wait is on an event (a record read, a
simulator state change), bounded by ``fail_after`` in the tests so a regression fails instead of
hanging.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import trio

from feedd.config import Config, load_config
from feedd.control.service import WebSocketService
from feedd.fanout.lines import decode_record
from feedd.model import MarketData
from feedd.ops.daemon import Daemon

#: the [feed] and [unix] part of an end-to-end config: fast reconnects, a short stale bound
FAST_FEED = """
[feed]
cache_dir = "cache"
reconnect_interval = 0.05
max_backoff = 0.5
stale_after = 5.0

[unix]
path = "feedd.sock"

[http]
listen = "127.0.0.1:0"
"""


@contextmanager
def short_tempdir(prefix: str) -> Iterator[Path]:
    # short: AF_UNIX paths are limited to ~107 bytes, and pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def venue_section(venue: str, url: str, rest_url: str, symbols: tuple[str, ...], *extra: str) -> str:
    """One ``[exchanges.<venue>]`` table pointing at a simulator."""
    listed = ", ".join(f'"{s}"' for s in symbols)
    lines = "\n".join(extra)
    return f'\n[exchanges.{venue}]\nsymbols = [{listed}]\nurl = "{url}"\nrest_url = "{rest_url}"\n{lines}\n'


def load_text(workdir: Path, text: str) -> Config:
    path = workdir / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ={})


class Subscriber:
    """A Unix-socket client reading JSON lines."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.notices: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, path: str, filter_line: bytes = b"{}\n") -> Subscriber:
        stream = await trio.open_unix_socket(path)
        await stream.send_all(filter_line)
        return cls(stream)

    async def line(self) -> bytes:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            assert data, "the daemon closed the socket"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    async def record(self) -> MarketData:
        """The next record; disconnect and reconnect lines before it go to :attr:`notices`."""
        while True:
            line = await self.line()
            if line.startswith((b'{"type":"disconnect"', b'{"type":"reconnect"', b'{"type":"backfill"')):
                self.notices.append(orjson.loads(line))
                continue
            return decode_record(line)

    async def until(self, predicate: Callable[[MarketData], bool], limit: int = 20_000) -> list[MarketData]:
        """Records read until one satisfies ``predicate`` (included)."""
        seen: list[MarketData] = []
        while True:
            record = await self.record()
            seen.append(record)
            if predicate(record):
                return seen
            assert len(seen) < limit, "predicate never held"


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[WebSocketService]:
    async with trio.open_nursery() as nursery:
        daemon: WebSocketService = await nursery.start(Daemon(config).run)
        yield daemon
        daemon.stop()


@asynccontextmanager
async def serving(*sims: Any) -> AsyncIterator[None]:
    """Serve every simulator until the block ends."""
    async with trio.open_nursery() as nursery:
        for sim in sims:
            await nursery.start(sim.serve)
        yield
        nursery.cancel_scope.cancel()
