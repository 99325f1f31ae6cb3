"""One connection to a NATS server, driven by trio: the I/O around :mod:`feedd.nats.protocol`.

:func:`open_client` is an async context manager: it connects, says ``CONNECT`` (with a token,
or a signature made from a ``.creds`` file), waits for the server's ``PONG``, and runs a reader
task beside the body until the block ends. The reader answers pings, hands each ``MSG`` to its
subscription's handler (plain functions, called on the reader task: they must not block), and
raises :class:`ConnectionLost` out of the block when the connection ends or the server stops
answering our pings, so the caller's reconnect loop sees every failure the same way.

Replies (JetStream API requests, publish acks) come back on one wildcard inbox subscription;
a reply's last subject token says which request or publish batch it answers.
"""

from __future__ import annotations

import importlib.metadata
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import trio

from feedd.errors import ConnectionLost, NatsError, NatsProtocolError, NoResponders, describe
from feedd.nats import protocol
from feedd.nats.protocol import Err, Info, Msg, ServerPing, ServerPong
from feedd.nats.servers import ServerAddress

log = logging.getLogger(__name__)

#: the server is pinged this often; two pings without a pong end the connection
PING_INTERVAL = 5.0
_READ_SIZE = 256 * 1024


@attrs.frozen
class Credentials:
    """What ``CONNECT`` carries to log in; at most one way is used (a .creds file wins)."""

    token: str | None = None
    #: a ``.creds`` file (user JWT + nkey seed), or a file holding just a seed (nkey auth)
    credentials_file: str | None = None


Handler = Callable[[Msg], None]


class NatsClient:
    """The connected client (made by :func:`open_client`); every method needs the block open."""

    def __init__(
        self, stream: trio.abc.Stream, info: Info, address: ServerAddress, name: str, parser: protocol.Parser
    ) -> None:
        self._stream = stream
        self.info = info
        self.address = address
        self.name = name
        #: the handshake's parser, with whatever followed the PONG in its last read
        self._parser = parser
        self._send_lock = trio.StrictFIFOLock()
        self._handlers: dict[int, Handler] = {}
        self._next_sid = 1
        #: replies come to ``<inbox>.<token>``; the handler per token
        self.inbox = b"_INBOX." + secrets.token_hex(11).encode()
        self._reply_handlers: dict[bytes, Handler] = {}
        self._next_token = 0
        self._pongs_owed = 0
        self._closed: BaseException | None = None
        #: bytes written to the server, messages read from it
        self.bytes_out = 0
        self.messages_in = 0

    # ---- sending ------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Write raw protocol bytes (one or many commands) as one write."""
        if self._closed is not None:
            raise ConnectionLost(f"{self.address}: connection closed: {describe(self._closed)}")
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionLost(f"{self.address}: write failed: {describe(exc)}") from exc
        self.bytes_out += len(data)

    async def publish(self, subject: str, payload: bytes, reply: bytes | None = None) -> None:
        await self.send(protocol.pub(subject.encode(), payload, reply))

    async def subscribe(self, subject: str, handler: Handler) -> int:
        """Call ``handler(msg)`` for every message on ``subject`` (on the reader: never block)."""
        sid = self._next_sid
        self._next_sid += 1
        self._handlers[sid] = handler
        await self.send(protocol.sub(subject.encode(), sid))
        return sid

    async def unsubscribe(self, sid: int) -> None:
        if self._handlers.pop(sid, None) is not None and self._closed is None:
            await self.send(protocol.unsub(sid))

    # ---- replies ------------------------------------------------------------------------

    def reply_subject(self, handler: Handler) -> tuple[bytes, bytes]:
        """A fresh reply subject whose messages go to ``handler``; (subject, token) — pass the
        token to :meth:`forget_reply` once no more replies are wanted."""
        self._next_token += 1
        token = b"%x" % self._next_token
        self._reply_handlers[token] = handler
        return self.inbox + b"." + token, token

    def forget_reply(self, token: bytes) -> None:
        self._reply_handlers.pop(token, None)

    def _on_reply(self, msg: Msg) -> None:
        handler = self._reply_handlers.get(msg.subject[len(self.inbox) + 1 :])
        if handler is not None:  # a late reply to a request that gave up is dropped
            handler(msg)

    async def request(self, subject: str, payload: bytes = b"", *, headers: bytes | None = None) -> Msg:
        """Publish with a reply subject and wait for the first reply (bound it with
        ``trio.fail_after``: a reply may never come)."""
        got: list[Msg] = []
        done = trio.Event()

        def on_reply(msg: Msg) -> None:
            if not got:
                got.append(msg)
                done.set()

        reply, token = self.reply_subject(on_reply)
        try:
            if headers is None:
                await self.send(protocol.pub(subject.encode(), payload, reply))
            else:
                await self.send(protocol.hpub(subject.encode(), headers, payload, reply))
            await done.wait()
        finally:
            self.forget_reply(token)
        msg = got[0]
        if msg.headers and protocol.parse_headers(msg.headers).status == 503:
            raise NoResponders(f"{self.address}: no responders on {subject}")
        return msg

    # ---- the reader ---------------------------------------------------------------------

    def _dispatch(self, events: list[protocol.Event]) -> list[bytes]:
        """Handle what was read; what must be written back (pongs)."""
        out: list[bytes] = []
        handlers = self._handlers
        for event in events:
            if type(event) is Msg:
                self.messages_in += 1
                handler = handlers.get(event.sid)
                if handler is not None:
                    handler(event)
            elif isinstance(event, ServerPing):
                out.append(protocol.PONG)
            elif isinstance(event, ServerPong):
                self._pongs_owed = max(0, self._pongs_owed - 1)
            elif isinstance(event, Err):
                message = event.message
                if _fatal(message):
                    raise ConnectionLost(f"{self.address}: server error: {message}")
                log.warning("nats %s: server error: %s", self.address, message)
            elif isinstance(event, Info):
                self.info = event
        return out

    async def _read(self) -> None:
        stream, parser = self._stream, self._parser
        while True:
            try:
                data = await stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionLost(f"{self.address}: read failed: {describe(exc)}") from exc
            if not data:
                raise ConnectionLost(f"{self.address}: the server closed the connection")
            parser.receive_data(data)
            try:
                out = self._dispatch(parser.events())
            except NatsProtocolError as exc:
                raise ConnectionLost(f"{self.address}: {exc}") from exc
            if out:
                await self.send(b"".join(out))

    async def _keepalive(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            if self._pongs_owed >= 2:
                raise ConnectionLost(f"{self.address}: no answer to two pings ({2 * interval:g} s)")
            self._pongs_owed += 1
            await self.send(protocol.PING)


def _fatal(message: str) -> bool:
    """Server errors after which it closes the connection (the rest are warnings)."""
    lowered = message.lower()
    return not (lowered.startswith("permissions violation") or lowered.startswith("invalid subject"))


async def _handshake(
    stream: trio.abc.Stream, address: ServerAddress, credentials: Credentials, name: str
) -> tuple[trio.abc.Stream, Info, protocol.Parser, list[protocol.Event]]:
    parser = protocol.Parser()
    queued: list[protocol.Event] = []

    async def next_event() -> protocol.Event:
        while not queued:
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                raise NatsError(f"{address}: the server closed the connection during the handshake")
            parser.receive_data(data)
            queued.extend(parser.events())
        return queued.pop(0)

    first = await next_event()
    if not isinstance(first, Info):
        raise NatsError(f"{address}: expected INFO from the server, got {first!r}")
    info = first
    if address.tls or info.fields.get("tls_required"):
        tls = trio.SSLStream(stream, _ssl_context(), server_hostname=address.host)
        await tls.do_handshake()
        stream = tls
    options: dict[str, Any] = {
        "verbose": False, "pedantic": False, "lang": "python-feedd", "version": _feedd_version(),
        "protocol": 1, "headers": True, "no_responders": True, "echo": False, "name": name,
        "tls_required": address.tls,
    }
    options.update(_login(address, credentials, info))
    await stream.send_all(protocol.connect(options) + protocol.PING)
    answer = await next_event()
    while isinstance(answer, Info):  # an update may come first
        info = answer
        answer = await next_event()
    if isinstance(answer, Err):
        raise NatsError(f"{address}: refused: {answer.message}")
    if not isinstance(answer, ServerPong):
        raise NatsError(f"{address}: expected PONG after CONNECT, got {answer!r}")
    return stream, info, parser, queued


def _feedd_version() -> str:
    """feedd's version as installed (read from its metadata, not from the ``feedd`` façade, which
    sits above the client in the layers)."""
    try:
        return importlib.metadata.version("feedd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _ssl_context() -> ssl.SSLContext:
    """The system's CAs, host name checked (a seam for the tests' throwaway CA)."""
    return ssl.create_default_context()


def _login(address: ServerAddress, credentials: Credentials, info: Info) -> dict[str, Any]:
    if credentials.credentials_file is not None:
        from feedd.nats.auth import connect_fields

        return connect_fields(credentials.credentials_file, info.fields.get("nonce"))
    if address.user is not None:
        return {"user": address.user, "pass": address.password or ""}
    token = address.token or credentials.token
    return {} if token is None else {"auth_token": token}


@asynccontextmanager
async def open_client(
    address: ServerAddress,
    credentials: Credentials = Credentials(),
    *,
    name: str = "feedd",
    connect_timeout: float = 5.0,
    ping_interval: float = PING_INTERVAL,
) -> AsyncIterator[NatsClient]:
    """Connect and log in; the client is usable until the block ends. A lost connection raises
    :class:`ConnectionLost` out of the block (cancelling its body); a failed connect,
    :class:`NatsError`."""
    try:
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(address.host, address.port)
    except trio.TooSlowError:
        raise NatsError(f"{address}: cannot connect: no answer within {connect_timeout:g} s") from None
    except OSError as exc:
        raise NatsError(f"{address}: cannot connect: {describe(exc)}") from exc
    stream: trio.abc.Stream = tcp
    try:
        try:
            with trio.fail_after(connect_timeout):
                stream, info, parser, early = await _handshake(tcp, address, credentials, name)
        except trio.TooSlowError:
            raise NatsError(f"{address}: no handshake within {connect_timeout:g} s") from None
        except (trio.BrokenResourceError, OSError, ssl.SSLError) as exc:
            raise NatsError(f"{address}: handshake failed: {describe(exc)}") from exc
        client = NatsClient(stream, info, address, name, parser)
        if answers := client._dispatch(early):  # e.g. an INFO update right after the PONG
            await client.send(b"".join(answers))
        await client.subscribe(client.inbox.decode() + ".*", client._on_reply)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._read)
                nursery.start_soon(client._keepalive, ping_interval)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # one failure (the reader's ConnectionLost, or the body's own error) comes out as
            # itself, not wrapped: callers catch NatsError like any exception
            leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
            if len(leaves) != 1:
                raise
            if isinstance(leaves[0], ConnectionLost):
                client._closed = leaves[0]
            raise leaves[0] from None
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def decode_json(msg: Msg) -> Mapping[str, Any]:
    """A JSON API reply as a mapping (a reply that is not one becomes a NatsError)."""
    try:
        obj = orjson.loads(msg.payload)
    except orjson.JSONDecodeError:
        raise NatsError(f"reply is not JSON: {msg.payload[:80]!r}") from None
    if not isinstance(obj, dict):
        raise NatsError(f"reply is not a JSON object: {msg.payload[:80]!r}")
    return obj
