"""Both transports against a real trio-websocket server on localhost: the seam behaves the same.

Each test runs once per entry of ``TRANSPORTS``, so the default (feedd's own codec) and the
trio-websocket fallback are held to one contract: ordered whole messages, pings answered, the
peer's close and a rejection reported the same way, sends delivered, a polite close on exit.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trustme
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket
from wsproto.events import TextMessage

from feedd.errors import TransportError
from feedd.sim.protocol import frame_header
from feedd.wire import transport as transport_module
from feedd.wire import wsframe
from feedd.wire.transport import (
    TRANSPORTS,
    Message,
    OpenTransport,
    Transport,
    native_over,
    open_native,
    open_transport,
)

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


async def receive(transport: Transport, count: int) -> list[Message]:
    frames: list[Message] = []
    while len(frames) < count:
        frames += await transport.receive_batch()
    return frames


def test_default_is_the_native_transport() -> None:
    assert next(iter(TRANSPORTS)) == "native"
    assert open_transport is TRANSPORTS["native"]


@each_transport
async def test_text_frames_arrive_whole_and_in_order(open_: OpenTransport) -> None:
    large = "L" * 200_000
    sent: list[Message] = ["first", large, b"\x00binary\xff", "x" * 126, "last"]

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
@pytest.mark.parametrize("scheme", ["ws", "wss"])  # wss: a TLS handshake that never completes
async def test_silent_server_times_out_the_connect(
    open_: OpenTransport, scheme: str, autojump_clock: trio.testing.MockClock
) -> None:
    async def never_answer(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, never_answer, 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(TransportError, match="timed out after 3 s"):
            async with open_(f"{scheme}://127.0.0.1:{port}/", connect_timeout=3):
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
async def test_wss_connects_through_tls(
    open_: OpenTransport, tls_pair: tuple[trustme.CA, ssl.SSLContext]
) -> None:
    server_context = tls_pair[1]

    async def handler(ws: WebSocketConnection) -> None:
        await ws.send_message(await ws.get_message())
        await trio.sleep_forever()

    async with server(handler, ssl_context=server_context) as url, open_(url, connect_timeout=5) as transport:
        await transport.send("echo over TLS")
        with trio.fail_after(5):
            assert await receive(transport, 1) == ["echo over TLS"]


# ---- the native transport over TLS: feedd.wire.tls under a real socket ------------------------------


RawScript = Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]


async def accept_upgrade(stream: trio.abc.Stream) -> None:
    """Read a client's WebSocket upgrade request from ``stream`` and accept it, by hand."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(4096)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + wsframe.accept_key(key) + b"\r\n\r\n"
    )


@asynccontextmanager
async def raw_wss_server(server_context: ssl.SSLContext, script: RawScript) -> AsyncIterator[str]:
    """A TLS server that accepts the WebSocket upgrade by hand, then runs ``script`` on the stream,
    so a test decides where records, close_notify and the TCP close fall."""

    async def on_connection(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_context, server_side=True)
        await accept_upgrade(stream)
        await script(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1"))
        yield f"wss://127.0.0.1:{listeners[0].socket.getsockname()[1]}/stream"
        nursery.cancel_scope.cancel()


def text_frame(text: str) -> bytes:
    body = text.encode()
    return frame_header(len(body)) + body


async def test_native_wss_hands_over_every_record_of_one_read_in_one_batch(
    tls_pair: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    """Exchanges write one frame per TLS record; all that one read brought must come out of one
    call (trio's SSLStream gave one record per call). In-memory streams make "one read" exact:
    the server's 100 records move to the client only when the test pumps them, all at once."""
    to_client, from_server = trio.testing.MemorySendStream(), trio.testing.MemoryReceiveStream()
    to_server, from_client = trio.testing.MemorySendStream(), trio.testing.MemoryReceiveStream()

    async def pump_to_client() -> None:
        trio.testing.memory_stream_pump(to_client, from_server)

    async def pump_to_server() -> None:
        trio.testing.memory_stream_pump(to_server, from_client)

    to_client.send_all_hook = pump_to_client
    to_server.send_all_hook = pump_to_server
    server = trio.SSLStream(trio.StapledStream(to_client, from_client), tls_pair[1], server_side=True)
    client_stream = trio.StapledStream(to_server, from_server)
    sent = [f'{{"n":{i}}}' for i in range(100)]

    async def serve() -> None:
        await accept_upgrade(server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        context = transport_module._default_ssl_context()
        transport = await native_over(client_stream, "wss://127.0.0.1/stream", context)
        to_client.send_all_hook = None
        for text in sent:
            await server.send_all(text_frame(text))  # one send_all, one TLS record; held back
        await pump_to_client()
        with trio.fail_after(5):
            assert await transport.receive_batch() == sent


async def test_native_wss_close_notify_after_a_batch_delivers_the_batch_then_ends(
    tls_pair: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    written = trio.Event()

    async def script(stream: trio.SSLStream[trio.SocketStream]) -> None:
        for text in ("a", "b", "c"):
            await stream.send_all(text_frame(text))
        await stream.aclose()  # close_notify right behind the records, no WebSocket close
        written.set()

    async with raw_wss_server(tls_pair[1], script) as url, open_native(url, connect_timeout=5) as transport:
        with trio.fail_after(5):
            await written.wait()
            assert await receive(transport, 3) == ["a", "b", "c"]
            with pytest.raises(TransportError, match=r"^connection closed without a close frame$"):
                await transport.receive_batch()


async def test_native_wss_truncated_stream_delivers_whole_records_then_ends(
    tls_pair: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    async def script(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.send_all(text_frame("whole"))
        await stream.transport_stream.aclose()  # TCP close without close_notify

    async with raw_wss_server(tls_pair[1], script) as url, open_native(url, connect_timeout=5) as transport:
        with trio.fail_after(5):
            assert await receive(transport, 1) == ["whole"]
            with pytest.raises(TransportError, match=r"^connection closed without a close frame$"):
                await transport.receive_batch()


async def test_native_wss_untrusted_certificate_is_a_connect_error(
    tls_pair: tuple[trustme.CA, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "_default_ssl_context", ssl.create_default_context)

    async def script(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await trio.sleep_forever()

    async with raw_wss_server(tls_pair[1], script) as url:
        with pytest.raises(TransportError, match=r"^cannot connect to .*CERTIFICATE_VERIFY_FAILED"):
            async with open_native(url, connect_timeout=5):
                pass


async def test_native_wss_records_that_came_with_the_handshake_are_not_held_back(
    tls_pair: tuple[trustme.CA, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under TLS 1.2 a server may send data right behind its Finished, in the very read that
    completes the client's handshake; those records must come out without waiting for another
    read (the server here sends nothing more, so waiting would hang)."""
    key = b"dGhlIHNhbXBsZSBub25jZQ=="  # fixed, so the server can answer before reading the request
    monkeypatch.setattr(wsframe, "ClientHandshake", partial(wsframe.ClientHandshake, key=key))
    server_context = tls_pair[1]
    server_context.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(incoming, outgoing, server_side=True)
    to_client, from_server = trio.testing.MemorySendStream(), trio.testing.MemoryReceiveStream()
    to_server, from_client = trio.testing.MemorySendStream(), trio.testing.MemoryReceiveStream()

    async def pump_to_server() -> None:
        trio.testing.memory_stream_pump(to_server, from_client)

    to_server.send_all_hook = pump_to_server

    async def serve() -> None:
        while True:
            incoming.write(await from_client.receive_some())
            try:
                server.do_handshake()
                break
            except ssl.SSLWantReadError:
                await to_client.send_all(outgoing.read())
                trio.testing.memory_stream_pump(to_client, from_server)
        server.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + wsframe.accept_key(key) + b"\r\n\r\n"
        )
        server.write(text_frame("right behind the handshake"))
        await to_client.send_all(outgoing.read())  # Finished and both records, one read
        trio.testing.memory_stream_pump(to_client, from_server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        context = transport_module._default_ssl_context()
        with trio.fail_after(5):
            transport = await native_over(
                trio.StapledStream(to_server, from_server), "wss://127.0.0.1/stream", context
            )
            assert await transport.receive_batch() == ["right behind the handshake"]


@each_transport
async def test_a_connection_reset_by_the_peer_says_so(open_: OpenTransport) -> None:
    """A reset arrives as an exception without text of its own (trio's BrokenResourceError);
    the error must still say what happened, not end in "connection lost: "."""
    accepted = trio.Event()

    async def handle(stream: trio.SocketStream) -> None:
        await accept_upgrade(stream)
        await accepted.wait()
        # linger 0: close() sends RST instead of FIN
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with open_(f"ws://127.0.0.1:{port}/stream", connect_timeout=5) as transport:
            accepted.set()
            with trio.fail_after(5), pytest.raises(TransportError) as caught:
                while True:
                    await transport.receive_batch()
        nursery.cancel_scope.cancel()
    text = str(caught.value)
    assert not text.rstrip().endswith(":"), text
    # feedd's own transport names the errno; trio-websocket calls it an abnormal closure
    assert any(what in text for what in ("ECONNRESET", "reset", "code 1006")), text


class _BrokenWire:
    """A wire whose every call fails the way trio's streams may: an exception with no text."""

    async def receive(self) -> bytes:
        raise trio.BrokenResourceError

    async def send(self, data: bytes) -> None:
        raise trio.ClosedResourceError

    async def goodbye(self, data: bytes) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("call", ["receive", "send"])
async def test_native_errors_without_text_still_say_what_happened(call: str) -> None:
    transport = transport_module.NativeTransport(
        _BrokenWire(),  # type: ignore[arg-type]
        wsframe.ClientProtocol(max_message=transport_module.MAX_MESSAGE),
    )
    with pytest.raises(TransportError) as caught:
        if call == "receive":
            await transport.receive_batch()
        else:
            await transport.send("x")
    assert str(caught.value) == {
        "receive": "connection lost: BrokenResourceError",
        "send": "connection lost: ClosedResourceError",
    }[call]


async def test_native_socket_reads_deliver_more_than_a_buffer_whole_and_in_order() -> None:
    """A TCP socket is read directly into one reused buffer: what exceeds a read stays in the
    socket for the next one, and no frame is cut, lost or reordered across reads."""
    client_sock, server_sock = trio.socket.socketpair()
    client_stream, server = trio.SocketStream(client_sock), trio.SocketStream(server_sock)
    sent = [f'{{"n":{i},"pad":"{"x" * 200}"}}' for i in range(3000)]  # ~640 KiB: several reads
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_upgrade, server)
        transport = await native_over(client_stream, "ws://127.0.0.1/stream", None)
        await trio.testing.wait_all_tasks_blocked()  # the upgrade's reply is out
        nursery.start_soon(server.send_all, b"".join(text_frame(text) for text in sent))
        with trio.fail_after(5):
            assert await receive(transport, len(sent)) == sent
        await trio.testing.wait_all_tasks_blocked()
        await server.aclose()
        with pytest.raises(TransportError), trio.fail_after(5):
            await transport.receive_batch()
        await transport.aclose()
