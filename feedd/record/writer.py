"""The recorder: every frame each connection receives, on disk with its receive time.

It implements the feed's :class:`~feedd.feed.tap.Tap`. The feed's cost is one non-blocking put
per batch of frames (a deque append and a counter); everything else happens in the recorder's
own task, which wakes every :data:`TICK` seconds (or sooner when a quarter of its buffer is
full), turns what accumulated into lines, compresses them and writes them in one ``write`` per
file.

Backpressure: the buffer holds at most ``buffer`` frames; a batch that does not fit is dropped
whole (drop-newest: what is queued stays a coherent stretch of the stream), counted, and marked
in the file by a ``dropped`` line where it would have been. Connects, requests, pings, closes,
events and overlap steps are never dropped (a handful per connection; replay needs them to keep
each session's state right).

Failures never reach the feed: a failed open or write is counted, logged once (and once more
when writing works again), the file is given up (its lost frames are counted as dropped), and
the recorder tries again with a new file after :data:`RETRY_AFTER` seconds.

Durability: each file's compressor is flushed to disk every :data:`FLUSH_INTERVAL` seconds (a
zstd block flush, a zlib sync flush), so a crash loses at most that much plus what was queued;
the reader skips the truncated tail. Rotation and the task's end (the daemon's stop, SIGTERM)
finish and close every file.

Disk writes stay on the trio loop: one write per file per tick, of data already compressed
(see docs/recording.md for the measurement that decided it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import trio
import zstandard

from feedd.config import RecordConfig
from feedd.exchanges.base import Venue
from feedd.feed.tap import OverlapStep
from feedd.model import FeedEvent, Message
from feedd.record import format as fmt

log = logging.getLogger(__name__)

#: seconds between the recorder's wakeups
TICK = 0.2
#: seconds between flushes of each file's compressor to disk (what a crash can lose)
FLUSH_INTERVAL = 1.0
#: seconds the recorder waits after a failed open or write before it tries a new file
RETRY_AFTER = 5.0
#: zstd level: 3 (zstd's default) compressed recorded frames ~10x at well under 1 µs a frame
ZSTD_LEVEL = 3

Opener = Callable[[str], BinaryIO]


def _open(path: str) -> BinaryIO:
    return open(path, "xb", buffering=0)


class _Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...
    def finish(self) -> bytes: ...


class _Zstd:
    def __init__(self) -> None:
        self._c = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


class _Gzip:
    def __init__(self) -> None:
        self._c = zlib.compressobj(6, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._c.flush(zlib.Z_FINISH)


class _Plain:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""

    def finish(self) -> bytes:
        return b""


def _compressor(kind: str) -> _Compressor:
    return _Zstd() if kind == "zstd" else _Gzip() if kind == "gzip" else _Plain()


class _File:
    """One open recording file: its compressor and the lines not yet compressed."""

    def __init__(self, path: str, handle: BinaryIO, compress: str, now: float) -> None:
        self.path = path
        self.handle = handle
        self.compressor = _compressor(compress)
        self.lines: list[bytes] = []
        #: frames among :attr:`lines` (lost with them if the write fails)
        self.frames = 0
        self.size = 0
        self.opened_at = now
        self.flushed_at = now

    def write(self, data: bytes) -> int:
        if data:
            view = memoryview(data)
            while view:
                written = self.handle.write(view)
                if not written:
                    raise OSError("write returned nothing")
                view = view[written:]
            self.size += len(data)
        return len(data)


class Connection:
    """The recorder's tap of one connection: puts what happened on the recorder's queue."""

    def __init__(self, recorder: Recorder, venue: Venue, name: str, url: str) -> None:
        self.recorder = recorder
        self.venue = venue
        self.name = name
        self.url = url
        self.run = f"{recorder.run_id}/{name}"
        self.part = 0
        self.file: _File | None = None
        #: the open attempts and their topics (for a new part's header)
        self.attempts: dict[int, list[str]] = {}
        self._next_attempt = 0
        #: frames dropped since the last line written to this connection's file
        self.gap = 0

    # ---- the tap (called from the feed's tasks: append and return) -----------------------

    def connected(self, topics: Sequence[str], frames: Sequence[Message]) -> int:
        self._next_attempt += 1
        attempt = self._next_attempt
        self.recorder.put((self, "connect", attempt, (list(topics), fmt.texts(frames))))
        return attempt

    def received(self, attempt: int, at: datetime, frames: Sequence[Message]) -> None:
        recorder = self.recorder
        count = len(frames)
        if recorder.queued_frames + count > recorder.buffer:
            recorder.dropped += count
            queue = recorder.queue
            last = queue[-1] if queue else None
            if last is not None and last[0] is self and last[1] == "gap":
                last[5][0] += count
            else:  # marks the place in the stream: written there
                recorder.sequence += 1
                queue.append((self, "gap", recorder.sequence, 0, 0, [count]))
            return
        recorder.queued_frames += count
        recorder.sequence += 1
        recorder.queue.append((self, "f", recorder.sequence, at, attempt, frames))
        if recorder.queued_frames >= recorder.wake_at and not recorder.woken:
            recorder.woken = True
            recorder.wake.set()

    def requested(self, attempt: int, op: str, topics: Sequence[str], frames: Sequence[Message]) -> None:
        self.recorder.put((self, "op", attempt, (op, list(topics), fmt.texts(frames))))

    def pinged(self, attempt: int, frame: Message) -> None:
        self.recorder.put((self, "ping", attempt, fmt.texts([frame])[0]))

    def closed(self, attempt: int, reason: str) -> None:
        self.recorder.put((self, "close", attempt, reason))

    def event(self, event: FeedEvent) -> None:
        # at its own time (the datetime its line carries), which is when it was made
        fields = fmt.event_fields(event)
        self.recorder.put((self, "event", 0, fields), at=fields["at"])

    def overlap(self, step: OverlapStep, old: int = 0, new: int = 0) -> None:
        self.recorder.put((self, "overlap", old, step))


class Recorder:
    """Records the frames of every connection of the venues it is told (all, by default)."""

    def __init__(
        self,
        directory: str,
        *,
        rotate: float = 3600.0,
        compress: str = "zstd",
        max_bytes: int = 0,
        venues: Sequence[str] = (),
        buffer: int = 100_000,
        opener: Opener | None = None,
        version: str = "",
    ) -> None:
        self.directory = directory
        self.rotate = rotate
        self.compress = compress
        self.max_bytes = max_bytes
        self.venues = frozenset(venues)
        self.buffer = buffer
        self.opener = opener or _open
        self.version = version
        self.run_id = f"{time.time_ns():x}-{os.getpid()}"
        #: (connection, kind, sequence, time, attempt, payload) in the order they happened
        self.queue: deque[tuple[Any, ...]] = deque()
        self.queued_frames = 0
        self.wake_at = max(1, buffer // 4)
        self.wake = trio.Event()
        self.woken = False
        self.sequence = 0
        #: the connections with a file open or an attempt live (an idle one is let go at its
        #: rotation and taken back when it records again), in the order they came
        self.connections: dict[Connection, None] = {}
        #: per venue, the symbols its validation accepts (the latest ``known`` line)
        self._known: dict[str, list[str]] = {}
        #: per venue, the symbols of each channel sharing a wire stream (quotes, ticker)
        self._channels: dict[str, dict[str, list[str]]] = {}
        # counters, for the status and metrics
        self.files = 0
        self.bytes = 0
        self.frames = 0
        self.dropped = 0
        self.errors = 0
        self.deleted = 0
        self.last_error: str | None = None
        self._failing = False
        self._retry_at = -float("inf")
        #: closed files (path, size), oldest first, for max_bytes
        self._closed: deque[tuple[str, int]] = deque()
        self._closed_bytes = 0

    @classmethod
    def from_config(cls, config: RecordConfig) -> Recorder:
        try:  # feedd's own __version__ would be an import of the package above every layer
            version = metadata.version("feedd")
        except metadata.PackageNotFoundError:
            version = "unknown"
        return cls(config.dir, rotate=config.rotate, compress=config.compress, max_bytes=config.max_bytes,
                   venues=config.venues, buffer=config.buffer, version=version)

    # ---- the tap ----------------------------------------------------------------------------

    def connection(self, venue: Venue, name: str, url: str) -> Connection | None:
        if self.venues and venue.venue_id not in self.venues:
            return None
        conn = Connection(self, venue, name, url)
        self.connections[conn] = None
        return conn

    def known(self, venue: str, symbols: Sequence[str], channels: Mapping[str, Sequence[str]]) -> None:
        if self.venues and venue not in self.venues:
            return
        self._known[venue] = list(symbols)
        self._channels[venue] = {k: list(v) for k, v in channels.items()}
        for conn in self.connections:
            if conn.venue.venue_id == venue:
                self.put((conn, "known", 0, (list(symbols), self._channels[venue])))

    def put(self, item: tuple[Any, ...], at: int | None = None) -> None:
        """A control item (at ``at`` ns, else now): never dropped."""
        self.sequence += 1
        conn, kind, attempt, payload = item
        self.queue.append((conn, kind, self.sequence, time.time_ns() if at is None else at, attempt, payload))

    # ---- status ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "dir": self.directory,
            "compress": self.compress,
            "files": self.files,
            "open_files": sum(1 for c in self.connections if c.file is not None),
            "bytes": self.bytes,
            "kept_bytes": self._closed_bytes + sum(c.file.size for c in self.connections if c.file),
            "frames": self.frames,
            "dropped": self.dropped,
            "queued": self.queued_frames,
            "errors": self.errors,
            "deleted": self.deleted,
            "last_error": self.last_error,
        }

    # ---- the task ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write until cancelled; then write what is queued and close every file."""
        self._scan()
        task_status.started()
        try:
            while True:
                with trio.move_on_after(TICK):
                    await self.wake.wait()
                self.wake = trio.Event()
                self.woken = False
                self.write_out(trio.current_time())
        finally:
            self.close(trio.current_time())

    def write_out(self, now: float, *, final: bool = False) -> None:
        """Turn the queue into lines, and write every file whose flush (or rotation) is due."""
        self._drain(now)
        for conn in list(self.connections):
            file = conn.file
            if file is None:
                if not conn.attempts:
                    del self.connections[conn]  # a shard gone, or one long disconnected
                continue
            rotate = final or now - file.opened_at >= self.rotate
            if rotate or now - file.flushed_at >= FLUSH_INTERVAL or len(file.lines) > 4096:
                self._write(conn, file, now, flush=rotate or now - file.flushed_at >= FLUSH_INTERVAL,
                            finish=rotate)
        self._prune()

    def close(self, now: float) -> None:
        """Write what is queued, finish and close every file (the daemon's stop)."""
        self.write_out(now, final=True)

    # ---- lines ---------------------------------------------------------------------------------

    def _drain(self, now: float) -> None:
        queue = self.queue
        frame_line = fmt.frame_line
        ns_of = fmt.ns_of
        while queue:
            conn, kind, n, t, attempt, payload = queue.popleft()
            if kind == "gap":
                conn.gap += payload[0]
                continue
            if kind == "f":
                self.queued_frames -= len(payload)
            file = self._file_of(conn, now)
            if kind == "f":
                if file is None:
                    self.dropped += len(payload)
                    conn.gap += len(payload)
                    continue
                t = ns_of(t)
                if conn.gap:
                    file.lines.append(fmt.line(t, n, {"dropped": conn.gap}))
                    conn.gap = 0
                file.lines.extend([frame_line(t, n, attempt, frame) for frame in payload])
                file.frames += len(payload)
                continue
            # control items keep the connection's state even when nothing can be written
            fields: dict[str, Any]
            if kind == "connect":
                topics, sent = payload
                conn.attempts[attempt] = topics
                fields = {"a": attempt, "connect": topics, "sent": sent}
            elif kind == "op":
                op, topics, sent = payload
                carried = set(conn.attempts.get(attempt, ()))
                carried = carried | set(topics) if op == "subscribe" else carried - set(topics)
                conn.attempts[attempt] = sorted(carried)
                fields = {"a": attempt, "op": op, "topics": topics, "sent": sent}
            elif kind == "ping":
                fields = {"a": attempt, "ping": payload}
            elif kind == "close":
                conn.attempts.pop(attempt, None)
                fields = {"a": attempt, "close": payload}
            elif kind == "event":
                fields = {"event": payload}
            elif kind == "overlap":
                fields = {"overlap": payload, "old": attempt} if payload == "start" else {"overlap": payload}
            else:  # known
                fields = {"known": payload[0], "channels": payload[1]}
            if file is not None:
                if conn.gap:
                    file.lines.append(fmt.line(t, n, {"dropped": conn.gap}))
                    conn.gap = 0
                file.lines.append(fmt.line(t, n, fields))

    def _file_of(self, conn: Connection, now: float) -> _File | None:
        """The connection's open file, opened now if need be (None while writing fails)."""
        if conn.file is not None:
            return conn.file
        if now < self._retry_at:
            return None
        conn.part += 1
        opened = datetime.now(UTC)
        folder = Path(self.directory) / conn.venue.venue_id
        path = str(folder / fmt.file_name(conn.name, opened, self.compress))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = self.opener(path)
        except OSError as exc:
            self._failed(f"cannot open {path}: {exc}", now)
            return None
        file = _File(path, handle, self.compress, now)
        conn.file = file
        self.connections[conn] = None
        self.files += 1
        latest = max(conn.attempts) if conn.attempts else None
        file.lines.append(fmt.header_line(
            format_version=fmt.VERSION, feedd=self.version, venue=conn.venue.venue_id, url=conn.url,
            connection=conn.name, run=conn.run, part=conn.part, opened=fmt.ns_of(opened),
            compress=self.compress,
            subscriptions=conn.attempts[latest] if latest is not None else [],
            attempts={str(a): topics for a, topics in conn.attempts.items()},
            known=self._known.get(conn.venue.venue_id, []),
            channels=self._channels.get(conn.venue.venue_id, {}),
            quote_max_age=conn.venue.quote_max_age,
        ))
        return file

    # ---- the disk ------------------------------------------------------------------------------

    def _write(self, conn: Connection, file: _File, now: float, *, flush: bool, finish: bool) -> None:
        lines, file.lines = file.lines, []
        frames, file.frames = file.frames, 0
        try:
            compressor = file.compressor
            data = compressor.compress(b"".join(lines)) if lines else b""
            if finish:
                data += compressor.finish()
            elif flush:
                data += compressor.flush()
            self.bytes += file.write(data)
        except OSError as exc:
            self.dropped += frames
            self._failed(f"cannot write {file.path}: {exc}", now)
            self._give_up(conn, file)
            return
        self.frames += frames
        if flush:
            file.flushed_at = now
        if self._failing:
            self._failing = False
            log.info("recorder: writing again (%s)", file.path)
        if finish:
            conn.file = None
            try:
                file.handle.close()
            except OSError as exc:
                self._failed(f"cannot close {file.path}: {exc}", now)
            self._closed.append((file.path, file.size))
            self._closed_bytes += file.size

    def _give_up(self, conn: Connection, file: _File) -> None:
        conn.file = None
        with contextlib.suppress(OSError):
            file.handle.close()
        self._closed.append((file.path, file.size))
        self._closed_bytes += file.size

    def _failed(self, error: str, now: float) -> None:
        self.errors += 1
        self.last_error = error
        self._retry_at = now + RETRY_AFTER
        if not self._failing:
            self._failing = True
            log.error("recorder: %s; the feed goes on, frames are dropped (counted) until a new "
                      "file can be written (retrying every %g s)", error, RETRY_AFTER)

    def _scan(self) -> None:
        """Files already in the directory count toward ``max_bytes`` (oldest deleted first)."""
        root = Path(self.directory)
        if not root.is_dir():
            return
        found = []
        for path in root.rglob("*"):
            if path.name.endswith(tuple(fmt.SUFFIXES.values())) and path.is_file():
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    found.append((stat.st_mtime, str(path), stat.st_size))
        for _, path_name, size in sorted(found):
            self._closed.append((path_name, size))
            self._closed_bytes += size

    def _prune(self) -> None:
        if not self.max_bytes:
            return
        open_bytes = sum(c.file.size for c in self.connections if c.file is not None)
        while self._closed and self._closed_bytes + open_bytes > self.max_bytes:
            path, size = self._closed.popleft()
            self._closed_bytes -= size
            try:
                os.unlink(path)
                self.deleted += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.errors += 1
                self.last_error = f"cannot delete {path}: {exc}"
