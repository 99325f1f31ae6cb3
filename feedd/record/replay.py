"""Replay: recorded frames through the same adapters, validation and overlap as live.

Every file of one connection of one daemon run (its parts, in order) is one stream; the streams
of every file named are merged in receive-time order (:func:`heapq.merge`, ties in the order the
daemon did things: the recorder's sequence number). Each attempt gets a fresh session of its
venue, which is told the subscribe, unsubscribe and ping requests the attempt made when it made
them, so the adapter's state (request ids, quote caches, sequence checks) is what it was live;
every venue of a daemon run is one adapter instance, as live. Each batch of frames is decoded
with its recorded receive time and validated against the symbols the venue accepted then (the
``known`` lines); during a rotation the two connections' records go through an
:class:`~feedd.feed.overlap.Overlap`, switched where it switched live. So what comes out is the
records the hub was handed, in the same order, with the same ``received_at``, and the
disconnect/reconnect events between them where they were.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from feedd.exchanges import make_venue
from feedd.exchanges.base import Session, Venue
from feedd.exchanges.fields import QuotedVenue
from feedd.feed.overlap import Overlap
from feedd.feed.validate import Validator
from feedd.model import Batch, FeedEvent, MarketData, Message, Reconnected
from feedd.record import format as fmt
from feedd.record.reader import RecordingError, RecordingFile, expand

#: what replay hands out: (receive time in ns, a batch of records or a feed event)
Item = tuple[int, Batch | FeedEvent]


class _Venue:
    """One venue of one daemon run: its adapter and the symbols its validation accepts."""

    def __init__(self, venue_id: str) -> None:
        self.venue: Venue = make_venue(venue_id)
        self.known: set[str] = set()
        self.check = Validator(self.known).reason
        self.told = False

    def channels(self, recorded: Any) -> None:
        """Which symbols' quote streams gave quote and ticker records (the supervisor's sets)."""
        venue = self.venue
        if not isinstance(venue, QuotedVenue) or not isinstance(recorded, dict):
            return
        for key, kept in (("quotes", venue.quotes.streamed), ("ticker", venue.quotes.ticked)):
            kept.clear()
            kept.update(str(s) for s in recorded.get(key, ()))


class _Stream:
    """One connection of one daemon run: its files in order, its sessions and overlap."""

    def __init__(
        self, index: int, files: list[RecordingFile], venue: _Venue, warn: Callable[[str], None]
    ) -> None:
        self.index = index
        self.files = files
        self.venue = venue
        self.warn = warn
        self.sessions: dict[int, Session] = {}
        self.overlap: Overlap | None = None
        self.old = 0
        self.dropped = 0
        self.header: dict[str, Any] = files[0].header

    def items(self) -> Iterator[tuple[int, int, int, str, Any, int]]:
        """(order, n, stream, kind, payload, t): a batch's frames grouped as one ``"f"`` item.

        ``order`` is the highest time so far in the stream: the merge key, which keeps the
        stream in the order it was recorded (its sequence) even where the wall clock stepped
        back, or where a frame's receive time came a moment before the line recorded before it.
        """
        index = self.index
        high = 0
        b64decode = base64.b64decode
        for file in self.files:
            self.header = file.header
            # the batch being gathered: its frames share one sequence number (bn), time, attempt
            batch: list[Message] = []
            bn = bt = ba = -1
            for parsed in file.parsed():
                for obj in parsed:
                    frame: Message | None = obj.get("f")
                    if frame is None and "b" in obj:
                        frame = b64decode(obj["b"])
                    if frame is not None:
                        n = obj["n"]
                        if n == bn:
                            batch.append(frame)
                            continue
                        if batch:
                            if bt > high:
                                high = bt
                            yield high, bn, index, "f", (ba, batch), bt
                        batch, bn, bt, ba = [frame], n, obj["t"], obj.get("a", 0)
                        continue
                    if batch:
                        if bt > high:
                            high = bt
                        yield high, bn, index, "f", (ba, batch), bt
                        batch, bn = [], -1
                    if "dropped" in obj:
                        self.dropped += int(obj["dropped"])
                        continue
                    t = obj["t"]
                    if t > high:
                        high = t
                    yield high, obj["n"], index, "c", obj, t
            if batch:
                if bt > high:
                    high = bt
                yield high, bn, index, "f", (ba, batch), bt
            if file.problem is not None:
                self.warn(f"{file.path}: {file.problem}; what came before it is replayed")

    # ---- what the live runner did -------------------------------------------------------

    def session(self, attempt: int) -> Session:
        session = self.sessions.get(attempt)
        if session is None:
            # its connect is in an earlier file that is gone: as it was when this file began
            venue = self.venue.venue
            venue.quote_max_age = float(self.header.get("quote_max_age", venue.quote_max_age))
            session = self.sessions[attempt] = venue.new_session()
            session.subscribe(list(self.header.get("attempts", {}).get(str(attempt), ())))
        return session

    def control(self, obj: dict[str, Any]) -> Batch | FeedEvent | None:
        attempt = obj.get("a", 0)
        if "connect" in obj:
            venue = self.venue.venue
            venue.quote_max_age = float(self.header.get("quote_max_age", venue.quote_max_age))
            session = self.sessions[attempt] = venue.new_session()
            session.subscribe(list(obj["connect"]))
        elif "op" in obj:
            session = self.session(attempt)
            topics = list(obj["topics"])
            if obj["op"] == "subscribe":
                session.subscribe(topics)
            else:
                session.unsubscribe(topics)
        elif "ping" in obj:
            self.session(attempt).ping()
        elif "close" in obj:
            if attempt in self.sessions:
                self.sessions.pop(attempt).connection_lost()
        elif "known" in obj:
            known = self.venue.known
            known.clear()
            known.update(obj["known"])
            self.venue.channels(obj.get("channels", {}))
            self.venue.told = True
        elif "event" in obj:
            return fmt.event_of(obj["event"])
        elif "overlap" in obj:
            step = obj["overlap"]
            if step == "start":
                self.overlap = Overlap()
                self.old = int(obj.get("old", 0))
            elif step == "switch" and self.overlap is not None:
                return self.overlap.switch()
            elif step == "end":
                self.overlap = None
        return None

    def decode(self, t: int, attempt: int, frames: list[Message]) -> Batch:
        received_at = fmt.datetime_of(t)
        session = self.sessions.get(attempt)
        decode = (session if session is not None else self.session(attempt)).decode
        check = self.venue.check
        records: Batch = []
        keep = records.append
        for frame in frames:
            for event in decode(frame, received_at):
                if type(event) is MarketData and check(event) is None:
                    keep(event)
        overlap = self.overlap
        if overlap is not None and records:
            records = overlap.old(records) if attempt == self.old else overlap.new(records)
        return records


def open_files(paths: Iterable[str], warn: Callable[[str], None]) -> list[RecordingFile]:
    """Every readable recording among ``paths`` (files, or directories searched); each that is
    not one is named through ``warn`` and skipped."""
    files = []
    for path in expand(paths):
        try:
            files.append(RecordingFile(path))
        except RecordingError as exc:
            warn(f"{exc}; skipped")
    return files


def replay(
    files: Iterable[RecordingFile],
    *,
    venues: Iterable[str] | None = None,
    since: int | None = None,
    until: int | None = None,
    warn: Callable[[str], None] = lambda _: None,
) -> Iterator[Item]:
    """The records (in batches, as the hub got them) and feed events of ``files``, merged in
    receive-time order; ``since``/``until`` (ns) bound the receive times handed out (the frames
    before ``since`` are still decoded: the adapters' state needs them)."""
    wanted = None if venues is None else set(venues)
    chains: dict[tuple[str, str], list[RecordingFile]] = {}
    for file in files:
        if wanted is not None and file.venue not in wanted:
            file.close()
            continue
        chains.setdefault((file.run, file.connection), []).append(file)
    adapters: dict[tuple[str, str], _Venue] = {}
    streams: list[_Stream] = []
    for chain in chains.values():
        chain.sort(key=lambda f: f.part)
        first = chain[0]
        key = (first.daemon, first.venue)
        try:
            venue = adapters.get(key) or adapters.setdefault(key, _Venue(first.venue))
        except KeyError:
            warn(f"{first.path}: unknown venue {first.venue!r}; skipped")
            for file in chain:
                file.close()
            continue
        if not venue.told:
            venue.known.update(first.header.get("known", ()))
            venue.channels(first.header.get("channels", {}))
        streams.append(_Stream(len(streams), chain, venue, warn))
    merged = heapq.merge(*(stream.items() for stream in streams)) if len(streams) > 1 else (
        streams[0].items() if streams else iter(()))
    lo = since if since is not None else -1
    hi = until if until is not None else 1 << 80
    # a batch's records wait for the next item: a reconnect event its reader announced after
    # decoding it goes to the subscribers before them, as live
    ready: Batch = []
    ready_t = 0
    ready_stream = -1
    for _, _, index, kind, payload, t in merged:
        stream = streams[index]
        if kind == "f":
            attempt, frames = payload
            records = stream.decode(t, attempt, frames)
            if ready:
                if lo <= ready_t <= hi:
                    yield ready_t, ready
                ready = []
            if records:
                ready, ready_t, ready_stream = records, t, index
            continue
        out = stream.control(payload)
        if ready and not (type(out) is Reconnected and ready_stream == index):
            if lo <= ready_t <= hi:
                yield ready_t, ready
            ready = []
        if out is not None and (type(out) is not list or out) and lo <= t <= hi:
            yield t, out
        if ready and type(out) is Reconnected:
            if lo <= ready_t <= hi:
                yield ready_t, ready
            ready = []
    if ready and lo <= ready_t <= hi:
        yield ready_t, ready
    lost = sum(stream.dropped for stream in streams)
    if lost:
        warn(f"the recorder had dropped {lost} frame(s) in these files (its buffer full, or a "
             "write error): records between are missing")
