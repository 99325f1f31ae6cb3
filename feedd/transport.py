"""The WebSocket seam: the only module that knows which WebSocket library feedd uses.

The runner needs four things of a transport — connect, send, receive (in batches), close — and
nothing else, so that the library (measured: the most expensive part of the hot path) can be
swapped for another without touching the runner or any adapter. Two live here: wsproto driven
directly (the default, see :class:`WsprotoTransport` for why) and trio-websocket.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import cache
from typing import Protocol, cast
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

Frame = str | bytes

#: frames handed on per wakeup at most (bounds the latency of the first frame of a batch)
MAX_BATCH = 4096
#: the library's internal queue of complete messages; deep so its reader never waits on ours
MESSAGE_QUEUE = 4096
#: bytes asked of the socket per read: large reads mean fewer wakeups per frame under load
RECEIVE_BYTES = 256 * 1024
#: the largest frame accepted (Binance exchangeInfo-sized control replies fit comfortably)
MAX_MESSAGE = 16 * 1024 * 1024


class TransportError(Exception):
    """The connection could not be opened, or it ended; ``str()`` says why, for status."""


class Transport(Protocol):
    async def send(self, frame: Frame) -> None: ...

    async def receive_batch(self) -> list[Frame]:
        """Wait for at least one frame; return it with every other frame already read."""
        ...

    async def aclose(self) -> None: ...


class TrioWebsocketTransport:
    """:class:`Transport` over trio-websocket; WebSocket pings are answered by its reader task."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        # trio-websocket exposes one message per get_message(); draining its queue without a
        # wakeup per message is what lets the runner hand frames on in batches. Private, so it
        # is looked up once and the code falls back to one frame per call if it ever moves.
        self._queue: trio.MemoryReceiveChannel[Frame] | None = getattr(ws, "_recv_channel", None)

    async def send(self, frame: Frame) -> None:
        try:
            await self._ws.send_message(frame)
        except ConnectionClosed as exc:
            raise TransportError(_close_text(exc)) from None

    async def receive_batch(self) -> list[Frame]:
        try:
            batch = [await self._ws.get_message()]
        except ConnectionClosed as exc:
            raise TransportError(_close_text(exc)) from None
        queue = self._queue
        if queue is not None:
            append = batch.append
            try:
                while len(batch) < MAX_BATCH:
                    append(queue.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                pass
        return batch

    async def aclose(self) -> None:
        await self._ws.aclose()


def _close_text(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "connection closed"
    text = f"closed by peer: code {reason.code}"
    return f"{text} ({reason.reason})" if reason.reason else text


class WsprotoTransport:
    """:class:`Transport` on wsproto over a trio stream: one socket read, every frame in it.

    trio-websocket hands each message through its own task and a memory channel, which costs a
    task switch per message and defeats batching (measured: ~19k records/s, as a naive pipeline).
    Here the reading task itself feeds wsproto and returns everything one read yielded, answering
    pings on the way, so one wakeup carries a whole batch through decode, hub and sinks.
    """

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection, leftover: list[Frame]) -> None:
        self._stream = stream
        self._ws = ws
        self._ready: list[Frame] = leftover
        self._parts: list[str | bytes | bytearray] = []
        self._part_size = 0
        self._closed: str | None = None
        self._send_lock = trio.Lock()

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._closed = self._closed or f"connection lost: {exc or type(exc).__name__}"
                raise TransportError(self._closed) from None

    async def send(self, frame: Frame) -> None:
        if self._closed is not None:
            raise TransportError(self._closed)
        message = TextMessage(frame) if isinstance(frame, str) else BytesMessage(frame)
        await self._write(self._ws.send(message))

    async def receive_batch(self) -> list[Frame]:
        ws = self._ws
        while True:
            replies = b""
            ready = self._ready
            for event in ws.events():
                kind = type(event)
                if kind is TextMessage:
                    assert isinstance(event, TextMessage)
                    if event.message_finished and not self._parts:
                        ready.append(event.data)
                    else:
                        self._collect(event)
                elif kind is BytesMessage:
                    assert isinstance(event, BytesMessage)
                    self._collect(event)
                elif kind is Ping:
                    assert isinstance(event, Ping)
                    replies += ws.send(event.response())
                elif kind is CloseConnection:
                    assert isinstance(event, CloseConnection)
                    self._closed = f"closed by peer: code {event.code}" + (
                        f" ({event.reason})" if event.reason else ""
                    )
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        replies += ws.send(event.response())
            if replies:
                with contextlib.suppress(TransportError):
                    await self._write(replies)
            if ready:
                self._ready = []
                return ready
            if self._closed is not None:
                raise TransportError(self._closed)
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._closed = f"connection lost: {exc or type(exc).__name__}"
                continue
            if not data:
                self._closed = "connection closed without a close frame"
                continue
            try:
                ws.receive_data(cast(bytes, data))
            except RemoteProtocolError as exc:
                self._closed = f"protocol error from peer: {exc}"

    def _collect(self, event: TextMessage | BytesMessage) -> None:
        self._parts.append(event.data)
        self._part_size += len(event.data)
        if self._part_size > MAX_MESSAGE:
            raise TransportError(f"message larger than {MAX_MESSAGE} bytes")
        if event.message_finished:
            parts, self._parts, self._part_size = self._parts, [], 0
            if isinstance(event, TextMessage):
                self._ready.append("".join(cast(list[str], parts)))
            else:
                self._ready.append(b"".join(cast(list[bytes], parts)))

    async def aclose(self) -> None:
        # Say goodbye politely when we can, within a second, even while being cancelled.
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            if self._ws.state is ConnectionState.OPEN:
                with contextlib.suppress(TransportError, LocalProtocolError):
                    await self._write(self._ws.send(CloseConnection(code=1000)))
        await trio.aclose_forcefully(self._stream)


async def _wsproto_connect(url: str, ssl_context: ssl.SSLContext | None) -> WsprotoTransport:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise TransportError(f"not a WebSocket URL: {url!r}")
    secure = parts.scheme == "wss"
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    try:
        if secure:
            assert ssl_context is not None
            tls = trio.SSLStream(stream, ssl_context, server_hostname=host, https_compatible=True)
            await tls.do_handshake()
            stream = tls
        ws = WSConnection(ConnectionType.CLIENT)
        authority = host if parts.port is None else f"{host}:{parts.port}"
        await stream.send_all(ws.send(Request(host=authority, target=target)))
        frames: list[Frame] = []
        while ws.state is not ConnectionState.OPEN:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise TransportError("connection closed during the WebSocket handshake")
            ws.receive_data(cast(bytes, data))
            for event in ws.events():
                if isinstance(event, RejectConnection):
                    raise TransportError(f"handshake rejected: HTTP {event.status_code}")
                if isinstance(event, TextMessage) and event.message_finished:
                    frames.append(event.data)  # sent right behind the 101 response
        return WsprotoTransport(stream, ws, frames)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


@cache
def _default_ssl_context() -> ssl.SSLContext:
    # Built once: loading the system trust store costs milliseconds per reconnect otherwise.
    # It honours SSL_CERT_FILE / SSL_CERT_DIR, which is how the benchmark trusts its own CA.
    return ssl.create_default_context()


@asynccontextmanager
async def open_wsproto(url: str, *, connect_timeout: float) -> AsyncIterator[Transport]:
    """Connect (TCP, TLS, WebSocket handshake) within ``connect_timeout``; close on exit."""
    ssl_context = _default_ssl_context() if url.startswith("wss:") else None
    try:
        with trio.fail_after(connect_timeout):
            transport = await _wsproto_connect(url, ssl_context)
    except trio.TooSlowError:
        raise TransportError(f"cannot connect to {url}: timed out after {connect_timeout:g} s") from None
    except (OSError, ssl.SSLError, trio.BrokenResourceError, RemoteProtocolError) as exc:
        raise TransportError(f"cannot connect to {url}: {exc or type(exc).__name__}") from None
    try:
        yield transport
    finally:
        await transport.aclose()


@asynccontextmanager
async def open_trio_websocket(url: str, *, connect_timeout: float) -> AsyncIterator[Transport]:
    """Connect (TCP, TLS, WebSocket handshake) within ``connect_timeout``; close on exit."""
    ssl_context = _default_ssl_context() if url.startswith("wss:") else None
    phase = "connecting"
    try:
        async with open_websocket_url(
            url,
            ssl_context=ssl_context,
            message_queue_size=MESSAGE_QUEUE,
            max_message_size=MAX_MESSAGE,
            receive_buffer_size=RECEIVE_BYTES,
            connect_timeout=connect_timeout,
            disconnect_timeout=1.0,
        ) as ws:
            phase = "open"
            yield TrioWebsocketTransport(ws)
            phase = "closing"
    except ConnectionRejected as exc:
        raise TransportError(f"handshake rejected: HTTP {exc.status_code}") from None
    except DisconnectionTimeout:
        if phase != "closing":
            raise
        # the peer did not finish the close handshake in time; the socket is closed anyway
    except (HandshakeError, OSError, ssl.SSLError, ValueError) as exc:
        if phase != "connecting":
            raise
        cause = exc.__cause__ or exc.__context__ or exc
        raise TransportError(f"cannot connect to {url}: {cause or type(cause).__name__}") from None


OpenTransport = Callable[..., AbstractAsyncContextManager[Transport]]

#: the transports a config may name; the first is the default
TRANSPORTS: dict[str, OpenTransport] = {
    "wsproto": open_wsproto,
    "trio-websocket": open_trio_websocket,
}
open_transport = open_wsproto
