"""``feedd tail --nats URL``: read records from the JetStream stream, replaying from a time.

An ephemeral, ordered push consumer: the server delivers the stream's messages in order from
the chosen start (``--since``: that long ago; else only new ones), filtered by subject, without
acks; flow control keeps it from sending faster than we read, and a consumer sequence that
skips (the server dropped messages for a slow reader) makes the consumer be created again from
the next stream sequence, so nothing is skipped silently. The consumer goes away with us.
"""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import trio

from feedd.cli.tail import format_record
from feedd.errors import NatsError, TailError
from feedd.fanout.lines import KINDS, decode_record
from feedd.fanout.nats import subject_for
from feedd.nats.client import Credentials, NatsClient, open_client
from feedd.nats.jetstream import NS, api_request, start_time
from feedd.nats.protocol import Msg, parse_headers, pub
from feedd.nats.servers import parse_server

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: the server sends a heartbeat this often while nothing matches
IDLE_HEARTBEAT = 5.0
#: a JetStream API call answers within this, or the tail gives up
API_BOUND = 10.0


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``10m``, ``30s``, ``2h``, ``1d`` ago, or an RFC 3339 time; ValueError says what it takes."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match is not None:
        return now - timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected a duration such as 30s, 10m, 2h, 1d, or an RFC 3339 time, got {text!r}") \
            from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def filter_subjects(
    prefix: str, venues: Iterable[str], kinds: Iterable[str], symbols: Iterable[str]
) -> list[str]:
    """The subjects a filter picks (``*`` for a field not given)."""
    venue_list = list(dict.fromkeys(v.lower() for v in venues)) or ["*"]
    kind_list = list(dict.fromkeys(KINDS.get(k, k) for k in kinds)) or ["*"]
    symbol_list = list(dict.fromkeys(s.upper() for s in symbols)) or ["*"]
    return [
        f"{prefix}.{venue}.{kind}.*" if symbol == "*" else subject_for(prefix, venue, kind, symbol)
        for venue in venue_list for kind in kind_list for symbol in symbol_list
    ]


class _Consumer:
    """One ephemeral push consumer and the messages it delivered, not yet printed."""

    def __init__(self, client: NatsClient, stream: str, subjects: Sequence[str]) -> None:
        self.client = client
        self.stream = stream
        self.subjects = subjects
        self.queue: deque[Msg] = deque()
        self.arrived = trio.Event()
        self.sid: int | None = None
        self.name: str | None = None
        #: the next consumer sequence expected, and the last stream sequence printed
        self.expected = 1
        self.last_stream_seq = 0

    def _deliver(self, msg: Msg) -> None:
        self.queue.append(msg)
        self.arrived.set()

    async def create(self, start: dict[str, Any]) -> None:
        """A new consumer delivering from ``start`` (``deliver_policy`` and its option)."""
        if self.sid is not None:
            await self.client.unsubscribe(self.sid)
        self.queue.clear()
        subject = f"{self.client.inbox.decode()}.deliver{self.client.messages_in}"
        self.sid = await self.client.subscribe(subject, self._deliver)
        config: dict[str, Any] = {
            "deliver_subject": subject, "ack_policy": "none", "max_deliver": 1, "flow_control": True,
            "idle_heartbeat": int(IDLE_HEARTBEAT * NS), "mem_storage": True, "num_replicas": 1,
            "inactive_threshold": int(60 * NS), **start,
        }
        if len(self.subjects) == 1:
            config["filter_subject"] = self.subjects[0]
        else:
            config["filter_subjects"] = list(self.subjects)
        with trio.fail_after(API_BOUND):
            answer = await api_request(self.client, f"$JS.API.CONSUMER.CREATE.{self.stream}",
                                       {"stream_name": self.stream, "config": config})
        self.name = str(answer.get("name"))
        self.expected = 1


def _sequences(reply: bytes | None) -> tuple[int, int] | None:
    """(stream sequence, consumer sequence) from a delivery's ``$JS.ACK...`` reply subject."""
    if reply is None:
        return None
    tokens = reply.split(b".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[6])
    if len(tokens) >= 12:  # with domain and account hash: two more tokens after ACK
        return int(tokens[7]), int(tokens[8])
    return None


async def tail_nats(
    url: str,
    *,
    stream: str = "FEEDD",
    prefix: str = "feedd",
    venues: Iterable[str] = (),
    symbols: Iterable[str] = (),
    kinds: Iterable[str] = (),
    since: datetime | None = None,
    limit: int | None = None,
    credentials: str | None = None,
    out: TextIO | None = None,
) -> int:
    """Print the stream's records (from ``since``, else new ones) until ``limit``; the count."""
    if out is None:
        out = sys.stdout
    try:
        address = parse_server(url)
    except ValueError as exc:
        raise TailError(str(exc)) from None
    subjects = filter_subjects(prefix, venues, kinds, symbols)
    count = 0
    try:
        login = Credentials(credentials_file=credentials)
        async with open_client(address, login, name="feedd tail") as client:
            consumer = _Consumer(client, stream, subjects)
            start: dict[str, Any] = {"deliver_policy": "new"} if since is None else \
                {"deliver_policy": "by_start_time", "opt_start_time": start_time(since)}
            await consumer.create(start)
            if limit is not None and limit <= 0:
                return 0
            while True:
                await consumer.arrived.wait()
                consumer.arrived = trio.Event()
                while consumer.queue:
                    msg = consumer.queue.popleft()
                    if msg.headers and (status := parse_headers(msg.headers)).status == 100:
                        if "FlowControl" in status.description and msg.reply:
                            await client.send(pub(msg.reply, b""))
                        continue
                    sequences = _sequences(msg.reply)
                    if sequences is not None:
                        stream_seq, consumer_seq = sequences
                        if consumer_seq != consumer.expected:  # skipped: start over, after the last
                            await consumer.create({"deliver_policy": "by_start_sequence",
                                                   "opt_start_seq": consumer.last_stream_seq + 1})
                            break
                        consumer.expected += 1
                        consumer.last_stream_seq = stream_seq
                    try:
                        record = decode_record(msg.payload)
                    except (KeyError, TypeError, ValueError) as exc:
                        raise TailError(f"unreadable message on {msg.subject.decode(errors='replace')}: "
                                        f"{msg.payload[:80]!r}") from exc
                    out.write(format_record(record) + "\n")
                    count += 1
                    if limit is not None and count >= limit:
                        out.flush()
                        return count
                out.flush()
    except NatsError as exc:
        raise TailError(f"{exc}") from exc
    except trio.TooSlowError:
        raise TailError(f"{address}: no answer from the JetStream API within {API_BOUND:g} s") from None
