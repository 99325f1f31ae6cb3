"""Serve the ASGI app with hypercorn's trio worker, as one task of the service's nursery.

feedd binds the listening socket itself and hands it to hypercorn as ``fd://N`` (one of
hypercorn's documented bind forms): a taken port then fails with a sentence naming the address
and the config key rather than an exception group from inside the server, and port 0 gives
the address actually bound before anything else starts. Shutdown is graceful: when
``shutdown`` returns, hypercorn stops accepting and lets requests in flight finish for up to
:data:`GRACE` seconds.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

from feedd.errors import describe
from feedd.http.app import App

log = logging.getLogger(__name__)

#: how long requests in flight may take to finish once the service stops
GRACE = 1.0


class ListenError(Exception):
    """The HTTP API cannot listen where ``[http] listen`` says; the message says why."""


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) as the config validated it."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def bind(listen: str) -> socket.socket:
    """A bound TCP socket for ``listen`` (a host name is resolved); ListenError says why not."""
    host, port = split_listen(listen)
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(f"cannot listen on {listen} ([http] listen): {describe(exc)}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {listen} ([http] listen): {describe(exc)}") from exc
    return sock


async def serve_http(
    app: App,
    listen: str,
    shutdown: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``listen`` until ``shutdown`` returns (or cancelled); started with the
    bound ``HOST:PORT``."""
    sock = await bind(listen)
    host, port = sock.getsockname()[:2]
    address = format_address(host, port)
    config = HypercornConfig()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    # hypercorn's own lines ("Running on ...") at INFO stay quiet unless -vv; its errors show
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = GRACE
    config.include_server_header = False
    async with trio.open_nursery() as nursery:
        asgi = cast(ASGIFramework, app)
        await nursery.start(partial(serve, asgi, config, shutdown_trigger=shutdown, mode="asgi"))
        task_status.started(address)
