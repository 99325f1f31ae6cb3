"""Both transports against a real trio-websocket server on localhost: the seam behaves the same.

Each test runs once per entry of ``TRANSPORTS``, so the default (feedd's own codec) and the
trio-websocket fallback are held to one contract: ordered whole messages, pings answered, the
peer's close and a rejection reported the same way, sends delivered, a polite close on exit.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trustme
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket
from wsproto.events import TextMessage

from feedd import transport as transport_module
from feedd.transport import TRANSPORTS, Frame, OpenTransport, Transport, TransportError, open_transport

Handler = Callable[[WebSocketConnection], Awaitable[None]]

#: every behaviour below holds for each transport a config may name
each_transport = pytest.mark.parametrize("open_", TRANSPORTS.values(), ids=TRANSPORTS.keys())


@asynccontextmanager
async def server(
    handler: Handler | None = None,
    *,
    reject: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """Serve ``handler`` on an accepted connection (or reject with ``reject``); yield the URL."""

    async def on_request(request: WebSocketRequest) -> None:
        if reject is not None:
            await request.reject(reject)
            return
        ws = await request.accept()
        if handler is not None:
            await handler(ws)

    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(serve_websocket, on_request, "127.0.0.1", 0, ssl_context)
        scheme = "wss" if ssl_context else "ws"
        yield f"{scheme}://127.0.0.1:{ws_server.port}/stream?streams=x"
        nursery.cancel_scope.cancel()


async def receive(transport: Transport, count: int) -> list[Frame]:
    frames: list[Frame] = []
    while len(frames) < count:
        frames += await transport.receive_batch()
    return frames


def test_default_is_the_native_transport() -> None:
    assert next(iter(TRANSPORTS)) == "native"
    assert open_transport is TRANSPORTS["native"]


@each_transport
async def test_text_frames_arrive_whole_and_in_order(open_: OpenTransport) -> None:
    large = "L" * 200_000
    sent: list[Frame] = ["first", large, b"\x00binary\xff", "x" * 126, "last"]

    async def handler(ws: WebSocketConnection) -> None:
        for message in sent:
            await ws.send_message(message)
        await trio.sleep_forever()

    async with server(handler) as url, open_(url, connect_timeout=5) as transport:
        with trio.fail_after(5):
            assert await receive(transport, len(sent)) == sent


@each_transport
async def test_fragmented_message_is_reassembled(open_: OpenTransport) -> None:
    async def handler(ws: WebSocketConnection) -> None:
        # trio-websocket's public API sends whole messages; its _send emits a fragment
        await ws._send(TextMessage("Hel", message_finished=False))
        await ws._send(TextMessage("lo " + "w" * 70_000, message_finished=False))
        await ws._send(TextMessage("orld", message_finished=True))
        await ws.send_message("next")
        await trio.sleep_forever()

    async with server(handler) as url, open_(url, connect_timeout=5) as transport:
        with trio.fail_after(5):
            assert await receive(transport, 2) == ["Hello " + "w" * 70_000 + "orld", "next"]


@each_transport
async def test_server_ping_is_answered_while_receiving(open_: OpenTransport) -> None:
    pong_seen = trio.Event()

    async def handler(ws: WebSocketConnection) -> None:
        await ws.ping(b"are you there")  # returns once the matching pong arrived
        pong_seen.set()
        await ws.send_message("after the pong")
        await trio.sleep_forever()

    async with server(handler) as url, open_(url, connect_timeout=5) as transport:
        with trio.fail_after(5):
            assert await receive(transport, 1) == ["after the pong"]
        assert pong_seen.is_set()


@each_transport
async def test_server_close_surfaces_code_and_reason(open_: OpenTransport) -> None:
    async def handler(ws: WebSocketConnection) -> None:
        await ws.send_message("before the close")
        await ws.aclose(code=4001, reason="going away now")

    async with server(handler) as url, open_(url, connect_timeout=5) as transport:
        with trio.fail_after(5):
            assert await receive(transport, 1) == ["before the close"]
            with pytest.raises(TransportError, match=r"^closed by peer: code 4001 \(going away now\)$"):
                await transport.receive_batch()


@each_transport
async def test_rejected_handshake_reports_the_http_status(open_: OpenTransport) -> None:
    async with server(reject=503) as url:
        with pytest.raises(TransportError, match=r"^handshake rejected: HTTP 503$"):
            async with open_(url, connect_timeout=5):
                pass


@each_transport
async def test_refused_connection_is_a_transport_error(open_: OpenTransport) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransportError, match="cannot connect"):
        async with open_(f"ws://127.0.0.1:{port}/", connect_timeout=5):
            pass


@each_transport
async def test_silent_server_times_out_the_connect(
    open_: OpenTransport, autojump_clock: trio.testing.MockClock
) -> None:
    async def never_answer(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, never_answer, 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(TransportError, match="timed out"):
            async with open_(f"ws://127.0.0.1:{port}/", connect_timeout=3):
                pass
        nursery.cancel_scope.cancel()


@each_transport
async def test_client_send_arrives_at_the_server(open_: OpenTransport) -> None:
    got: list[str | bytes] = []
    done = trio.Event()

    async def handler(ws: WebSocketConnection) -> None:
        got.append(await ws.get_message())
        got.append(await ws.get_message())
        got.append(await ws.get_message())
        done.set()
        await trio.sleep_forever()

    async with server(handler) as url, open_(url, connect_timeout=5) as transport:
        await transport.send('{"method":"SUBSCRIBE"}')
        await transport.send(b"\x00\x01")
        await transport.send("y" * 70_000)
        with trio.fail_after(5):
            await done.wait()
    assert got == ['{"method":"SUBSCRIBE"}', b"\x00\x01", "y" * 70_000]


@each_transport
async def test_aclose_sends_a_normal_close_frame(open_: OpenTransport) -> None:
    closed_with: list[int] = []
    done = trio.Event()

    async def handler(ws: WebSocketConnection) -> None:
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            assert exc.reason is not None
            closed_with.append(exc.reason.code)
        done.set()

    async with server(handler) as url:
        async with open_(url, connect_timeout=5):
            pass
        with trio.fail_after(5):
            await done.wait()
    assert closed_with == [1000]


@each_transport
async def test_wss_connects_through_tls(open_: OpenTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    monkeypatch.setattr(transport_module, "_default_ssl_context", lambda: client_context)

    async def handler(ws: WebSocketConnection) -> None:
        await ws.send_message(await ws.get_message())
        await trio.sleep_forever()

    async with server(handler, ssl_context=server_context) as url, open_(url, connect_timeout=5) as transport:
        await transport.send("echo over TLS")
        with trio.fail_after(5):
            assert await receive(transport, 1) == ["echo over TLS"]
