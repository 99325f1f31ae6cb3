"""The JetStream API feedd uses, over :class:`~feedd.nats.client.NatsClient`.

JetStream is driven by requests to ``$JS.API.*`` subjects with JSON bodies
(https://docs.nats.io/reference/reference-protocols/nats_api_reference). A publish into a stream
is a plain publish with a reply subject; the stream answers each message with a publish ack
(``{"stream": "FEEDD", "seq": 12, "duplicate": true}`` or ``{"error": {...}}``). feedd publishes
a whole batch in one write, every message with the batch's reply subject, and counts the acks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import orjson
import trio

from feedd.errors import JetStreamError
from feedd.nats.client import NatsClient, decode_json
from feedd.nats.protocol import Msg, parse_headers

log = logging.getLogger(__name__)

NS = 1_000_000_000
#: ``err_code`` of "stream not found"
STREAM_NOT_FOUND = 10059


@attrs.frozen
class StreamSettings:
    """The stream feedd publishes into, as ``[nats]`` configures it."""

    name: str
    subjects: tuple[str, ...]
    #: seconds a message is kept (0: no limit)
    max_age: float = 0.0
    #: bytes the stream may hold before its oldest messages are discarded (-1: no limit)
    max_bytes: int = -1
    #: seconds within which a message id seen before makes a publish a duplicate
    duplicate_window: float = 120.0
    replicas: int = 1

    def api_config(self) -> dict[str, Any]:
        """The ``StreamConfig`` JSON the create request carries."""
        return {
            "name": self.name,
            "subjects": list(self.subjects),
            "retention": "limits",
            "storage": "file",
            "discard": "old",
            "max_age": int(self.max_age * NS),
            "max_bytes": self.max_bytes,
            "max_msgs": -1,
            "max_msg_size": -1,
            "max_consumers": -1,
            "duplicate_window": int(self.duplicate_window * NS),
            "num_replicas": self.replicas,
        }

    def differences(self, existing: Mapping[str, Any]) -> list[str]:
        """How an existing stream's config differs from these settings, one phrase each."""
        wanted = self.api_config()
        found = []
        if not set(self.subjects) <= set(existing.get("subjects") or ()):
            found.append(f"subjects {existing.get('subjects')} (want {list(self.subjects)})")
        for key in ("max_age", "max_bytes", "duplicate_window", "num_replicas", "discard", "retention"):
            have, want = existing.get(key), wanted[key]
            if have == want:
                continue
            if key in ("max_age", "duplicate_window") and isinstance(have, int):
                found.append(f"{key} {have / NS:g} s (want {want / NS:g} s)")
            else:
                found.append(f"{key} {have!r} (want {want!r})")
        return found


async def api_request(
    client: NatsClient, subject: str, body: Mapping[str, Any] | None = None
) -> Mapping[str, Any]:
    """One JetStream API call; its ``error`` answer becomes :class:`JetStreamError`. Bound it
    with ``trio.fail_after``."""
    payload = b"" if body is None else orjson.dumps(body)
    answer = decode_json(await client.request(subject, payload))
    error = answer.get("error")
    if isinstance(error, Mapping):
        raise JetStreamError(f"{subject}: {error.get('description', 'error')} "
                             f"(code {error.get('code')}, err_code {error.get('err_code')})")
    return answer


async def ensure_stream(client: NatsClient, settings: StreamSettings) -> list[str]:
    """Create the stream if it is missing; an existing one is left as it is. Returns how the
    existing stream differs from ``settings`` (empty when created, or when it matches)."""
    subject = f"$JS.API.STREAM.INFO.{settings.name}"
    answer = decode_json(await client.request(subject))
    error = answer.get("error")
    if isinstance(error, Mapping) and error.get("err_code") == STREAM_NOT_FOUND:
        await api_request(client, f"$JS.API.STREAM.CREATE.{settings.name}", settings.api_config())
        return []
    if isinstance(error, Mapping):
        raise JetStreamError(f"{subject}: {error.get('description', 'error')} "
                             f"(err_code {error.get('err_code')})")
    config = answer.get("config")
    return settings.differences(config if isinstance(config, Mapping) else {})


class BatchAcks:
    """The acks of one published batch, counted as they arrive (on the client's reader)."""

    def __init__(self, expected: int, on_done: Callable[[], None] | None = None) -> None:
        self.expected = expected
        self._on_done = on_done
        self.received = 0
        self.duplicates = 0
        #: the first few error descriptions, and how many errors in all
        self.errors: list[str] = []
        self.error_count = 0
        self.done = trio.Event()
        if expected == 0:
            self.done.set()

    def on_reply(self, msg: Msg) -> None:
        self.received += 1
        payload = msg.payload
        if b'"error"' in payload or not payload:
            self._error(msg)
        elif b'"duplicate"' in payload:
            self.duplicates += 1
        if self.received == self.expected:
            self.done.set()
            if self._on_done is not None:
                self._on_done()

    def _error(self, msg: Msg) -> None:
        self.error_count += 1
        if len(self.errors) >= 3:
            return
        if msg.headers and parse_headers(msg.headers).status == 503:
            self.errors.append("no stream takes these subjects (no responders)")
            return
        try:
            error = orjson.loads(msg.payload).get("error", {})
            self.errors.append(f"{error.get('description', 'error')} (err_code {error.get('err_code')})")
        except (orjson.JSONDecodeError, AttributeError):
            self.errors.append(f"unreadable ack {msg.payload[:80]!r}")

    @property
    def acked(self) -> int:
        """Messages the stream stored or recognised as duplicates."""
        return self.received - self.error_count


#: ``HPUB <subject> <reply> <header size> <total size>`` + the one-header block + payload
_HPUB = b"HPUB %s %s %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n%s\r\n"
_HEADER_SIZE = len(b"NATS/1.0\r\nNats-Msg-Id: \r\n\r\n")


def encode_batch(messages: Sequence[tuple[bytes, bytes, bytes]], reply: bytes) -> bytes:
    """``(subject, message id, payload)`` each as an ``HPUB`` answered on ``reply``, one buffer."""
    fmt, base = _HPUB, _HEADER_SIZE
    parts = []
    for subject, msg_id, payload in messages:
        size = base + len(msg_id)
        parts.append(fmt % (subject, reply, size, size + len(payload), msg_id, payload))
    return b"".join(parts)


async def send_batch(
    client: NatsClient, messages: Sequence[tuple[bytes, bytes, bytes]], acks: BatchAcks
) -> bytes:
    """Publish every message in one write; their acks are counted into ``acks`` as the reader
    parses them. Returns the reply token: :meth:`NatsClient.forget_reply` it once done."""
    reply, token = client.reply_subject(acks.on_reply)
    try:
        await client.send(encode_batch(messages, reply))
    except BaseException:
        client.forget_reply(token)
        raise
    return token


def start_time(since: datetime) -> str:
    """An RFC 3339 time as the consumer's ``opt_start_time`` wants it."""
    return since.isoformat().replace("+00:00", "Z")
