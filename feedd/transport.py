"""The WebSocket seam: the only module that knows which WebSocket library feedd uses.

The runner needs four things of a transport — connect, send, receive (in batches), close — and
nothing else, so that the library (measured: the most expensive part of the hot path) can be
swapped for another without touching the runner or any adapter.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Protocol

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

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


@cache
def _default_ssl_context() -> ssl.SSLContext:
    # Built once: loading the system trust store costs milliseconds per reconnect otherwise.
    # It honours SSL_CERT_FILE / SSL_CERT_DIR, which is how the benchmark trusts its own CA.
    return ssl.create_default_context()


@asynccontextmanager
async def open_transport(url: str, *, connect_timeout: float) -> AsyncIterator[Transport]:
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
