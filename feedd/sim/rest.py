"""A minimal HTTP/1.1 JSON server on trio + h11, for the simulators' REST endpoints.

Simulators need a handful of GET endpoints (instrument lists) and the ability to fail them on
demand; a web framework would be a new dependency for that. h11 (already installed with httpx)
owns the protocol; this module only moves bytes, and asks a plain function for each answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import orjson
import trio

log = logging.getLogger(__name__)

_MAX_BODY = 1 << 20


@attrs.frozen(slots=True)
class HttpRequest:
    """One request as the handler sees it: the path without its query, the query parsed."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


@attrs.frozen(slots=True)
class HttpResponse:
    """A JSON answer: ``body`` is any orjson-serializable value."""

    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[HttpRequest], HttpResponse]


class _Closed(Exception):
    """The peer went away, or sent nothing for ``idle_timeout`` seconds."""


class JsonHttpServer:
    """Serves ``handler``'s answers over HTTP/1.1 with keep-alive, one task per connection."""

    def __init__(self, handler: Handler, *, idle_timeout: float = 30.0) -> None:
        self._handler = handler
        self._idle_timeout = idle_timeout
        self.requests_served = 0

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled; ``task_status`` gets the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        # The sockets already listen, so reporting readiness before serve_listeners loses nothing.
        task_status.started(bound)
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request = await self._read_request(conn, stream)
                response = self._answer(request)
                await self._send(conn, stream, response)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except _Closed:
            return
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = exc.error_status_hint
                await self._send_quietly(conn, stream, HttpResponse(status, {"error": str(exc)}))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(self._idle_timeout):
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            raise _Closed

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> HttpRequest:
        event = await self._next_event(conn, stream)
        if isinstance(event, h11.ConnectionClosed):
            raise _Closed
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError(f"expected a request, got {type(event).__name__}", 400)
        body = bytearray()
        while True:
            part = await self._next_event(conn, stream)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > _MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large", 413)
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise _Closed
        target = urlsplit(event.target.decode("ascii", "replace"))
        return HttpRequest(
            method=event.method.decode("ascii", "replace"),
            path=target.path,
            query=parse_qs(target.query),
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers),
            body=bytes(body),
        )

    def _answer(self, request: HttpRequest) -> HttpResponse:
        self.requests_served += 1
        try:
            return self._handler(request)
        except Exception:
            # A simulator bug must not look like a network fault to the client under test.
            log.exception("simulator REST handler failed on %s %s", request.method, request.path)
            return HttpResponse(500, {"error": "simulator handler failed"})

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, response: HttpResponse) -> None:
        body = orjson.dumps(response.body)
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("server", "feedd-sim"),
            *response.headers,
        ]
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)

    async def _send_quietly(
        self, conn: h11.Connection, stream: trio.SocketStream, response: HttpResponse
    ) -> None:
        try:
            await self._send(conn, stream, response)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            log.debug("could not send the error response; the connection is gone")
