"""Publish records as JSON lines to local subscribers on a Unix stream socket.

Protocol, per connection: the client may first send one JSON line
``{"exchange": [...], "symbol": [...], "kind": [...]}`` (each key optional); the server waits up to
``filter_wait`` seconds for it, holding records meanwhile, then streams one record per line.
An invalid filter gets one ``{"type": "error", "error": "..."}`` line and the connection is closed.
Each subscriber has a bounded buffer: when it falls behind its oldest records are dropped and the
next write starts with ``{"type": "gap", "dropped": N}``. The hub and the other subscribers never
wait for it. A client may half-close after its filter line; a failed write is what ends it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections import deque
from collections.abc import Sequence
from itertools import chain

import attrs
import orjson
import trio

from feedd.codec import encode_line
from feedd.hub import Hub
from feedd.model import MarketData

logger = logging.getLogger(__name__)

#: sun_path is 108 bytes on Linux, including the terminating NUL
MAX_PATH_BYTES = 107
MAX_FILTER_LINE = 4096
KINDS = frozenset({"trade", "ticker"})
_FILTER_KEYS = ("exchange", "symbol", "kind")


class PublisherError(Exception):
    """The publisher cannot take its socket path; the message names the path and why."""


class FilterError(ValueError):
    """A subscriber's filter line is not acceptable; the message is sent back to it."""


class _ClientGone(Exception):
    """The subscriber closed its end before it was served."""


@attrs.frozen(slots=True)
class ClientFilter:
    """Which records one subscriber wants; ``None`` for a field means any value."""

    exchanges: frozenset[str] | None = None
    symbols: frozenset[str] | None = None
    kinds: frozenset[str] | None = None

    @property
    def is_everything(self) -> bool:
        return self.exchanges is None and self.symbols is None and self.kinds is None

    def matches(self, record: MarketData) -> bool:
        return (
            (self.exchanges is None or record.exchange in self.exchanges)
            and (self.symbols is None or record.symbol.upper() in self.symbols)
            and (self.kinds is None or record.kind in self.kinds)
        )


def parse_filter(line: bytes) -> ClientFilter:
    """The filter a subscriber's first line asks for; :class:`FilterError` says what is wrong."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise FilterError(f"filter line is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FilterError("filter must be a JSON object with keys exchange, symbol, kind")
    unknown = sorted(set(obj) - set(_FILTER_KEYS))
    if unknown:
        raise FilterError(f"unknown filter key(s) {unknown}; allowed: exchange, symbol, kind")

    def values(key: str) -> list[str] | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise FilterError(f"filter {key!r} must be a non-empty list of strings")
        return value

    exchanges, symbols, kinds = values("exchange"), values("symbol"), values("kind")
    if kinds is not None:
        bad = sorted(set(kinds) - KINDS)
        if bad:
            raise FilterError(f"filter 'kind' has unknown value(s) {bad}; allowed: trade, ticker")
    return ClientFilter(
        exchanges=None if exchanges is None else frozenset(e.lower() for e in exchanges),
        symbols=None if symbols is None else frozenset(s.upper() for s in symbols),
        kinds=None if kinds is None else frozenset(kinds),
    )


class _Subscriber:
    """One connection's side of the hub: a bounded buffer of encoded lines (a :class:`Sink`).

    Until the filter is known, records are held unfiltered (bounded the same way) and filtered
    when :meth:`start` is called, so a filtered client never sees a record it did not ask for.
    Drops while held may include records the filter would have excluded; the gap says so
    conservatively. Memory per subscriber: at most ``capacity`` pending lines plus the write in
    flight.
    """

    wants_encoded = True

    def __init__(self, publisher: UnixPublisher, capacity: int) -> None:
        self._publisher = publisher
        self._capacity = capacity
        self._lines: deque[bytes] = deque(maxlen=capacity)
        self._held: deque[tuple[MarketData, bytes]] | None = deque(maxlen=capacity)
        self._filter: ClientFilter | None = None
        self._dropped = 0
        self._wakeup = trio.Event()

    def _count_drops(self, overflow: int) -> None:
        self._dropped += overflow
        self._publisher.records_dropped += overflow

    def offer(self, records: Sequence[MarketData], encoded: Sequence[bytes]) -> None:
        held = self._held
        if held is not None:
            overflow = len(held) + len(records) - self._capacity
            if overflow > 0:
                self._count_drops(overflow)
            held.extend(zip(records, encoded, strict=True))
            return
        flt = self._filter
        lines: Sequence[bytes]
        if flt is None:
            lines = encoded
        else:
            lines = [line for r, line in zip(records, encoded, strict=True) if flt.matches(r)]
            if not lines:
                return
        overflow = len(self._lines) + len(lines) - self._capacity
        if overflow > 0:
            self._count_drops(overflow)
        self._lines.extend(lines)  # the deque's maxlen drops the oldest
        self._wakeup.set()

    def start(self, flt: ClientFilter | None) -> None:
        """Apply the filter to what was held, and from now on to every offer."""
        held, self._held = self._held, None
        if flt is not None and flt.is_everything:
            flt = None
        self._filter = flt
        if held:
            if flt is None:
                self._lines.extend(line for _, line in held)
            else:
                self._lines.extend(line for r, line in held if flt.matches(r))
        if self._lines or self._dropped:
            self._wakeup.set()

    async def next_write(self) -> tuple[bytes, int]:
        """Wait for data, then take everything pending as one payload (gap notice first)."""
        await self._wakeup.wait()
        self._wakeup = trio.Event()
        lines, self._lines = self._lines, deque(maxlen=self._capacity)
        dropped, self._dropped = self._dropped, 0
        if dropped:
            notice = encode_line({"type": "gap", "dropped": dropped})
            return b"".join(chain((notice,), lines)), len(lines)
        return b"".join(lines), len(lines)


class UnixPublisher:
    """Serves the hub's records to every subscriber of a Unix socket (see the module docstring).

    Counters: ``clients`` (connected now), ``clients_total``, ``records_sent``,
    ``records_dropped`` (over all subscribers), ``filter_errors``.
    """

    def __init__(self, hub: Hub, path: str, *, client_buffer: int = 10_000, filter_wait: float = 0.1) -> None:
        if client_buffer < 1:
            raise ValueError(f"client_buffer must be positive, got {client_buffer}")
        self.hub = hub
        self.path = path
        self.client_buffer = client_buffer
        self.filter_wait = filter_wait
        self.clients = 0
        self.clients_total = 0
        self.records_sent = 0
        self.records_dropped = 0
        self.filter_errors = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on :attr:`path` until cancelled; the socket file is removed on the way out.

        Refuses to start (:class:`PublisherError`) when another process answers on the path or
        the path is something other than a socket; a stale socket file is replaced.
        """
        listener, inode = await self._listen()
        try:
            async with listener, trio.open_nursery() as nursery:
                logger.info("publishing records on %s", self.path)
                task_status.started()
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._serve_client, stream)
        finally:
            _remove_if_ours(self.path, inode)

    async def _listen(self) -> tuple[trio.SocketListener, int]:
        path = self.path
        if len(os.fsencode(path)) > MAX_PATH_BYTES:
            raise PublisherError(f"socket path {path!r} is longer than {MAX_PATH_BYTES} bytes")
        await _claim(path)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        bound = False
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            await sock.bind(path)
            bound = True
            os.chmod(path, 0o660)
            inode = os.stat(path).st_ino
            sock.listen(trio.socket.SOMAXCONN)
        except OSError as exc:
            sock.close()
            if bound:
                os.unlink(path)
            raise PublisherError(f"cannot listen on {path}: {exc}") from exc
        return trio.SocketListener(sock), inode

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        sub = _Subscriber(self, self.client_buffer)
        self.clients += 1
        self.clients_total += 1
        # Attached before the filter is read, so nothing published meanwhile is missed.
        self.hub.attach(sub)
        try:
            async with stream:
                try:
                    flt = await self._read_filter(stream)
                except FilterError as exc:
                    self.filter_errors += 1
                    await _send_error(stream, str(exc))
                    return
                except _ClientGone:
                    return
                sub.start(flt)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_discard_input, stream)
                    await self._write_loop(stream, sub)
                    nursery.cancel_scope.cancel()
        finally:
            self.hub.detach(sub)
            self.clients -= 1

    async def _read_filter(self, stream: trio.SocketStream) -> ClientFilter | None:
        """The client's filter, or ``None`` when it sends none within ``filter_wait``."""
        buf = bytearray()
        with trio.move_on_after(self.filter_wait):
            while True:
                try:
                    data = await stream.receive_some(MAX_FILTER_LINE)
                except trio.BrokenResourceError:
                    raise _ClientGone from None
                if not data:
                    # the client closed its sending side (e.g. `nc -U sock < /dev/null`): it
                    # still reads; a half-close is not a goodbye
                    if buf:
                        raise FilterError("filter line not terminated before end of input")
                    return None
                buf += data
                end = buf.find(b"\n")
                if end >= 0:
                    line = bytes(buf[:end])
                    return None if not line.strip() else parse_filter(line)
                if len(buf) > MAX_FILTER_LINE:
                    raise FilterError(f"filter line longer than {MAX_FILTER_LINE} bytes")
        if buf:
            raise FilterError(f"filter line not terminated within {self.filter_wait} s")
        return None

    async def _write_loop(self, stream: trio.SocketStream, sub: _Subscriber) -> None:
        """One ``send_all`` per wakeup with everything pending; returns when the client is gone."""
        try:
            while True:
                payload, count = await sub.next_write()
                await stream.send_all(payload)
                self.records_sent += count
        except trio.BrokenResourceError:
            return


async def _claim(path: str) -> None:
    """Make ``path`` free for our socket: remove a stale socket, refuse a live or foreign one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise PublisherError(f"{path} exists and is not a socket; refusing to replace it")
    try:
        with trio.move_on_after(1.0):
            stream = await trio.open_unix_socket(path)
            await stream.aclose()
        # Connected, or the peer's backlog kept us waiting: either way someone is there.
        raise PublisherError(f"{path} is in use: another feedd owns it")
    except FileNotFoundError:
        return
    except ConnectionRefusedError:
        pass
    except OSError as exc:
        raise PublisherError(f"cannot check whether {path} is in use: {exc}") from exc
    logger.info("removing stale socket %s", path)
    os.unlink(path)


def _remove_if_ours(path: str, inode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


async def _send_error(stream: trio.SocketStream, message: str) -> None:
    # The client may already be gone or may not read; neither may hold this task for long.
    with trio.move_on_after(1.0), contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(encode_line({"type": "error", "error": message}))


async def _discard_input(stream: trio.SocketStream) -> None:
    """Read and drop what the client sends after its filter, until it half-closes.

    A client that is really gone shows as a failed write, so EOF alone does not end delivery.
    """
    with contextlib.suppress(trio.BrokenResourceError):
        while await stream.receive_some(MAX_FILTER_LINE):
            pass
