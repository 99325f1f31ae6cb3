"""A minimal ASGI application: exact-path routing, bounded JSON bodies, JSON errors.

Six endpoints do not need a web framework; this is the part of one they need, and it can be
read in a minute. Every answer the app gives on its own (unknown path, wrong method, missing
token, oversized body, a handler's bug) is ``{"error": "..."}`` with a 4xx or 500 status, and
nothing a client sends can end the server.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import attrs
import orjson

from feedd.errors import clipped

log = logging.getLogger(__name__)

#: request bodies are a few dozen bytes; anything past this is refused unread (413)
MAX_BODY = 16 * 1024
JSON = "application/json"

Scope = MutableMapping[str, Any]
AsgiMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]


@attrs.frozen
class Request:
    method: str
    path: str
    #: query parameters, each with every value it was given
    query: dict[str, list[str]]
    #: header names lower-cased; a repeated header keeps its last value
    headers: dict[str, str]
    body: bytes


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, orjson.dumps(value), JSON, headers)


class HttpError(Exception):
    """Raised by a handler to answer ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def response(self) -> Response:
        return json_response(self.status, {"error": self.message}, self.headers)


Handler = Callable[[Request], Awaitable[Response]]
#: how a handler is run: ``await run(handler, request)`` (by default ``await handler(request)``)
HandlerRunner = Callable[[Handler, Request], Awaitable[Response]]


async def _direct(handler: Handler, request: Request) -> Response:
    return await handler(request)


@attrs.frozen
class Route:
    handler: Handler
    #: the bearer token is demanded here (when one is configured)
    protected: bool = False


class App:
    """The ASGI callable: routes ``(method, path)`` to handlers; HEAD is GET without a body.

    Mounted under a prefix by another framework (``root_path`` in the scope), it routes the path
    below the prefix. The app itself is loop-agnostic (it only awaits ``receive``, ``send`` and
    the handler), so it runs on whichever loop its server runs; :meth:`handle_with` says how a
    handler is run (the service, under asyncio, runs it in its trio guest).
    """

    def __init__(self, *, token: str | None = None, max_body: int = MAX_BODY) -> None:
        self._routes: dict[str, dict[str, Route]] = {}
        self._token = None if token is None else token.encode()
        self.max_body = max_body
        self._run: HandlerRunner = _direct

    def route(self, method: str, path: str, handler: Handler, *, protected: bool = False) -> None:
        self._routes.setdefault(path, {})[method] = Route(handler, protected)

    def handle_with(self, run: HandlerRunner) -> None:
        """Run every handler as ``await run(handler, request)``."""
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":  # no WebSocket endpoint here: refuse the handshake
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        try:
            response = await self._answer(scope, method, receive)
        except HttpError as exc:
            response = exc.response()
        except Exception as exc:  # a handler's bug: answered and logged, never fatal
            log.exception("HTTP %s %s failed", method, scope.get("path"))
            text = clipped(f"{type(exc).__name__}: {exc}", 200)
            response = json_response(500, {"error": f"internal error: {text}"})
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            (b"cache-control", b"no-store"),
            *((name.encode(), value.encode()) for name, value in response.headers),
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else response.body})

    async def _answer(self, scope: Scope, method: str, receive: Receive) -> Response:
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root + "/"):  # mounted under root (Starlette keeps the full path)
            path = path[len(root):]
        methods = self._routes.get(path)
        if methods is None:
            raise HttpError(404, f"no such endpoint: {clipped(path)}")
        route = methods.get("GET" if method == "HEAD" and "GET" in methods else method)
        if route is None:
            allowed = sorted({*methods, *(["HEAD"] if "GET" in methods else [])})
            raise HttpError(
                405, f"{clipped(method)} is not allowed on {path} (allowed: {', '.join(allowed)})",
                (("allow", ", ".join(allowed)),),
            )
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }
        if route.protected:
            self._authorize(headers.get("authorization"))
        body = await self._body(headers, receive)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        return await self._run(route.handler, Request(method, path, query, headers, body))

    def _authorize(self, header: str | None) -> None:
        if self._token is None:
            return
        challenge = (("www-authenticate", 'Bearer realm="feedd"'),)
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HttpError(
                401, "this endpoint needs the API token: Authorization: Bearer <token>", challenge
            )
        if not hmac.compare_digest(token.strip().encode("latin-1"), self._token):
            raise HttpError(401, "wrong API token", challenge)

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes:
        declared = headers.get("content-length")
        too_big = HttpError(413, f"request body larger than {self.max_body} bytes")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to set up or tear down: the service around the app owns every resource."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
