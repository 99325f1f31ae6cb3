"""What the fault-injection tests share: every venue's simulator (found by discovery: one per
simulator module, serving its main venue id), the in-process daemon (``WebSocketService`` with
the Unix socket), and a subscriber that checks every record.

The tests run on trio's mock clock (``autojump_clock``): the simulators pace their tapes, and the
daemon its deadlines, on the same virtual time, so waiting out a stale feed of a few seconds or a
fault that lasts a minute costs no wall time. Real sockets still carry every byte, and every frame
sent meanwhile costs its real work: hence the tape speeds (:data:`SPEEDS`) and the waits for all
venues at once (:meth:`Tape.more_of`).

Trade ids are the continuity check: every simulator numbers a symbol's trades one by one (Binance
``t``, Bybit spot ``i``, Coinbase ``trade_id``), and pauses its tape while nobody subscribes, so
a subscriber that gets every trade of a symbol sees consecutive ids.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio
from endtoend import load_text, short_tempdir
from prometheus_client.parser import text_string_to_metric_families

from feedd import WebSocketService
from feedd.sim import registry
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec

#: every simulator module found, by its main venue id (the one the harness runs)
SPECS: dict[str, SimSpec] = {spec.main: spec for spec in registry().values()}
VENUES = tuple(SPECS)
SYMBOLS = {venue: spec.symbols[venue] for venue, spec in SPECS.items()}
#: a symbol each venue lists but the config does not subscribe (for live subscribes)
SPARE = {venue: spec.spare for venue, spec in SPECS.items()}
#: virtual seconds: the daemon's deadlines, short so faults are noticed quickly
STALE_AFTER = 3.0
#: a bound on every wait (virtual time: a hang fails at once instead of waiting)
TIMEOUT = 900


def feed_section(*, stale_after: float = STALE_AFTER, client_buffer: int = 10_000) -> str:
    return f"""
[feed]
cache_dir = "cache"
reconnect_interval = 0.05
max_backoff = 0.5
stale_after = {stale_after}
stable_after = 1.0
connect_timeout = 2.0
max_retries = 0

[unix]
path = "feedd.sock"
client_buffer = {client_buffer}
"""


@attrs.define
class Tape:
    """Everything one Unix-socket subscriber read: trade ids per (venue, symbol), the other
    lines (gap notices, and disconnect / reconnect lines where the daemon sends them), and apart
    from them the ``backfill`` lines saying what a gap in a symbol's trade ids came to."""

    trades: dict[tuple[str, str], list[int]] = attrs.field(factory=lambda: defaultdict(list))
    tickers: int = 0
    notices: list[dict[str, Any]] = attrs.field(factory=list)
    backfills: list[dict[str, Any]] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def add(self, line: bytes) -> None:
        item = orjson.loads(line)
        if item.get("type") == "backfill":
            self.backfills.append(item)
        elif "type" in item:
            self.notices.append(item)
        elif item["kind"] == "trade":
            self.trades[(item["exchange"], item["symbol"])].append(int(item["trade_id"]))
        else:
            self.tickers += 1
        self._changed.set()
        self._changed = trio.Event()

    def count(self, venue: str) -> int:
        return sum(len(ids) for (exchange, _), ids in self.trades.items() if exchange == venue)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def more(self, venue: str, count: int = 10) -> None:
        """Wait until ``count`` more trades of ``venue`` arrived (of each of its symbols)."""
        await self.more_of((venue,), count)

    async def more_of(self, venues: Iterable[str], count: int = 10) -> None:
        """Wait until ``count`` more trades of each symbol of every one of ``venues`` arrived,
        counted from now for all of them at once (so the venues are waited for side by side)."""
        trades = self.trades
        marks = {key: len(trades[key]) for venue in venues for key in ((venue, s) for s in SYMBOLS[venue])}
        await self.wait_until(lambda: all(len(trades[key]) >= n + count for key, n in marks.items()))

    def holes(self, venue: str) -> dict[str, list[tuple[int, int]]]:
        """Per symbol of ``venue``: each (previous id, next id) where the ids do not follow on
        (a loss if next > previous + 1, a duplicate or reorder otherwise)."""
        found: dict[str, list[tuple[int, int]]] = {}
        for (exchange, symbol), ids in self.trades.items():
            if exchange == venue:
                breaks = [(a, b) for a, b in itertools.pairwise(ids) if b != a + 1]
                if breaks:
                    found[symbol] = breaks
        return found


async def read_into(stream: trio.SocketStream, tape: Tape) -> None:
    buffer = b""
    while data := await stream.receive_some(65536):
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            tape.add(line)


@attrs.define
class Feed:
    """The running simulators and daemon of one test, and the first subscriber's tape."""

    sims: dict[str, SimServer[Any]]
    service: WebSocketService
    tape: Tape
    socket_path: str
    nursery: trio.Nursery

    def status(self, venue: str) -> Any:
        return self.service.statuses[venue]

    async def subscriber(self, tape: Tape | None = None, filter_line: bytes = b"{}\n") -> Tape:
        """Another subscriber reading into ``tape`` (a new one by default) until the test ends."""
        tape = tape if tape is not None else Tape()
        stream = await trio.open_unix_socket(self.socket_path)
        await stream.send_all(filter_line)
        self.nursery.start_soon(read_into, stream, tape)
        return tape

    async def flowing(self, count: int = 10) -> None:
        """Wait until every venue delivered ``count`` more trades of each symbol. The venues are
        counted from the same moment: waiting for them one after the other would wait the sum
        of their times (20 virtual seconds, not 7), every other venue's trades flowing all along."""
        await self.tape.more_of(VENUES, count)


#: where the fault tests play a tape slower than its :attr:`~feedd.sim.spec.SimSpec.speed`: the
#: mock clock makes waiting free, not frames (each costs the simulator, the daemon and the
#: subscriber real work), and a fault test waits many virtual seconds (a ban, 300) while every
#: other venue flows. At their spec speeds these four sent 218 of the 234 frames a virtual second
#: of all eight venues; at these 53 of 71, each venue still a few trades a symbol a second and
#: never silent longer than 1.3 s (as Coinbase and Hyperliquid at theirs): far inside
#: ``stale_after``, so an untouched venue's feed never looks stale.
SLOWER = {"binance-coinm": 0.5, "bybit": 1.0, "bybit-option": 1.0, "coinbase-exchange": 1.0}
#: every venue's tape speed in the fault tests
SPEEDS = {venue: SLOWER.get(venue, spec.speed) for venue, spec in SPECS.items()}


def simulators(speeds: Mapping[str, float] = SPEEDS) -> dict[str, SimServer[Any]]:
    """A simulator per venue (its main venue id), its tape at ``speeds``."""
    return {venue: spec.make((venue,), speeds[venue]) for venue, spec in SPECS.items()}


def config_text(sims: dict[str, SimServer[Any]], feed: str) -> str:
    text = feed
    for venue, sim in sims.items():
        # trades only: the ids are what is checked, and every other frame costs wall time
        text += SPECS[venue].config_section(venue, sim, SYMBOLS[venue], 'channels = ["trades"]')
    return text


@contextmanager
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-f-") as path:
        yield path


@asynccontextmanager
async def running_feed(
    *,
    speeds: Mapping[str, float] | None = None,
    stale_after: float = STALE_AFTER,
    client_buffer: int = 10_000,
) -> AsyncIterator[Feed]:
    """The simulators (``speeds`` overriding some of :data:`SPEEDS`), the daemon in-process
    with its Unix socket, one subscriber reading everything; cancelled when the block ends."""
    with workdir() as path:
        sims = simulators({**SPEEDS, **(speeds or {})})
        async with trio.open_nursery() as nursery:
            for sim in sims.values():
                await nursery.start(sim.serve)
            config = load_text(path, config_text(sims, feed_section(stale_after=stale_after,
                                                                    client_buffer=client_buffer)))
            service = WebSocketService(config, serve_unix=True)
            await nursery.start(service.run)
            feed = Feed(sims, service, Tape(), config.unix.path, nursery)
            await feed.subscriber(feed.tape)
            yield feed
            nursery.cancel_scope.cancel()


def metric(feed: Feed, name: str, **labels: str) -> float | None:
    """One sample of the service's Prometheus exposition (None: absent)."""
    body, _ = feed.service.metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def venue_lines(records: Iterable[logging.LogRecord], venue: str, level: int = logging.WARNING) -> list[str]:
    """The daemon's log lines at ``level`` or above about ``venue``'s connections."""
    return [
        r.getMessage()
        for r in records
        if r.levelno >= level and r.name.startswith("feedd.") and not r.name.startswith("feedd.sim")
        and r.getMessage().startswith(f"{venue}/")
    ]


def untouched(feed: Feed, venue: str, reconnects_before: int) -> None:
    """Assert ``venue`` went on as if nothing happened: no lost or repeated trade, no reconnect."""
    assert feed.tape.holes(venue) == {}, f"{venue} lost or repeated trades"
    assert feed.status(venue).reconnects == reconnects_before


def others_untouched(feed: Feed, venue: str, reconnects_before: dict[str, int]) -> None:
    """Every venue but the faulted ``venue`` went on as if nothing happened."""
    for other in VENUES:
        if other != venue:
            untouched(feed, other, reconnects_before[other])
