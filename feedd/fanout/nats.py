"""Publish every record to a NATS JetStream stream, so consumers anywhere can read and replay it.

Subjects are ``<prefix>.<venue>.<kind>.<symbol>`` (``feedd.binance.trade.BTCUSDT``), so a
consumer picks with wildcards (``feedd.*.trade.BTCUSDT``, ``feedd.bybit.>``); the payload is the
record's JSON line, the very bytes the Unix socket sends. Each message carries ``Nats-Msg-Id``
``<venue>:<kind>:<symbol>:<trade id>`` (a ticker, or a trade without an id: the exchange
timestamp in microseconds instead), so the stream stores one copy of a record however many
daemons publish it within its duplicate window: two daemons on the same venue, an active-active
pair, store each trade once; and a batch published again after a reconnect stores nothing twice.

Backpressure: :meth:`NatsSink.offer` only appends to the sink's own bounded buffer and never
blocks; :meth:`NatsSink.run`, a task of its own, takes up to ``batch`` records at a time and
writes them in one write, with up to :data:`WINDOW` batches awaiting their acks at once (a batch
is done when all its acks are in; records arriving meanwhile make the next batches bigger).
When NATS is slow or away the buffer fills and its oldest records are dropped: counted, logged
when a gap begins and when the sink has caught up again (one gap however long the overload),
and never felt by the feed or the other sinks. The task reconnects by itself (backoff with
jitter, the configured servers in turn); the batches in flight when a connection is lost are
published again first on the next one.
"""

from __future__ import annotations

import logging
import math
import socket
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import trio

from feedd.config import NatsConfig
from feedd.errors import NatsError
from feedd.fanout.buffer import DropOldest
from feedd.feed.backoff import Backoff
from feedd.model import FeedEvent, MarketData
from feedd.nats.client import Credentials, NatsClient, open_client
from feedd.nats.jetstream import BatchAcks, StreamSettings, ensure_stream, send_batch
from feedd.nats.servers import parse_server

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: characters a subject token cannot hold, replaced in symbols
_SUBJECT_UNSAFE = str.maketrans({".": "_", "*": "_", ">": "_", " ": "_"})
#: keys (venue, kind, symbol) remembered; more (a symbol churn) starts the cache over
_MAX_KEYS = 100_000

NatsMessage = tuple[bytes, bytes, bytes]
#: batches in flight at once: the next is written while the acks of the last are coming, so the
#: sink is not held to one batch per round trip (nor per turn of a busy event loop)
WINDOW = 4


@attrs.define
class _Batch:
    """A batch written (or being written) on the current connection, and its acks."""

    messages: list[NatsMessage]
    acks: BatchAcks
    #: trio time by which every ack must be in
    deadline: float
    token: bytes | None = None


def subject_for(prefix: str, venue: str, kind: str, symbol: str) -> str:
    """The subject a record of ``venue``/``kind``/``symbol`` goes to (dots in symbols become ``_``)."""
    return f"{prefix}.{venue}.{kind}.{symbol.translate(_SUBJECT_UNSAFE)}"


def message_id(record: MarketData) -> str:
    """``Nats-Msg-Id``: the same for the same trade (or ticker update) from any daemon.

    A quote adds its prices and sizes to its time: a venue's book can move twice within one
    millisecond of its clock, and JetStream would drop the second as a duplicate.
    """
    tag = record.trade_id if record.kind == "trade" and record.trade_id is not None else \
        str((record.timestamp - _EPOCH) // _MICROSECOND)
    if record.kind == "quote":
        tag = f"{tag}:{record.bid}:{record.bid_size}:{record.ask}:{record.ask_size}"
    if not tag.isprintable():  # an exchange's id must not break the header line
        tag = tag.encode("unicode_escape").decode()
    return f"{record.exchange}:{record.kind}:{record.symbol}:{tag}"


def stream_settings(config: NatsConfig) -> StreamSettings:
    return StreamSettings(
        name=config.stream,
        subjects=(f"{config.subject_prefix}.>",),
        max_age=config.max_age,
        max_bytes=config.max_bytes,
        duplicate_window=config.duplicate_window,
        replicas=config.replicas,
    )


class NatsSink:
    """The hub's NATS sink (see the module docstring). Counters, for status and metrics:
    ``published`` records written (a batch sent again counts again), ``acked`` records the stream
    confirmed (``duplicates`` of them were already stored), ``rejected`` records it refused,
    ``dropped`` records lost to a full buffer over ``gaps`` gaps, ``reconnects``."""

    wants_encoded = True

    def __init__(
        self,
        config: NatsConfig,
        *,
        connect_timeout: float = 5.0,
        reconnect_interval: float = 0.5,
        max_backoff: float = 5.0,
    ) -> None:
        self.config = config
        self.settings = stream_settings(config)
        self._servers = [parse_server(url) for url in config.servers]
        self._credentials = Credentials(token=config.token, credentials_file=config.credentials)
        self._prefix = config.subject_prefix
        self._capacity = config.buffer
        self._pending: DropOldest[tuple[MarketData, bytes]] = DropOldest(config.buffer)
        #: batches written and awaiting their acks, oldest first
        self._inflight: deque[_Batch] = deque()
        #: batches to write again first (they were in flight when a connection was lost)
        self._resend: deque[list[NatsMessage]] = deque()
        self._wakeup = trio.Event()
        #: set (and replaced) whenever a batch is done with, or a connection ends
        self._progress = trio.Event()
        self._keys: dict[tuple[str, str, str], tuple[bytes, str]] = {}
        self.connect_timeout = connect_timeout
        self.backoff = Backoff(reconnect_interval, max_backoff)
        self.name = f"feedd@{socket.gethostname()}"
        #: the server connected to now (with the stream checked), else None
        self.server: str | None = None
        self.published = 0
        self.acked = 0
        self.duplicates = 0
        self.rejected = 0
        self.dropped = 0
        self.gaps = 0
        self.reconnects = 0
        self.last_error: str | None = None
        #: records dropped in the gap going on now (0: none)
        self._gap = 0
        #: connection failures in a row (the first is a warning, the rest debug lines)
        self._failures = 0

    @property
    def connected(self) -> bool:
        return self.server is not None

    @property
    def buffered(self) -> int:
        """Records waiting: in the buffer, in batches awaiting their acks or to be sent again."""
        held = sum(len(b.messages) for b in self._inflight) + sum(len(m) for m in self._resend)
        return len(self._pending) + held

    # ---- the hub's side -----------------------------------------------------------------

    def offer(self, records: Sequence[MarketData], encoded: Sequence[bytes]) -> None:
        if overflow := self._pending.add(zip(records, encoded, strict=True), len(records)):
            self._lost(overflow)
        self._wakeup.set()

    def notice(self, event: FeedEvent) -> None:
        """Feed events stay off the stream: they are one daemon's news, and with an
        active-active pair one daemon's disconnect is no gap in the stream the other feeds."""

    def _lost(self, count: int) -> None:
        self.dropped += count
        if not self._gap:
            self.gaps += 1
            log.warning("nats: buffer full (%d records; %s): dropping the oldest", self._capacity,
                        f"publishing to {self.server}" if self.connected else "not connected")
        self._gap += count

    # ---- status -------------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why the sink is not publishing, for health; None while it is connected."""
        if self.connected:
            return None
        why = f": {self.last_error}" if self.last_error else ""
        return f"nats: not connected{why}"

    def snapshot(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "server": self.server,
            "stream": self.settings.name,
            "subject_prefix": self._prefix,
            "published": self.published,
            "acked": self.acked,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "gaps": self.gaps,
            "buffered": self.buffered,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    # ---- the sink's task ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, check the stream, publish; on any failure wait (backoff) and do it again."""
        task_status.started()
        attempt = 0
        while True:
            address = self._servers[attempt % len(self._servers)]
            attempt += 1
            try:
                async with open_client(address, self._credentials, name=self.name,
                                       connect_timeout=self.connect_timeout) as client:
                    await self._check_stream(client)
                    self._connected(client)
                    await self._publish(client)
            except NatsError as exc:
                self._failed(str(exc))
            except trio.TooSlowError:
                self._failed(f"{address}: no answer from the JetStream API within {self.connect_timeout:g} s")
            finally:
                self.server = None
                self._progressed()
            await trio.sleep(self.backoff.next_delay())

    async def _check_stream(self, client: NatsClient) -> None:
        with trio.fail_after(self.connect_timeout):
            differences = await ensure_stream(client, self.settings)
        if differences:
            log.warning("nats: stream %s exists with other settings; left as it is: %s",
                        self.settings.name, "; ".join(differences))

    def _connected(self, client: NatsClient) -> None:
        self.server = str(client.address)
        if self._failures > 1:
            log.info("nats: connected to %s after %d failed attempt(s), stream %s",
                     self.server, self._failures, self.settings.name)
        else:
            log.info("nats: connected to %s, stream %s", self.server, self.settings.name)
        self._failures = 0
        self.backoff.reset()
        self._progressed()

    def _failed(self, error: str) -> None:
        if self.connected:
            self.reconnects += 1
        self.last_error = error
        self._failures += 1
        if self._failures == 1:
            log.warning("nats: %s (retrying; %d record(s) buffered)", error, self.buffered)
        else:
            log.debug("nats: attempt %d failed: %s", self._failures, error)

    async def _publish(self, client: NatsClient) -> None:
        """Keep up to :data:`WINDOW` batches in flight, each written at once, settled in order
        as their acks complete; what was in flight on the last connection goes first, again."""
        buffer, inflight, resend = self._pending, self._inflight, self._resend
        self._settle(None)  # acked in full on the last connection, not yet counted
        resend.extendleft(reversed([batch.messages for batch in inflight]))
        inflight.clear()
        while True:
            self._wakeup = trio.Event()  # set by offers and by a batch's last ack
            self._settle(client)
            if inflight and trio.current_time() >= inflight[0].deadline:
                missing = inflight[0].acks.expected - inflight[0].acks.received
                raise NatsError(f"{client.address}: {missing} of {inflight[0].acks.expected} acks missing "
                                f"after {self.config.ack_timeout:g} s")
            pending = buffer.items  # replaced by nothing: the sink never swaps it
            if len(inflight) < WINDOW and (resend or pending):
                if resend:
                    messages = resend.popleft()
                else:
                    take = min(len(pending), self.config.batch)
                    messages = self._messages([pending.popleft() for _ in range(take)])
                acks = BatchAcks(len(messages), self._wake)
                batch = _Batch(messages, acks, trio.current_time() + self.config.ack_timeout)
                inflight.append(batch)  # before the write: a failed write sends it again
                batch.token = await send_batch(client, messages, acks)
                self.published += len(messages)
                continue
            with trio.move_on_at(inflight[0].deadline if inflight else math.inf):
                await self._wakeup.wait()

    def _wake(self) -> None:
        self._wakeup.set()

    def _settle(self, client: NatsClient | None) -> None:
        """Account for the batches at the head whose acks are all in (``client``: the
        connection their replies came on, if it is still open)."""
        inflight = self._inflight
        while inflight and inflight[0].acks.done.is_set():
            batch = inflight.popleft()
            if batch.token is not None and client is not None:
                client.forget_reply(batch.token)
            acks = batch.acks
            self.acked += acks.acked
            self.duplicates += acks.duplicates
            if acks.error_count:
                self.rejected += acks.error_count
                self.last_error = f"stream refused {acks.error_count} record(s): {acks.errors[0]}"
                log.warning("nats: %s", self.last_error)
            self._progressed()
        if self._gap and not self._pending and not inflight and not self._resend:  # caught up
            log.warning("nats: %d record(s) were dropped in that gap; caught up again", self._gap)
            self._gap = 0

    def _messages(self, items: list[tuple[MarketData, bytes]]) -> list[NatsMessage]:
        """``(subject, message id, payload)`` per record, subjects and id prefixes cached."""
        keys = self._keys
        out: list[NatsMessage] = []
        for record, line in items:
            key = (record.exchange, record.kind, record.symbol)
            cached = keys.get(key)
            if cached is None:
                if len(keys) >= _MAX_KEYS:
                    keys.clear()
                cached = keys[key] = (subject_for(self._prefix, *key).encode(), ":".join(key) + ":")
            subject, id_prefix = cached
            trade_id = record.trade_id
            if record.kind == "trade" and trade_id is not None and trade_id.isprintable():
                msg_id = (id_prefix + trade_id).encode()
            else:
                msg_id = message_id(record).encode()
            out.append((subject, msg_id, line))
        return out

    async def progressed(self) -> None:
        """Wait until something changes: a batch acked, a connection made, lost or failed."""
        await self._progress.wait()

    async def flushed(self) -> None:
        """Return once everything offered so far is acked (at once when not connected: a stop
        does not wait for a server that is away)."""
        while self.connected and self.buffered:
            await self._progress.wait()

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()
