"""Publish records as JSON lines to local subscribers on a Unix stream socket.

Protocol, per connection: the client may send filter lines
``{"exchange": [...], "symbol": [...], "kind": [...]}`` (each key optional) at any time; each
applies from then on and replaces the one before (a blank line changes nothing). The server waits
up to ``filter_wait`` seconds for the first, holding records meanwhile, then streams one record
per line. An invalid filter gets one ``{"type": "error", "error": "..."}`` line and the connection
is closed. Each subscriber has a bounded buffer: when it falls behind its oldest records are
dropped and the next write starts with ``{"type": "gap", "dropped": N}``. The hub and the other
subscribers never wait for it. A client may half-close (e.g. ``nc -U sock < /dev/null``); a failed
write is what ends it. Beyond ``max_clients`` a new client gets one error line and is closed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import stat
from collections.abc import Sequence

import trio

from feedd.errors import FilterError, PublisherError
from feedd.fanout.buffer import DropOldest
from feedd.fanout.hub import Hub
from feedd.fanout.lines import ClientFilter, error_line, gap_line, notice_line, parse_filter
from feedd.model import FeedEvent, MarketData

logger = logging.getLogger(__name__)

#: sun_path is 108 bytes on Linux, including the terminating NUL
MAX_PATH_BYTES = 107
MAX_FILTER_LINE = 4096
#: accept() failures that mean "out of descriptors or memory for now": pause, then retry
_EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: how long accepting pauses after such a failure; the pending clients wait in the backlog
ACCEPT_PAUSE = 0.1
#: how long a client that is being closed on (refused, bad filter) gets to read its error line
GOODBYE_TIMEOUT = 1.0
#: write coalescing: after a flush that wrote to n subscribers the next waits (n - 1) x this
WRITE_INTERVAL = 100e-6


class _Subscriber:
    """One connection's side of the publisher: its filter, and what it has not taken yet.

    A subscriber whose socket has room is written at once, from the publisher's flush, with a
    non-blocking ``write`` of everything new for it: no task of its own runs per batch. When its
    socket is full, the unwritten rest of that write (:attr:`backlog`) waits for its writer task,
    and later records queue in a bounded buffer that drops its oldest, counted; the writer sends
    a gap notice and what is left as soon as the socket takes more. Until the first filter is
    known, records are held unfiltered (bounded the same way) and filtered by :meth:`start`, so
    a filtered client never sees a record it did not ask for; drops while held may include
    records the filter would have excluded, and the gap says so conservatively.

    Memory per subscriber: at most ``capacity`` queued lines plus the rest of one write.
    """

    def __init__(
        self, publisher: UnixPublisher, stream: trio.SocketStream, capacity: int, number: int = 0
    ) -> None:
        self._publisher = publisher
        self._fd = stream.socket.fileno()
        #: which subscriber since start (1, 2, ...), for the status and metrics
        self.number = number
        #: records written to it, and lost to its slowness, since it connected
        self.sent = 0
        self.dropped_total = 0
        self._capacity = capacity
        #: lines waiting while the socket is full
        self._lines: DropOldest[bytes] = DropOldest(capacity)
        #: records (and feed events) waiting for the first filter, with their lines
        self._held: DropOldest[tuple[MarketData | FeedEvent, bytes]] | None = DropOldest(capacity)
        self._filter: ClientFilter | None = None
        self._dropped = 0
        #: the unwritten rest of a write the socket did not take whole, and its record count
        self.backlog: memoryview | None = None
        self._backlog_records = 0
        #: set when the writer task has work: a backlog, or the end
        self.wakeup = trio.Event()
        #: set by :meth:`end`: the last payload (an error line, or nothing) before closing
        self.goodbye: bytes | None = None
        #: set by :meth:`finish`: no more records will come; close once the pending are written
        self.finishing = False

    @property
    def holding(self) -> bool:
        return self._held is not None

    @property
    def pending(self) -> int:
        """Records queued behind a write its socket has not taken yet (held ones included)."""
        return len(self._lines) + len(self._held or ())

    def _count_sent(self, count: int) -> None:
        self.sent += count
        self._publisher.records_sent += count

    def _count_drops(self, overflow: int) -> None:
        self._dropped += overflow
        self.dropped_total += overflow
        self._publisher.records_dropped += overflow

    def take(self, records: Sequence[MarketData], encoded: Sequence[bytes], everything: bytes) -> bool:
        """Deliver one flush: ``encoded[i]`` is the line of ``records[i]``, ``everything`` all of
        them joined (shared by every subscriber without a filter). True if it wrote."""
        if self.goodbye is not None:
            return False
        held = self._held
        if held is not None:
            if overflow := held.add(zip(records, encoded, strict=True), len(records)):
                self._count_drops(overflow)
            return False
        flt = self._filter
        if self.backlog is not None:
            lines: Sequence[bytes] = (
                encoded if flt is None
                else [line for r, line in zip(records, encoded, strict=True) if flt.matches(r)]
            )
            if overflow := self._lines.add(lines, len(lines)):
                self._count_drops(overflow)
            return False
        if flt is None:
            self.write(everything, len(records))
            return True
        lines = [line for r, line in zip(records, encoded, strict=True) if flt.matches(r)]
        if lines:
            self.write(b"".join(lines), len(lines))
        return bool(lines)

    def take_notice(self, event: FeedEvent) -> None:
        """Deliver a feed event in its place among the records, if it concerns this subscriber."""
        if self.goodbye is not None:
            return
        if self._held is not None:
            self._held.items.append((event, b""))  # its line depends on the filter still to come
            return
        line = notice_line(event, self._filter)
        if line is None:
            return
        if self.backlog is not None:
            self._lines.items.append(line)  # uncounted: a notice pushing out a record is no gap
        else:
            self.write(line, 0)

    def write(self, payload: bytes, count: int) -> None:
        """Write ``payload`` (``count`` records) now, as far as the socket takes it, never waiting;
        a gap notice goes first if records were dropped. The rest becomes the backlog."""
        if self._dropped:
            payload = gap_line(self._dropped) + payload
            self._dropped = 0
        try:
            written = os.write(self._fd, payload)
        except BlockingIOError:
            written = 0
        except OSError:  # reset or closed by the client: it is gone
            self.end(None)
            return
        if written == len(payload):
            self._count_sent(count)
            return
        self.backlog = memoryview(payload)[written:]
        self._backlog_records = count
        self.wakeup.set()

    async def drain(self) -> None:
        """Wait until the socket took the backlog and everything queued behind it (writer task)."""
        while (backlog := self.backlog) is not None:
            await trio.lowlevel.wait_writable(self._fd)
            try:
                written = os.write(self._fd, backlog)
            except BlockingIOError:
                continue
            if written < len(backlog):
                self.backlog = backlog[written:]
                continue
            self.backlog = None
            self._count_sent(self._backlog_records)
            if self._lines and self.goodbye is None:
                lines = self._lines.take_all()
                self.write(b"".join(lines), len(lines))

    def start(self, flt: ClientFilter | None) -> None:
        """Apply the filter to what was held, and from now on to every flush."""
        held, self._held = self._held, None
        flt = self._filter = _effective(flt)
        if self.goodbye is not None:
            return
        lines: list[bytes] = []
        count = 0
        for item, line in held or ():
            if isinstance(item, MarketData):
                if flt is None or flt.matches(item):
                    lines.append(line)
                    count += 1
            elif (notice := notice_line(item, flt)) is not None:
                lines.append(notice)
        if lines or self._dropped:
            self.write(b"".join(lines), count)

    def set_filter(self, flt: ClientFilter) -> None:
        """Replace the filter for every later flush; lines already queued stay queued."""
        self._filter = _effective(flt)

    def finish(self) -> None:
        """The daemon is stopping: write what is pending, then close (one still waiting for its
        filter has asked for nothing yet, and is closed at once)."""
        if self.holding:
            self.end(None)
        self.finishing = True
        self.wakeup.set()

    def end(self, error: str | None) -> None:
        """Stop delivering: the writer finishes the write in progress, sends ``error`` (if any)
        instead of what is queued, then closes."""
        self._held = None
        self._lines.items.clear()
        self.goodbye = b"" if error is None else error_line(error)
        self.wakeup.set()


def _effective(flt: ClientFilter | None) -> ClientFilter | None:
    """``None`` for a filter that lets everything through: the hot path then skips the check."""
    return None if flt is None or flt.is_everything else flt


def _filter_of(line: bytes | None) -> ClientFilter | None:
    return None if line is None or not line.strip() else parse_filter(line)


class _LineReader:
    """Lines from a client, bounded by :data:`MAX_FILTER_LINE`; safe to cancel mid-line."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def next_line(self) -> bytes | None:
        """The next line without its newline; ``None`` at a clean end of input."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line
            if len(self._buf) > MAX_FILTER_LINE:
                raise FilterError(f"filter line longer than {MAX_FILTER_LINE} bytes")
            data = await self._stream.receive_some(MAX_FILTER_LINE)
            if not data:
                if self._buf:
                    raise FilterError("filter line not terminated before end of input")
                return None
            self._buf += data


class UnixPublisher:
    """Serves the hub's records to every subscriber of a Unix socket (see the module docstring).

    It is one sink of the hub, attached while it has subscribers. Each offer is written out at
    once — each record encoded once, its line joined once for every subscriber without a filter,
    and one non-blocking write per subscriber — unless the previous flush was too recent:

    **Write coalescing.** After a flush that wrote to n subscribers, the next one comes no
    sooner than (n - 1) x ``write_interval`` later; what arrives meanwhile is written with it,
    in one write per subscriber. A lone subscriber is never held back; a hundred each get one
    write per ~10 ms at most (by default), which bounds the writes (each a system call that
    wakes a reader) at ~10,000 a second beyond the first subscriber's, however many there are.

    Counters: ``clients`` (connected now), ``clients_total``, ``clients_refused`` (over
    ``max_clients``), ``accept_errors`` (e.g. out of file descriptors), ``records_sent``,
    ``records_dropped`` (over all subscribers), ``filter_errors``, ``flushes``.
    """

    wants_encoded = True

    def __init__(
        self,
        hub: Hub,
        path: str,
        *,
        client_buffer: int = 10_000,
        filter_wait: float = 0.1,
        max_clients: int = 256,
        write_interval: float = WRITE_INTERVAL,
    ) -> None:
        if client_buffer < 1:
            raise ValueError(f"client_buffer must be positive, got {client_buffer}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be positive, got {max_clients}")
        if write_interval < 0:
            raise ValueError(f"write_interval must not be negative, got {write_interval}")
        self.hub = hub
        self.path = path
        self.client_buffer = client_buffer
        self.filter_wait = filter_wait
        self.max_clients = max_clients
        self.write_interval = write_interval
        #: the subscribers connected now, in the order they came
        self.subscribers: list[_Subscriber] = []
        #: offers not yet flushed: (records, their lines)
        self._pending: list[tuple[Sequence[MarketData], Sequence[bytes]]] = []
        self._next_flush = -math.inf
        self._flush_due = trio.Event()
        self.clients = 0
        self.clients_total = 0
        self.clients_refused = 0
        self.accept_errors = 0
        self.records_sent = 0
        self.records_dropped = 0
        self.filter_errors = 0
        self.flushes = 0
        self._accepting = trio.CancelScope()
        #: the flusher runs in it until :meth:`finish`
        self._flushing = trio.CancelScope()

    # ---- the hub's side: offers, flushes ------------------------------------------------

    def offer(self, records: Sequence[MarketData], encoded: Sequence[bytes]) -> None:
        """Take a batch from the hub: written at once, or with the next flush when one is near."""
        self._pending.append((records, encoded))
        now = trio.current_time()
        if now >= self._next_flush:
            self._flush(now)
        else:
            self._flush_due.set()

    def notice(self, event: FeedEvent) -> None:
        """A feed event: what is pending goes out first, then the event, in order."""
        if self._pending:
            self._flush(trio.current_time())
        for sub in self.subscribers:
            sub.take_notice(event)

    def _flush(self, now: float) -> None:
        pending, self._pending = self._pending, []
        if len(pending) == 1:
            records, encoded = pending[0]
        else:
            records = [r for batch, _ in pending for r in batch]
            encoded = [line for _, lines in pending for line in lines]
        everything = b"".join(encoded)
        writes = 0
        for sub in self.subscribers:
            writes += sub.take(records, encoded, everything)
        self.flushes += 1
        self._next_flush = now + max(0, writes - 1) * self.write_interval

    async def _flusher(self) -> None:
        """Write what waited for the coalescing interval to pass (until :meth:`finish`)."""
        with self._flushing:
            while True:
                await self._flush_due.wait()
                self._flush_due = trio.Event()
                await trio.sleep_until(self._next_flush)
                if self._pending:
                    self._flush(trio.current_time())

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on :attr:`path` until cancelled; the socket file is removed on the way out.

        Refuses to start (:class:`PublisherError`) when another publisher holds the path's lock
        (:func:`_lock`), another process answers on the path, or the path is something other
        than a socket; a stale socket file is replaced.
        """
        if len(os.fsencode(self.path)) > MAX_PATH_BYTES:
            raise PublisherError(f"socket path {self.path!r} is longer than {MAX_PATH_BYTES} bytes")
        lock = _lock(self.path)
        try:
            listener, inode = await self._listen()
            try:
                # the listener closes first; the nursery then waits for the subscribers to finish
                async with trio.open_nursery() as nursery, listener:
                    nursery.start_soon(self._flusher)
                    logger.info("publishing records on %s", self.path)
                    task_status.started()
                    with self._accepting:
                        await self._accept_loop(listener, nursery)
            finally:
                _remove_if_ours(self.path, inode)
        finally:
            os.close(lock)  # only now: the socket file is gone, the next owner may take the path

    def finish(self) -> None:
        """Stop accepting, and let every subscriber write what it holds and close; then
        :meth:`serve` returns. Called once the hub has handed on its last records."""
        self._accepting.cancel()
        if self._pending:  # what the coalescing interval held back is written now
            self._flush(trio.current_time())
        self._flushing.cancel()
        for sub in self.subscribers:
            sub.finish()
        if waiting := sum(sub.backlog is not None for sub in self.subscribers):
            logger.info("stopping: waiting for %d subscriber(s) to take the records buffered for them",
                        waiting)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept forever. Running out of descriptors pauses accepting (logged once per episode)
        instead of ending the daemon; the clients that came meanwhile wait in the backlog."""
        failures = 0
        refusing = False
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _EXHAUSTION_ERRNOS:
                    raise
                self.accept_errors += 1
                if not failures:
                    logger.warning(
                        "cannot accept subscribers on %s: %s; retrying every %.1f s "
                        "(raise LimitNOFILE, or lower [unix] max_clients)",
                        self.path, exc, ACCEPT_PAUSE,
                    )
                failures += 1
                await trio.sleep(ACCEPT_PAUSE)
                continue
            if failures:
                logger.info("accepting subscribers again on %s (%d failed attempts)", self.path, failures)
                failures = 0
            if self.clients >= self.max_clients:
                self.clients_refused += 1
                if not refusing:
                    logger.warning(
                        "too many subscribers on %s (max %d): refusing new ones", self.path, self.max_clients
                    )
                    refusing = True
                nursery.start_soon(self._refuse, stream)
                continue
            refusing = False
            self.clients += 1
            self.clients_total += 1
            nursery.start_soon(self._serve_client, stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        async with stream:
            await _say_goodbye(stream, error_line(f"too many subscribers (max {self.max_clients})"))

    async def _listen(self) -> tuple[trio.SocketListener, int]:
        path = self.path
        await _claim(path)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        bound = False
        try:
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
        sub = _Subscriber(self, stream, self.client_buffer, self.clients_total)
        # Attached before the filter is read, so nothing published meanwhile is missed.
        self.subscribers.append(sub)
        self.hub.attach(self)
        if self._accepting.cancel_called:  # accepted just before finish(): it has nothing
            sub.finish()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_filters, stream, sub)
                await self._write_loop(stream, sub)
                nursery.cancel_scope.cancel()
        finally:
            self.subscribers.remove(sub)
            if not self.subscribers:
                self.hub.detach(self)
            self.clients -= 1
            # closed only once no flush can write to it: its descriptor may be reused at once
            await trio.aclose_forcefully(stream)

    async def _read_filters(self, stream: trio.SocketStream, sub: _Subscriber) -> None:
        """Read filter lines for the life of the connection; the first one ends the hold."""
        lines = _LineReader(stream)
        try:
            with trio.move_on_after(self.filter_wait):
                line = await lines.next_line()
                sub.start(_filter_of(line))
                if line is None:
                    return  # half-closed before any filter: it still reads
            if sub.holding:
                sub.start(None)
            while (line := await lines.next_line()) is not None:
                if line.strip():
                    sub.set_filter(parse_filter(line))
        except FilterError as exc:
            self.filter_errors += 1
            sub.end(str(exc))
        except trio.BrokenResourceError:  # reset by the client: it is gone
            sub.end(None)

    async def _write_loop(self, stream: trio.SocketStream, sub: _Subscriber) -> None:
        """The subscriber's own task: it finishes writes its socket could not take whole (while
        flushes queue more for it), and says goodbye; returns when the client is gone."""
        try:
            while True:
                await sub.wakeup.wait()
                sub.wakeup = trio.Event()
                if sub.goodbye is not None:
                    with trio.move_on_after(GOODBYE_TIMEOUT):
                        await sub.drain()  # a line cut in half would garble the error after it
                    if sub.goodbye:
                        await _say_goodbye(stream, sub.goodbye)
                    return
                await sub.drain()
                if sub.finishing:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return


def _lock(path: str) -> int:
    """Take ``PATH.lock`` (an exclusive ``flock``) for as long as we own ``path``: the descriptor.

    Checking whether a socket file is stale and then replacing it is two steps: two daemons
    starting together over a stale file could both find nobody answering, and the second would
    unlink the socket the first had just bound. Only the holder of this lock checks, removes or
    binds the path, so that cannot happen; a second daemon finds the lock taken and refuses.
    The kernel drops the lock when its holder dies however it dies (a killed daemon leaves no
    stale lock, only a stale socket for the next holder to replace), and the lock file itself
    is never removed: a daemon that unlinked it could let a third lock a new file while the
    second still holds the old one.
    """
    lock_path = path + ".lock"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PublisherError(f"cannot lock {lock_path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise PublisherError(f"{path} is in use: another feedd owns it") from None
    except OSError as exc:
        os.close(fd)
        raise PublisherError(f"cannot lock {lock_path}: {exc}") from exc
    return fd


async def _claim(path: str) -> None:
    """Make ``path`` free for our socket: remove a stale socket, refuse a live or foreign one
    (a process that is not a feedd, or one that predates the lock). Called holding :func:`_lock`."""
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


async def _say_goodbye(stream: trio.SocketStream, line: bytes) -> None:
    """Send a last line, then wait for the client to close, so it reads that line and not a
    reset; a client that is gone or does not read may not hold the task for long."""
    with trio.move_on_after(GOODBYE_TIMEOUT), contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(line)
        await stream.send_eof()
        while await stream.receive_some(MAX_FILTER_LINE):
            pass
