"""The WebSocket seam: the only module that knows which WebSocket library feedd uses.

The runner needs four things of a transport — connect, send, receive (in batches), close — and
nothing else, so that the library (measured: the most expensive part of the hot path) can be
swapped for another without touching the runner or any adapter. Two live here: feedd's own
codec (:mod:`feedd.wsframe`) driven directly (the default, see :class:`NativeTransport` for why)
and trio-websocket.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import cache
from typing import Protocol
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from feedd import wsframe
from feedd.errors import describe
from feedd.model import Frame

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


class NativeTransport:
    """:class:`Transport` on :mod:`feedd.wsframe` over a trio stream: one socket read, every frame in it.

    trio-websocket hands each message through its own task and a memory channel, which costs a
    task switch per message and defeats batching (measured: ~19k records/s, as a naive pipeline);
    wsproto parses a frame per generator step (~6 µs per frame, half the daemon's CPU). Here the
    reading task itself feeds the codec and returns everything one read yielded, answering pings
    on the way, so one wakeup carries a whole batch through decode, hub and sinks.
    """

    def __init__(self, stream: trio.abc.Stream, protocol: wsframe.ClientProtocol) -> None:
        self._stream = stream
        self._protocol = protocol
        self._closed: str | None = None
        self._send_lock = trio.Lock()

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._closed = self._closed or f"connection lost: {describe(exc)}"
                raise TransportError(self._closed) from None

    async def send(self, frame: Frame) -> None:
        if self._closed is not None:
            raise TransportError(self._closed)
        await self._write(
            wsframe.encode_text(frame) if isinstance(frame, str) else wsframe.encode_binary(frame)
        )

    async def receive_batch(self) -> list[Frame]:
        protocol = self._protocol
        while True:
            # parse first: bytes left from the handshake or a deferred error wait in the codec
            try:
                received = protocol.read()
            except wsframe.ProtocolError as exc:
                self._closed = f"protocol error from peer: {exc.reason}"
                with contextlib.suppress(TransportError):
                    await self._write(protocol.encode_close(exc.code))
                raise TransportError(self._closed) from None
            if received.to_send:
                with contextlib.suppress(TransportError):
                    await self._write(received.to_send)
            close = received.close
            if close is not None:
                self._closed = f"closed by peer: code {close.code}" + (
                    f" ({close.reason})" if close.reason else ""
                )
            if received.messages:
                return received.messages
            if self._closed is not None:
                raise TransportError(self._closed)
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._closed = f"connection lost: {describe(exc)}"
                raise TransportError(self._closed) from None
            if not data:
                self._closed = "connection closed without a close frame"
                raise TransportError(self._closed)
            protocol.receive_data(data)

    async def aclose(self) -> None:
        # Say goodbye politely when we can, within a second, even while being cancelled.
        protocol = self._protocol
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            if protocol.close_received is None and not protocol.close_sent and self._closed is None:
                with contextlib.suppress(TransportError):
                    await self._write(protocol.encode_close(wsframe.CLOSE_NORMAL))
        await trio.aclose_forcefully(self._stream)


async def _native_connect(url: str, ssl_context: ssl.SSLContext | None) -> NativeTransport:
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
        name = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
        handshake = wsframe.ClientHandshake(name if parts.port is None else f"{name}:{parts.port}", target)
        await stream.send_all(handshake.request())
        try:
            while (rest := handshake.receive_data(await stream.receive_some(RECEIVE_BYTES))) is None:
                pass
        except wsframe.HandshakeRejected as exc:
            raise TransportError(f"handshake rejected: HTTP {exc.status_code}") from None
        protocol = wsframe.ClientProtocol(max_message=MAX_MESSAGE)
        protocol.receive_data(rest)  # frames sent right behind the 101 response
        return NativeTransport(stream, protocol)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


@cache
def _default_ssl_context() -> ssl.SSLContext:
    # Built once: loading the system trust store costs milliseconds per reconnect otherwise.
    # It honours SSL_CERT_FILE / SSL_CERT_DIR, which is how the benchmark trusts its own CA.
    return ssl.create_default_context()


@asynccontextmanager
async def open_native(url: str, *, connect_timeout: float) -> AsyncIterator[Transport]:
    """Connect (TCP, TLS, WebSocket handshake) within ``connect_timeout``; close on exit."""
    ssl_context = _default_ssl_context() if url.startswith("wss:") else None
    try:
        with trio.fail_after(connect_timeout):
            transport = await _native_connect(url, ssl_context)
    except trio.TooSlowError:
        raise TransportError(f"cannot connect to {url}: timed out after {connect_timeout:g} s") from None
    except (OSError, ssl.SSLError, trio.BrokenResourceError, wsframe.HandshakeError) as exc:
        raise TransportError(f"cannot connect to {url}: {describe(exc)}") from None
    try:
        yield transport
    finally:
        await transport.aclose()


@asynccontextmanager
async def open_trio_websocket(url: str, *, connect_timeout: float) -> AsyncIterator[Transport]:
    """Connect (TCP, TLS, WebSocket handshake) within ``connect_timeout``; close on exit."""
    ssl_context = _default_ssl_context() if url.startswith("wss:") else None
    timed_out = f"cannot connect to {url}: timed out after {connect_timeout:g} s"
    phase = "connecting"
    # trio-websocket's own connect_timeout cannot end a handshake the server never answers (its
    # reader task keeps the connection's nursery open), so a scope around it all enforces it.
    connecting = trio.CancelScope(deadline=trio.current_time() + connect_timeout)
    try:
        with connecting:
            async with open_websocket_url(
                url,
                ssl_context=ssl_context,
                message_queue_size=MESSAGE_QUEUE,
                max_message_size=MAX_MESSAGE,
                receive_buffer_size=RECEIVE_BYTES,
                connect_timeout=connect_timeout,
                disconnect_timeout=1.0,
            ) as ws:
                connecting.deadline = math.inf
                phase = "open"
                yield TrioWebsocketTransport(ws)
                phase = "closing"
    except ConnectionRejected as exc:
        raise TransportError(f"handshake rejected: HTTP {exc.status_code}") from None
    except ConnectionTimeout:
        raise TransportError(timed_out) from None
    except DisconnectionTimeout:
        if phase != "closing":
            raise
        # the peer did not finish the close handshake in time; the socket is closed anyway
    except (HandshakeError, OSError, ssl.SSLError, ValueError) as exc:
        if phase != "connecting":
            raise
        cause = exc.__cause__ or exc.__context__ or exc
        raise TransportError(f"cannot connect to {url}: {describe(cause)}") from None
    if connecting.cancelled_caught:
        raise TransportError(timed_out)


OpenTransport = Callable[..., AbstractAsyncContextManager[Transport]]

#: the transports a config may name; the first is the default
TRANSPORTS: dict[str, OpenTransport] = {
    "native": open_native,
    "trio-websocket": open_trio_websocket,
}
open_transport = open_native
