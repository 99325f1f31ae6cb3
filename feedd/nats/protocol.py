"""The NATS client protocol, sans-IO: server bytes in, events out; client commands as bytes.

The protocol is text lines ending in CRLF, some followed by a payload of a stated size
(https://docs.nats.io/reference/reference-protocols/nats-protocol). A :class:`Parser` owns no
socket and no clock: :meth:`Parser.receive_data` takes whatever the socket gave, and
:meth:`Parser.events` hands out every complete message in it (a JetStream publish batch comes
back as thousands of ``MSG`` acks in a few reads, so they are parsed in one loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import attrs
import orjson

from feedd.errors import NatsProtocolError

#: the longest control line accepted (a MSG line names two subjects; the server's own limit
#: for a client's control line is 4 KiB by default)
MAX_CONTROL_LINE = 4096
HEADER_VERSION = b"NATS/1.0"


@attrs.frozen
class Info:
    """The server's ``INFO``: its id, limits, whether it wants TLS or auth, a nonce to sign."""

    fields: Mapping[str, Any]

    @property
    def max_payload(self) -> int:
        return int(self.fields.get("max_payload", 1024 * 1024))

    @property
    def headers(self) -> bool:
        return bool(self.fields.get("headers", False))


class Msg(NamedTuple):
    """A ``MSG`` or ``HMSG``: ``headers`` is the raw header block (``b""`` for a plain MSG).

    A NamedTuple, not an attrs class: a publish batch's acks are one of these each, and building
    a tuple costs half as much.
    """

    subject: bytes
    sid: int
    reply: bytes | None
    headers: bytes
    payload: bytes


@attrs.frozen
class ServerPing:
    """The server checks we are alive: answer :data:`PONG`."""


@attrs.frozen
class ServerPong:
    """The answer to our ``PING`` (also how the end of the handshake is seen)."""


@attrs.frozen
class Ok:
    """``+OK`` (only in verbose mode, which feedd does not ask for)."""


@attrs.frozen
class Err:
    """``-ERR 'text'``: most are fatal (the server closes the connection after them)."""

    message: str


Event = Info | Msg | ServerPing | ServerPong | Ok | Err

PING = b"PING\r\n"
PONG = b"PONG\r\n"


class Parser:
    """Bytes from the server in, :data:`Event` objects out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_data(self, data: bytes | bytearray) -> None:
        self._buf += data

    def events(self) -> list[Event]:
        """Every complete message received so far; an incomplete tail stays for the next read."""
        if not self._buf:
            return []
        data = bytes(self._buf)  # one copy; every slice below is then a bytes object at once
        found: list[Event] = []
        append = found.append
        pos = 0
        size = len(data)
        while pos < size:
            end = data.find(b"\r\n", pos)
            if end < 0:
                if size - pos > MAX_CONTROL_LINE:
                    raise NatsProtocolError(f"control line longer than {MAX_CONTROL_LINE} bytes")
                break
            op = data[pos : pos + 4]
            if op == b"MSG ":
                args = data[pos + 4 : end].split()
                try:
                    sid, length = int(args[1]), int(args[-1])
                except (ValueError, IndexError):
                    raise NatsProtocolError(f"malformed MSG line: {_excerpt(data[pos:end])}") from None
                if len(args) not in (3, 4) or length < 0:
                    raise NatsProtocolError(f"malformed MSG line: {_excerpt(data[pos:end])}")
                start = end + 2
                if start + length + 2 > size:
                    break
                append(Msg(args[0], sid, args[2] if len(args) == 4 else None, b"",
                           data[start : start + length]))
                pos = start + length + 2
            elif op == b"HMSG":
                args = data[pos + 5 : end].split()
                try:
                    sid, header_size, length = int(args[1]), int(args[-2]), int(args[-1])
                except (ValueError, IndexError):
                    raise NatsProtocolError(f"malformed HMSG line: {_excerpt(data[pos:end])}") from None
                if len(args) not in (4, 5) or not 0 <= header_size <= length:
                    raise NatsProtocolError(f"malformed HMSG line: {_excerpt(data[pos:end])}")
                start = end + 2
                if start + length + 2 > size:
                    break
                append(Msg(args[0], sid, args[2] if len(args) == 5 else None,
                           data[start : start + header_size], data[start + header_size : start + length]))
                pos = start + length + 2
            else:
                append(_control(data[pos:end]))
                pos = end + 2
        if pos:
            del self._buf[:pos]
        return found


def _control(line: bytes) -> Event:
    word, _, rest = line.partition(b" ")
    word = word.upper()
    if word == b"PING":
        return ServerPing()
    if word == b"PONG":
        return ServerPong()
    if word == b"+OK":
        return Ok()
    if word == b"-ERR":
        return Err(rest.strip().strip(b"'").decode("utf-8", "replace"))
    if word == b"INFO":
        try:
            fields = orjson.loads(rest)
        except orjson.JSONDecodeError:
            raise NatsProtocolError(f"INFO is not JSON: {_excerpt(rest)}") from None
        if not isinstance(fields, dict):
            raise NatsProtocolError(f"INFO is not a JSON object: {_excerpt(rest)}")
        return Info(fields)
    raise NatsProtocolError(f"unknown operation: {_excerpt(line)}")


def _excerpt(data: bytes | bytearray) -> str:
    return repr(bytes(data[:80]))


# ---- client commands ---------------------------------------------------------------------


def connect(options: Mapping[str, Any]) -> bytes:
    return b"CONNECT " + orjson.dumps(options) + b"\r\n"


def pub(subject: bytes, payload: bytes, reply: bytes | None = None) -> bytes:
    head = b"PUB %s %d\r\n" % (subject, len(payload)) if reply is None else \
        b"PUB %s %s %d\r\n" % (subject, reply, len(payload))
    return head + payload + b"\r\n"


def hpub(subject: bytes, headers: bytes, payload: bytes, reply: bytes | None = None) -> bytes:
    """``headers`` is a block made by :func:`header_block`."""
    total = len(headers) + len(payload)
    head = b"HPUB %s %d %d\r\n" % (subject, len(headers), total) if reply is None else \
        b"HPUB %s %s %d %d\r\n" % (subject, reply, len(headers), total)
    return head + headers + payload + b"\r\n"


def sub(subject: bytes, sid: int) -> bytes:
    return b"SUB %s %d\r\n" % (subject, sid)


def unsub(sid: int) -> bytes:
    return b"UNSUB %d\r\n" % sid


def header_block(headers: Mapping[str, str]) -> bytes:
    lines = [HEADER_VERSION]
    for key, value in headers.items():
        if any(c in "\r\n:" for c in key) or any(c in "\r\n" for c in value):
            raise ValueError(f"header {key!r}: {value!r} cannot be sent")
        lines.append(f"{key}: {value}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


@attrs.frozen
class Headers:
    """A parsed header block: a status (``503`` no responders, ``100`` heartbeat or flow
    control, ``404``/``408``/``409`` from JetStream) with its description, and the fields."""

    status: int | None = None
    description: str = ""
    fields: Mapping[str, str] = attrs.field(factory=dict)


def parse_headers(block: bytes) -> Headers:
    """The header block of an ``HMSG`` (``b""`` gives empty headers)."""
    if not block:
        return Headers()
    lines = block.split(b"\r\n")
    first = lines[0]
    if not first.startswith(HEADER_VERSION):
        raise NatsProtocolError(f"header block without {HEADER_VERSION!r}: {_excerpt(block)}")
    status: int | None = None
    description = ""
    rest = first[len(HEADER_VERSION):].strip()
    if rest:
        code, _, text = rest.partition(b" ")
        if code.isdigit():
            status = int(code)
            description = text.decode("utf-8", "replace").strip()
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        key, sep, value = line.partition(b":")
        if sep:
            fields[key.decode("utf-8", "replace").strip()] = value.decode("utf-8", "replace").strip()
    return Headers(status, description, fields)
