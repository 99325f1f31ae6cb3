"""``feedd replay PATH...``: a recording's records, exactly as the Unix socket carried them live.

The frames go through :mod:`feedd.record.replay` (the live adapters, validation and rotation
overlap, with the recorded receive times); each record is encoded as the hub encodes it, and a
disconnect/reconnect event as the socket's publisher writes it. Out they go to stdout (as fast
as possible unless ``--speed``), to subscribers of a Unix socket of our own (``--socket``,
feedd's own publisher), or to a NATS JetStream stream (``--nats``, feedd's own sink).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from typing import BinaryIO

import trio

from feedd.codec import encode_record
from feedd.fanout.hub import Hub
from feedd.fanout.lines import KINDS, ClientFilter, notice_line, parse_time
from feedd.model import FeedEvent, MarketData
from feedd.record import format as fmt
from feedd.record.replay import Item, open_files, replay

#: bytes of output gathered before one write to stdout
WRITE_CHUNK = 1 << 16
#: seconds between checks for a first subscriber (``--socket``)
SUBSCRIBER_POLL = 0.05


class ReplayError(Exception):
    """A bad option (the message says which)."""


def parse_when(value: str, option: str) -> int:
    """An RFC 3339 time (``2026-12-07T09:14:00Z``) as nanoseconds since the epoch."""
    try:
        at = parse_time(value.strip())
    except ValueError as exc:
        raise ReplayError(f"{option}: expected an RFC 3339 time with a timezone "
                          f"(2026-12-07T09:14:00Z), got {value!r} ({exc})") from None
    return fmt.ns_of(at)


def make_filter(venues: list[str], symbols: list[str], kinds: list[str]) -> ClientFilter | None:
    """The socket's own filter semantics (``feedd tail``'s options); None for everything."""
    flt = ClientFilter(
        exchanges=frozenset(venues) or None,
        symbols=frozenset(s.upper() for s in symbols) or None,
        kinds=frozenset(KINDS[k] for k in kinds) or None,
    )
    return None if flt.is_everything else flt


def lines(items: Iterator[Item], flt: ClientFilter | None) -> Iterator[tuple[int, bytes]]:
    """(receive time, the bytes a subscriber with filter ``flt`` was sent for it)."""
    encode = encode_record
    for t, item in items:
        if type(item) is list:
            if flt is None:
                yield t, b"".join([encode(r) for r in item])
            else:
                matches = flt.matches
                out = b"".join([encode(r) for r in item if matches(r)])
                if out:
                    yield t, out
        else:
            line = notice_line(item, flt)  # type: ignore[arg-type]
            if line is not None:
                yield t, line


def to_stdout(items: Iterator[Item], flt: ClientFilter | None, out: BinaryIO) -> None:
    """As fast as possible: output gathered into writes of :data:`WRITE_CHUNK` bytes (the loop
    of :func:`lines`, inlined: it is replay's hot loop)."""
    chunk: list[bytes] = []
    keep = chunk.append
    size = 0
    encode = encode_record
    matches = None if flt is None else flt.matches
    for _, item in items:
        if type(item) is list:
            if matches is None:
                data = b"".join([encode(r) for r in item])
            else:
                data = b"".join([encode(r) for r in item if matches(r)])
        else:
            data = notice_line(item, flt) or b""  # type: ignore[arg-type]
        keep(data)
        size += len(data)
        if size >= WRITE_CHUNK:
            out.write(b"".join(chunk))
            chunk.clear()
            size = 0
    if chunk:
        out.write(b"".join(chunk))
    out.flush()


async def _pace(t: int, first: list[float], speed: float) -> None:
    """Sleep until recorded time ``t`` (ns) is due at ``speed`` times the recorded pace."""
    if not first:
        first.extend((t / 1e9, trio.current_time()))
        return
    due = first[1] + (t / 1e9 - first[0]) / speed
    if due > trio.current_time():
        await trio.sleep_until(due)


async def stdout_paced(items: Iterator[Item], flt: ClientFilter | None, out: BinaryIO, speed: float) -> None:
    first: list[float] = []
    for t, data in lines(items, flt):
        await _pace(t, first, speed)
        out.write(data)
        out.flush()


async def to_socket(items: Iterator[Item], flt: ClientFilter | None, path: str, speed: float,
                    say: Callable[[str], None]) -> None:
    """Serve the records on a Unix socket (feedd's own publisher) once a subscriber is there."""
    from feedd.fanout.unix import UnixPublisher

    hub = Hub()
    publisher = UnixPublisher(hub, path)
    hub.attach(publisher)
    async with trio.open_nursery() as nursery:
        hub_done = await nursery.start(_hub, hub)
        await nursery.start(publisher.serve)
        say(f"feedd replay: serving on {path}; waiting for a subscriber")
        while not publisher.clients:  # noqa: ASYNC110 (the publisher has no event for a client)
            await trio.sleep(SUBSCRIBER_POLL)
        await trio.sleep(publisher.filter_wait)  # its filter line, if it sends one
        await _feed(hub, items, flt, speed)
        hub.close()
        await hub_done.wait()
        publisher.finish()  # what each subscriber was sent goes out, then it is closed


async def to_nats(items: Iterator[Item], flt: ClientFilter | None, url: str, speed: float) -> None:
    """Publish the records to NATS JetStream (feedd's own sink, default stream settings)."""
    from feedd.config import NatsConfig
    from feedd.fanout.nats import NatsSink

    hub = Hub()
    sink = NatsSink(NatsConfig(servers=(url,)))
    hub.attach(sink)
    async with trio.open_nursery() as nursery:
        done = await nursery.start(_hub, hub)
        await nursery.start(sink.run)
        with trio.fail_after(10):
            while not sink.connected:
                await sink.progressed()
        await _feed(hub, items, flt, speed)
        hub.close()
        await done.wait()
        await sink.flushed()
        nursery.cancel_scope.cancel()


async def _hub(hub: Hub, *, task_status: trio.TaskStatus[trio.Event] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the hub; hands out the event set once it has handed everything on and returned."""
    done = trio.Event()
    task_status.started(done)
    try:
        await hub.run()
    finally:
        done.set()


async def _feed(hub: Hub, items: Iterator[Item], flt: ClientFilter | None, speed: float) -> None:
    send = hub.sender()
    first: list[float] = []
    async with send:
        for t, item in items:
            if math.isfinite(speed):
                await _pace(t, first, speed)
            if type(item) is list:
                batch: list[MarketData] = item if flt is None else [r for r in item if flt.matches(r)]
                if batch:
                    await send.send(batch)
            else:
                event: FeedEvent = item  # type: ignore[assignment]
                await send.send(event)
            if not math.isfinite(speed):
                await trio.lowlevel.checkpoint()


def run_replay(
    paths: list[str],
    *,
    venues: list[str],
    symbols: list[str],
    kinds: list[str],
    since: str | None,
    until: str | None,
    speed: float | None,
    socket: str | None,
    nats: str | None,
    out: BinaryIO | None = None,
    err: Callable[[str], None] | None = None,
) -> int:
    """The command: 0 when some recording was read, 1 when none could be (each named), 2 for a
    bad option."""
    warn = err or (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        lo = None if since is None else parse_when(since, "--since")
        hi = None if until is None else parse_when(until, "--until")
        if speed is not None and not speed > 0:
            raise ReplayError(f"--speed: expected a positive factor, got {speed:g}")
        if socket is not None and nats is not None:
            raise ReplayError("--socket and --nats: choose one")
    except ReplayError as exc:
        warn(f"feedd replay: {exc}")
        return 2
    files = open_files(paths, lambda text: warn(f"feedd replay: {text}"))
    if not files:
        warn("feedd replay: nothing could be read")
        return 1
    items = replay(files, venues=venues or None, since=lo, until=hi,
                   warn=lambda text: warn(f"feedd replay: {text}"))
    flt = make_filter(venues, symbols, kinds)
    if socket is not None:
        trio.run(to_socket, items, flt, socket, speed or 1.0, warn)
    elif nats is not None:
        trio.run(to_nats, items, flt, nats, speed or math.inf)
    elif speed is None:
        to_stdout(items, flt, out or sys.stdout.buffer)
    else:
        trio.run(stdout_paced, items, flt, out or sys.stdout.buffer, speed)
    return 0

