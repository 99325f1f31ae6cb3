"""Read feedd's Unix socket from Python, under trio or asyncio::

    async for item in subscribe("/run/feedd/feedd.sock", exchange=["binance"], kind=["trade"]):
        if isinstance(item, MarketData):
            print(item.symbol, item.price)
        else:
            print("event:", item)   # a gap, a venue's disconnect / reconnect, our own reconnect

Three layers, as in the daemon: :class:`LineDecoder` is sans-IO (bytes in, :class:`MarketData`
and events out; no socket, no clock); :class:`Subscription` is the one connection loop (send
the filter, read, reconnect with backoff when the daemon goes away); and two small I/O front
ends, one for trio and one for asyncio, picked by ``sniffio`` from the running event loop.

Nothing the socket says is dropped silently: every line is a record or an event, including
lines of a ``type`` this version does not know (:class:`UnknownEvent`) and lines it cannot read
(:class:`BadLine`, counted in :attr:`LineDecoder.bad_lines`). A refusal by the daemon (a bad
filter, too many subscribers) raises :class:`SubscriptionRefused`: retrying would not help.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

import attrs
import orjson

from feedd.errors import SubscribeError, SubscriberRefused, SubscriptionRefused, describe
from feedd.fanout.lines import KINDS, parse_time, record_of
from feedd.feed.backoff import Backoff
from feedd.model import Backfilled, Disconnected, MarketData, Reconnected

_READ_SIZE = 65536
#: how much of a bad line an event quotes
_EXCERPT = 120


# ---- events -------------------------------------------------------------------------------


@attrs.frozen
class Gap:
    """The daemon dropped ``dropped`` records meant for us: we read too slowly."""

    dropped: int


#: the daemon's own feed events (what ``WebSocketService`` callbacks get), under the names a
#: socket reader knows them by: a venue's connection lost, and data flowing again
VenueDisconnected = Disconnected
VenueReconnected = Reconnected
VenueBackfilled = Backfilled


@attrs.frozen
class ServerError:
    """An ``{"type": "error"}`` line: the daemon refused us and closes the connection."""

    error: str


@attrs.frozen
class UnknownEvent:
    """A line with a ``type`` this version does not know, with all its fields."""

    type: str
    fields: Mapping[str, Any]


@attrs.frozen
class BadLine:
    """A line that is neither a record nor an event: what it began with, and why."""

    excerpt: bytes
    error: str


@attrs.frozen
class ClientDisconnected:
    """We lost the connection to the daemon (it stopped or restarted); reconnecting."""

    path: str
    reason: str
    at: datetime


@attrs.frozen
class ClientReconnected:
    """Connected again after ``gap_seconds`` (records published meanwhile were missed)."""

    path: str
    gap_seconds: float
    attempts: int


Event = (
    Gap | VenueDisconnected | VenueReconnected | VenueBackfilled | ServerError | UnknownEvent | BadLine
    | ClientDisconnected | ClientReconnected
)
Item = MarketData | Event


# ---- the sans-IO decoder ------------------------------------------------------------------


def _event(kind: Any, obj: dict[str, Any]) -> Event:
    if kind == "gap":
        return Gap(int(obj["dropped"]))
    if kind == "error":
        return ServerError(str(obj.get("error") or "no reason given"))
    if kind == "disconnect":
        return VenueDisconnected(str(obj["exchange"]), tuple(obj["symbols"]), parse_time(obj["at"]),
                                 str(obj.get("reason") or ""))
    if kind == "reconnect":
        return VenueReconnected(str(obj["exchange"]), tuple(obj["symbols"]), parse_time(obj["at"]),
                                float(obj["gap_seconds"]))
    if kind == "backfill":
        first, last = obj["missing"]
        return VenueBackfilled(
            str(obj["exchange"]), tuple(obj["symbols"]), parse_time(obj["at"]), int(obj["recovered"]),
            int(obj["lost"]), (int(first), int(last)), obj.get("reason"), obj.get("late") is True,
        )
    return UnknownEvent(str(kind), obj)


class LineDecoder:
    """Bytes off the socket in, records and events out, in order.

    Lines may arrive split anywhere; a partial line waits for the rest. A record costs one
    ``orjson.loads``, two ``datetime.fromisoformat`` and the record's construction
    (``bench/client.py`` measures it against ``orjson.loads`` alone).
    """

    def __init__(self) -> None:
        self._rest = b""
        #: lines that were neither a record nor an event, since creation
        self.bad_lines = 0

    def feed(self, data: bytes) -> list[Item]:
        """Everything the complete lines in ``data`` (after what was held) say."""
        lines = (self._rest + data).split(b"\n") if self._rest else data.split(b"\n")
        self._rest = lines.pop()
        decode = self.decode_line
        return [decode(line) for line in lines if line]

    def end(self) -> list[Item]:
        """The connection ended: a held partial line is reported as cut off (if any)."""
        rest, self._rest = self._rest, b""
        if not rest.strip():
            return []
        self.bad_lines += 1
        return [BadLine(rest[:_EXCERPT], "the connection ended in the middle of this line")]

    def decode_line(self, line: bytes) -> Item:
        """One line (without its newline)."""
        try:
            obj = orjson.loads(line)
            if "type" in obj:
                return _event(obj["type"], obj)
            return record_of(obj)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self.bad_lines += 1
            why = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            return BadLine(line[:_EXCERPT], why)


def filter_line(exchange: Iterable[str] = (), symbol: Iterable[str] = (), kind: Iterable[str] = ()) -> bytes:
    """The line that asks the daemon for these venues, symbols and kinds (none given: all)."""
    wanted: dict[str, list[str]] = {}
    for key, given in (("exchange", exchange), ("symbol", symbol), ("kind", kind)):
        values = [] if isinstance(given, str) else list(dict.fromkeys(given))
        if isinstance(given, str) or not all(isinstance(v, str) for v in values):
            raise TypeError(f"{key}: expected a list of strings, got {given!r}")
        wanted[key] = values
    bad = [k for k in wanted["kind"] if k not in KINDS]
    if bad:
        raise ValueError(f"kind: unknown {bad} (known: {', '.join(KINDS)})")
    return orjson.dumps({key: values for key, values in wanted.items() if values}) + b"\n"


# ---- the two front ends -------------------------------------------------------------------


class Connection(Protocol):
    """What the connection loop needs from an event loop's Unix socket."""

    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes:
        """Some bytes; b"" at end of stream. OSError when the connection breaks."""
        ...

    async def aclose(self) -> None: ...


class _Loop(Protocol):
    async def connect(self, path: str) -> Connection: ...

    async def sleep(self, seconds: float) -> None: ...


class _TrioConnection:
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def send(self, data: bytes) -> None:
        import trio

        try:
            await self._stream.send_all(data)
        except trio.BrokenResourceError as exc:
            raise ConnectionResetError(str(exc) or "broken connection") from exc

    async def receive(self) -> bytes:
        import trio

        try:
            data: bytes = await self._stream.receive_some(_READ_SIZE)
        except trio.BrokenResourceError as exc:
            raise ConnectionResetError(str(exc) or "broken connection") from exc
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Trio:
    async def connect(self, path: str) -> Connection:
        import trio

        return _TrioConnection(await trio.open_unix_socket(path))

    async def sleep(self, seconds: float) -> None:
        import trio

        await trio.sleep(seconds)


class _AsyncioConnection:
    def __init__(self, reader: Any, writer: Any) -> None:
        self._reader = reader
        self._writer = writer

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def receive(self) -> bytes:
        data: bytes = await self._reader.read(_READ_SIZE)
        return data

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):  # already broken: closed is all we wanted
            await self._writer.wait_closed()


class _Asyncio:
    async def connect(self, path: str) -> Connection:
        import asyncio

        reader, writer = await asyncio.open_unix_connection(path, limit=_READ_SIZE)
        return _AsyncioConnection(reader, writer)

    async def sleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(seconds)


def _current_loop() -> _Loop:
    import sniffio

    library = sniffio.current_async_library()
    if library == "trio":
        return _Trio()
    if library == "asyncio":
        return _Asyncio()
    raise RuntimeError(f"feedd.client runs under trio or asyncio, not {library}")


# ---- the connection loop ------------------------------------------------------------------


class Subscription:
    """``async for item in subscribe(...)``: records and events from the daemon's socket.

    Also an async context manager, which closes the connection when the block ends (a bare
    ``async for`` closes it when the iterator is collected).
    """

    def __init__(
        self,
        path: str,
        line: bytes,
        *,
        reconnect: bool,
        backoff: Backoff,
        decoder: LineDecoder | None = None,
    ) -> None:
        self.path = path
        self._line = line
        self._reconnect = reconnect
        self._backoff = backoff
        self.decoder = decoder or LineDecoder()
        self._items = self._run()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        await self._items.aclose()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _connect(self, loop: _Loop) -> Connection:
        try:
            conn = await loop.connect(self.path)
        except FileNotFoundError:
            raise SubscribeError(f"no feedd socket at {self.path}: is the daemon running?") from None
        except ConnectionRefusedError:
            raise SubscribeError(f"nothing listens on {self.path} (a stale socket?)") from None
        except OSError as exc:
            raise SubscribeError(f"cannot connect to {self.path}: {describe(exc)}") from exc
        try:
            await conn.send(self._line)
        except OSError as exc:
            await conn.aclose()
            raise SubscribeError(f"lost {self.path} while sending the filter: {describe(exc)}") from exc
        return conn

    async def _run(self) -> AsyncGenerator[Item, None]:
        loop = _current_loop()
        conn: Connection | None = await self._connect(loop)  # the first failure is the caller's
        while True:
            assert conn is not None
            reason = "the daemon closed the connection"
            try:
                while data := await conn.receive():
                    for item in self.decoder.feed(data):
                        if type(item) is ServerError:
                            raise SubscriberRefused(self.path, item.error)
                        yield item
            except OSError as exc:
                reason = f"connection lost: {describe(exc)}"
            finally:
                await conn.aclose()
            for item in self.decoder.end():
                yield item
            if not self._reconnect:
                return
            lost_at, conn = time.monotonic(), None
            yield ClientDisconnected(self.path, reason, datetime.now(UTC))
            attempts = 0
            while conn is None:
                await loop.sleep(self._backoff.next_delay())
                attempts += 1
                try:
                    conn = await self._connect(loop)
                except SubscriberRefused:
                    raise
                except SubscribeError:
                    continue  # still down: the daemon is restarting
            self._backoff.reset()
            yield ClientReconnected(self.path, time.monotonic() - lost_at, attempts)


def subscribe(
    path: str,
    *,
    exchange: Iterable[str] = (),
    symbol: Iterable[str] = (),
    kind: Iterable[str] = (),
    reconnect: bool = True,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
) -> Subscription:
    """Records (:class:`~feedd.model.MarketData`, aware UTC datetimes) and events from the
    daemon's socket at ``path``, for the venues, symbols and kinds (``trade``, ``ticker``, ``quote``) given
    (none: all of them).

    When the daemon goes away, a :class:`ClientDisconnected` is yielded and the socket is tried
    again after ``backoff`` seconds, doubling up to ``max_backoff`` (with jitter), until it
    answers; then :class:`ClientReconnected` says how long the gap was. ``reconnect=False``
    ends the iteration instead. Not reaching the socket at all the first time raises
    :class:`SubscribeError`; a refusal by the daemon raises :class:`SubscriptionRefused`.
    """
    line = filter_line(exchange, symbol, kind)
    return Subscription(path, line, reconnect=reconnect, backoff=Backoff(backoff, max_backoff))


__all__ = [
    "BadLine",
    "ClientDisconnected",
    "ClientReconnected",
    "Event",
    "Gap",
    "Item",
    "LineDecoder",
    "ServerError",
    "SubscribeError",
    "SubscriberRefused",
    "Subscription",
    "SubscriptionRefused",
    "UnknownEvent",
    "VenueBackfilled",
    "VenueDisconnected",
    "VenueReconnected",
    "filter_line",
    "subscribe",
]
