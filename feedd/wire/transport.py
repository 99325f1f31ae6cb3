"""The WebSocket seam: the only module that knows which WebSocket library feedd uses.

The runner needs four things of a transport — connect, send, receive (in batches), close — and
nothing else, so that the library (measured: the most expensive part of the hot path) can be
swapped for another without touching the runner or any adapter. Two live here: feedd's own
codec (:mod:`feedd.wire.wsframe`) driven directly (the default, see :class:`NativeTransport` for why)
and trio-websocket.
"""

from __future__ import annotations

import contextlib
import math
import os
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
    WebSocketConnection,
    open_websocket_url,
)
from trio_websocket import (
    HandshakeError as TrioWebsocketHandshakeError,
)

from feedd.errors import HandshakeError, ProtocolError, ProxyError, TLSError, TransportError, describe
from feedd.model import Message
from feedd.wire import wsframe
from feedd.wire.proxy import HttpConnect, ProxyURL, Socks5Connect
from feedd.wire.tls import TLSClient
from feedd.wire.upgrade import HandshakeRefused

#: frames handed on per wakeup at most (bounds the latency of the first frame of a batch)
MAX_BATCH = 4096
#: the library's internal queue of complete messages; deep so its reader never waits on ours
MESSAGE_QUEUE = 4096
#: bytes asked of the socket per read: large reads mean fewer wakeups per frame under load
RECEIVE_BYTES = 256 * 1024
#: the largest frame accepted (Binance exchangeInfo-sized control replies fit comfortably)
MAX_MESSAGE = 16 * 1024 * 1024


class Transport(Protocol):
    async def send(self, frame: Message) -> None: ...

    async def receive_batch(self) -> list[Message]:
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
        self._queue: trio.MemoryReceiveChannel[Message] | None = getattr(ws, "_recv_channel", None)

    async def send(self, frame: Message) -> None:
        try:
            await self._ws.send_message(frame)
        except ConnectionClosed as exc:
            raise TransportError(_close_text(exc)) from None

    async def receive_batch(self) -> list[Message]:
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


class _Wire:
    """The bytes under the WebSocket codec: a TCP socket, through :mod:`feedd.wire.tls` for ``wss``.

    One :meth:`receive` is one socket read, and with TLS every complete record in it decrypted
    at once (``trio.SSLStream`` hands out one record per call, so one frame per wakeup, since
    exchanges write one frame per record). Writes go out under one lock, which also keeps TLS's
    records in the order they were made, whichever task made them.
    """

    def __init__(self, stream: trio.abc.Stream, tls_client: TLSClient | None) -> None:
        self._stream = stream
        self._tls = tls_client
        self._send_lock = trio.Lock()
        #: the peer ended a plain stream (TLS keeps its own end)
        self._ended = False
        self._handshake_leftover = tls_client is not None
        #: a TCP socket is read directly (:meth:`_read`); any other stream by its receive_some
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._buffer = bytearray(RECEIVE_BYTES)
        self._view = memoryview(self._buffer)
        #: the last read filled the buffer: more is likely waiting, so read before waiting
        self._full = True

    async def _read(self) -> bytes | bytearray | memoryview:
        """One read of the socket: ``b""`` at its end.

        ``trio.SocketStream.receive_some`` tries the read first and waits only when it would
        block, and a read that succeeds at once then yields to the scheduler anyway; at the
        rates exchanges send (each frame its own wakeup) the first try nearly always fails. Here
        a read comes after the wait for readability, so one wakeup costs one system call to
        read and one task step, and the bytes land in a reused buffer (a view of it is valid
        until the next read: TLS copies it into its BIO, the plain path copies it). After a
        read that filled the buffer it reads first, as trio does.
        """
        sock = self._socket
        if sock is None:
            return await self._stream.receive_some(RECEIVE_BYTES)
        while True:
            if self._full:
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(sock)
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                count = os.readv(fd, (self._buffer,))
            except BlockingIOError:
                self._full = False
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket read failed: {describe(exc)}") from exc
            self._full = count == RECEIVE_BYTES
            return self._view[:count]

    async def receive(self) -> bytes | bytearray:
        """The bytes (plaintext) of the next socket read; ``b""`` once the peer has ended.

        Raises ``trio.BrokenResourceError`` or :class:`TLSError` when the connection broke.
        """
        tls_client = self._tls
        if tls_client is None:
            if self._ended:
                return b""
            data = bytes(await self._read())
            self._ended = not data
            return data
        if self._handshake_leftover:
            # the read that finished the handshake may have brought records too; after that,
            # every read takes all complete records, so none wait before the next socket read
            self._handshake_leftover = False
        else:
            tls_client.receive_data(await self._read())
        while True:
            got = tls_client.read()
            if got.wants_write:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.send(b"")
            if got.data or got.end is not None:
                return got.data  # after the end, b"" from every later call
            tls_client.receive_data(await self._read())

    async def send(self, data: bytes) -> None:
        """Write ``data`` (and with TLS, whatever TLS has pending before it)."""
        async with self._send_lock:
            tls_client = self._tls
            if tls_client is not None:
                data = tls_client.send(data) if data else tls_client.data_to_send()
            if data:
                await self._stream.send_all(data)

    async def handshake(self) -> None:
        """Complete the TLS handshake (nothing to do without TLS)."""
        tls_client = self._tls
        if tls_client is None:
            return
        while not tls_client.handshake():
            if hello := tls_client.data_to_send():
                await self._stream.send_all(hello)
            tls_client.receive_data(await self._stream.receive_some(RECEIVE_BYTES))
        await self.send(b"")  # the client's Finished

    async def goodbye(self, data: bytes) -> None:
        """Write ``data`` (a close frame) and TLS's close_notify; errors do not matter any more."""
        tls_client = self._tls
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, TLSError):
            async with self._send_lock:
                if tls_client is not None:
                    data = tls_client.send(data) + tls_client.close()
                if data:
                    await self._stream.send_all(data)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


class NativeTransport:
    """:class:`Transport` on :mod:`feedd.wire.wsframe` over a :class:`_Wire`: one read, every frame in it.

    trio-websocket hands each message through its own task and a memory channel, which costs a
    task switch per message and defeats batching (measured: ~19k records/s, as a naive pipeline);
    wsproto parses a frame per generator step (~6 µs per frame, half the daemon's CPU). Here the
    reading task itself feeds the codec and returns everything one read yielded, answering pings
    on the way, so one wakeup carries a whole batch through decode, hub and sinks.
    """

    def __init__(self, wire: _Wire, protocol: wsframe.ClientProtocol) -> None:
        self._wire = wire
        self._protocol = protocol
        self._closed: str | None = None

    async def _write(self, data: bytes) -> None:
        try:
            await self._wire.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, TLSError) as exc:
            self._closed = self._closed or f"connection lost: {describe(exc)}"
            raise TransportError(self._closed) from None

    async def send(self, frame: Message) -> None:
        if self._closed is not None:
            raise TransportError(self._closed)
        await self._write(
            wsframe.encode_text(frame) if isinstance(frame, str) else wsframe.encode_binary(frame)
        )

    async def receive_batch(self) -> list[Message]:
        protocol = self._protocol
        while True:
            # parse first: bytes left from the handshake or a deferred error wait in the codec
            try:
                received = protocol.read()
            except ProtocolError as exc:
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
                data = await self._wire.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, TLSError) as exc:
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
            polite = protocol.close_received is None and not protocol.close_sent and self._closed is None
            await self._wire.goodbye(protocol.encode_close(wsframe.CLOSE_NORMAL) if polite else b"")
        await self._wire.aclose()


async def _native_connect(
    url: str, ssl_context: ssl.SSLContext | None, proxy: ProxyURL | None = None
) -> NativeTransport:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise TransportError(f"not a WebSocket URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    if proxy is None:
        stream = await trio.open_tcp_stream(parts.hostname, port)
    else:
        stream = await open_tunnel(proxy, parts.hostname, port)
    try:
        return await native_over(stream, url, ssl_context)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


def _why_not(exc: OSError) -> BaseException:
    """What made ``trio.open_tcp_stream`` fail: its "all attempts to connect failed" carries the
    attempts' errors as its cause; one error (one address), or all alike, is told as itself."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        kinds = {(type(e), str(e)) for e in cause.exceptions}
        if len(kinds) == 1:
            return cause.exceptions[0]
    return exc


async def open_tunnel(proxy: ProxyURL, host: str, port: int) -> trio.SocketStream:
    """A TCP stream to the proxy, through which ``host:port`` is reached (HTTP CONNECT or SOCKS5,
    the proxy resolving the name); :class:`ProxyError` names the proxy when it cannot be reached,
    refuses, or breaks its protocol. What runs through it (TLS, WebSocket) is the caller's."""
    try:
        stream = await trio.open_tcp_stream(proxy.host, proxy.port)
    except OSError as exc:
        raise ProxyError(f"cannot reach proxy {proxy.address}: {describe(_why_not(exc))}") from None
    try:
        if proxy.scheme == "http":
            connect = HttpConnect(proxy, host, port)
            await stream.send_all(connect.request())
            while (rest := connect.receive_data(await stream.receive_some(RECEIVE_BYTES))) is None:
                pass
        else:
            socks = Socks5Connect(proxy, host, port)
            while True:
                if out := socks.data_to_send():
                    await stream.send_all(out)
                if (rest := socks.receive_data(await stream.receive_some(RECEIVE_BYTES))) is not None:
                    break
        if rest:  # neither TLS nor the WebSocket upgrade lets the server speak first
            raise ProxyError(
                f"proxy {proxy.address} sent {len(rest)} bytes through the tunnel to {host}:{port} "
                "before anything was sent"
            )
    except (OSError, trio.BrokenResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise ProxyError(
            f"proxy {proxy.address}: connection lost in the handshake: {describe(exc)}"
        ) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def native_over(
    stream: trio.abc.Stream, url: str, ssl_context: ssl.SSLContext | None
) -> NativeTransport:
    """The TLS (for ``wss``) and WebSocket handshakes for ``url`` over an open byte stream."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    secure = parts.scheme == "wss"
    if secure and ssl_context is None:
        raise TransportError(f"{url}: wss needs an SSL context")
    wire = _Wire(stream, TLSClient(ssl_context, host) if secure and ssl_context is not None else None)
    await wire.handshake()
    name = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
    handshake = wsframe.ClientHandshake(name if parts.port is None else f"{name}:{parts.port}", target)
    await wire.send(handshake.request())
    try:
        while (rest := handshake.receive_data(await wire.receive())) is None:
            pass
    except HandshakeRefused as exc:
        exc.url = url
        raise
    protocol = wsframe.ClientProtocol(max_message=MAX_MESSAGE)
    protocol.receive_data(rest)  # frames sent right behind the 101 response
    return NativeTransport(wire, protocol)


@cache
def _default_ssl_context() -> ssl.SSLContext:
    # Built once: loading the system trust store costs milliseconds per reconnect otherwise.
    # It honours SSL_CERT_FILE / SSL_CERT_DIR, which is how the benchmark trusts its own CA.
    return ssl.create_default_context()


@asynccontextmanager
async def open_native(
    url: str, *, connect_timeout: float, proxy: ProxyURL | None = None
) -> AsyncIterator[Transport]:
    """Connect (TCP, TLS, WebSocket handshake) within ``connect_timeout``; close on exit.

    With ``proxy``, the TCP stream is a tunnel through it, and TLS (for ``wss``) runs end to end
    through the tunnel: the certificate checked, and the name sent (SNI), are the exchange's.
    """
    ssl_context = _default_ssl_context() if url.startswith("wss:") else None
    via = "" if proxy is None else f" through proxy {proxy.address}"
    try:
        with trio.fail_after(connect_timeout):
            transport = await _native_connect(url, ssl_context, proxy)
    except trio.TooSlowError:
        raise TransportError(
            f"cannot connect to {url}{via}: timed out after {connect_timeout:g} s"
        ) from None
    except (HandshakeRefused, ProxyError):
        raise
    except (OSError, ssl.SSLError, TLSError, trio.BrokenResourceError, HandshakeError) as exc:
        raise TransportError(f"cannot connect to {url}{via}: {describe(exc)}") from None
    try:
        yield transport
    finally:
        await transport.aclose()


@asynccontextmanager
async def open_trio_websocket(
    url: str, *, connect_timeout: float, proxy: ProxyURL | None = None
) -> AsyncIterator[Transport]:
    """Connect (TCP, TLS, WebSocket handshake) within ``connect_timeout``; close on exit.

    trio-websocket opens its own TCP stream, so it cannot go through a proxy: with one, this
    raises :class:`TransportError` saying so (the config check refuses the combination first).
    """
    if proxy is not None:
        raise TransportError(
            f"cannot connect to {url} through proxy {proxy.address}: the trio-websocket transport "
            "does not support proxies (use transport = \"native\")"
        )
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
        raise HandshakeRefused.from_headers(url, exc.status_code, exc.headers or ()) from None
    except ConnectionTimeout:
        raise TransportError(timed_out) from None
    except DisconnectionTimeout:
        if phase != "closing":
            raise
        # the peer did not finish the close handshake in time; the socket is closed anyway
    except (TrioWebsocketHandshakeError, OSError, ssl.SSLError, ValueError) as exc:
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
