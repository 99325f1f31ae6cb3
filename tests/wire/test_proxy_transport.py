"""feedd.wire.transport through a proxy, where no proxy server is needed to show it: a proxy that
accepts and never answers, and the transport that cannot use one. (Real proxies carry real
streams in tests/test_proxy_e2e.py.)"""

from __future__ import annotations

import pytest
import trio

from feedd.errors import ProxyError, TransportError
from feedd.wire.proxy import ProxyURL
from feedd.wire.transport import open_native, open_trio_websocket


async def test_a_proxy_that_never_answers_times_out_naming_it() -> None:
    async with trio.open_nursery() as nursery:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        accepted: list[trio.SocketStream] = []

        async def hold() -> None:
            accepted.append(await listener.accept())  # accepts, reads nothing, says nothing
            await trio.sleep_forever()

        nursery.start_soon(hold)
        port = listener.socket.getsockname()[1]
        proxy = ProxyURL("http", "127.0.0.1", port)
        with pytest.raises(TransportError) as caught:
            async with open_native("wss://stream.example:9443/ws", connect_timeout=0.2, proxy=proxy):
                pass
        nursery.cancel_scope.cancel()
    assert str(caught.value) == (
        f"cannot connect to wss://stream.example:9443/ws through proxy 127.0.0.1:{port}: "
        "timed out after 0.2 s"
    )
    assert len(accepted) == 1


async def test_a_proxy_port_nobody_listens_on_is_a_proxy_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        proxy = ProxyURL("socks5", "127.0.0.1", port)
        refused = rf"^cannot reach proxy 127\.0\.0\.1:{port}: ConnectionRefusedError"
        with pytest.raises(ProxyError, match=refused):
            async with open_native("ws://stream.example/ws", connect_timeout=5, proxy=proxy):
                pass


async def test_the_trio_websocket_transport_refuses_a_proxy_saying_why() -> None:
    with pytest.raises(TransportError, match="the trio-websocket transport does not support proxies"):
        async with open_trio_websocket(
            "ws://stream.example/ws", connect_timeout=5, proxy=ProxyURL("http", "127.0.0.1", 3128)
        ):
            pass
