"""Serving shared by every exchange simulator: listeners, handshakes, channels, counters.

Split the way hypercorn splits ``protocol/`` from ``trio/``: an exchange module supplies a pure
:class:`~feedd.sim.protocol.SimProtocol`; :class:`SimServer` does everything that involves
sockets and time around it: the WebSocket and REST listeners, the handshake (accepted, rejected
by the protocol, or refused by a fault), the registry of live connections and of the channels
each one takes, and the counters tests read. Each accepted connection's tasks are a
:class:`~feedd.sim.session.Session`; the faults are a :class:`~feedd.sim.switches.FaultSwitches`
(:attr:`SimServer.faults`, with a method of the same name on the server for each); the ``wait_*``
helpers tests synchronise on are :class:`~feedd.sim.waits.Changes`. Market data reaches clients
through :meth:`SimServer.publish`, keyed by *channel*: the protocol's name for what one
subscription delivers.

An exchange simulator subclasses :class:`SimServer` for its market data only: it starts its
feeds in :meth:`SimServer._run_feeds` and may react to a channel starting or stopping on a
connection (a snapshot on subscribe, demand for a replay).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Final, Generic

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

from feedd.sim.protocol import C, Reject, SimProtocol, status_phrase
from feedd.sim.rest import HttpRequest, HttpResponse, JsonHttpServer
from feedd.sim.session import CLOSE_TIMEOUT, FRAMES_PER_WRITE, Session
from feedd.sim.switches import FaultSwitches
from feedd.sim.waits import Changes

log = logging.getLogger(__name__)

#: what a connection gets instead of TLS while :meth:`SimServer.fail_tls` is in force
_PLAIN_ANSWER: Final = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"The plain HTTP request was sent to HTTPS port\r\n"
)


class _TLSListener(trio.abc.Listener[trio.SSLStream[trio.SocketStream]]):
    """TLS over a TCP listener (as ``trio.SSLListener``, which cannot be extended), except for
    the connections ``fail`` picks: those get plain text and are closed, and accepting goes on."""

    def __init__(
        self, transport: trio.SocketListener, context: ssl.SSLContext, fail: Callable[[], bool]
    ) -> None:
        self.transport = transport
        self._context = context
        self._fail = fail

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def accept(self) -> trio.SSLStream[trio.SocketStream]:
        while True:
            tcp = await self.transport.accept()
            if not self._fail():
                return trio.SSLStream(tcp, self._context, server_side=True, https_compatible=True)
            with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(trio.BrokenResourceError):
                await tcp.send_all(_PLAIN_ANSWER)
            await trio.aclose_forcefully(tcp)


class SimServer(Generic[C]):
    """One venue's WebSocket endpoint and REST API on localhost, speaking ``protocol``.

    Run it with ``await nursery.start(sim.serve)``, then point a client at :attr:`ws_url` and
    :attr:`rest_url`. With ``flood``, channels the subclass calls floodable are not paced but
    written as fast as the client reads, ``frames_per_write`` frames per socket write: one (the
    default) makes every frame its own write and, over TLS, its own record, as exchanges do;
    more packs them into one write and so into a few large records.
    """

    def __init__(
        self,
        protocol: SimProtocol[C],
        *,
        ssl_context: ssl.SSLContext | None = None,
        flood: bool = False,
        frames_per_write: int = FRAMES_PER_WRITE,
    ) -> None:
        if frames_per_write < 1:
            raise ValueError(f"frames_per_write must be positive, got {frames_per_write}")
        self.protocol = protocol
        self.flood = flood
        self.frames_per_write = frames_per_write
        self._ssl_context = ssl_context
        self._live: list[C] = []
        self._subscribers: dict[str, set[C]] = {}
        #: what the ``wait_*`` helpers wait on
        self.changes = Changes(self.connections_view)
        #: every fault's switch (the fault methods below are this object's)
        self.faults = FaultSwitches(self)
        self._nursery: trio.Nursery | None = None
        self._host = ""
        self._ws_port = 0
        self._rest_port = 0
        self._rest = JsonHttpServer(self._rest_answer)
        #: recent message times per client address, shared by its connections (per-IP limits)
        self._recent_by_address: dict[str, deque[float]] = {}

        #: handshakes seen, including refused and rejected ones
        self.connection_attempts = 0
        self.connections_accepted = 0
        self.connections_refused = 0
        #: the status codes of refused handshakes
        self.refusals: Counter[int] = Counter()
        #: TLS handshakes failed on purpose (:meth:`fail_tls`); they never reach the counters above
        self.tls_failures = 0
        #: trio time of each of the latest handshakes (refused ones included), oldest first
        self.handshake_times: deque[float] = deque(maxlen=4096)
        #: text messages received from clients (valid or not)
        self.requests_received = 0
        #: application-level pings received (venues where the client pings)
        self.pings_received = 0
        self.rate_limit_closes = 0
        #: the codes of the close frames clients ended their connections with (1000: a polite
        #: close; 1006: the connection ended without one)
        self.client_close_codes: Counter[int] = Counter()
        self.pong_timeouts = 0
        self.idle_closes = 0
        #: connections cut for holding no subscription ``subscribe_timeout`` after opening
        self.subscribe_timeouts = 0
        #: data frames a slow client's full queue made us discard
        self.frames_dropped = 0
        self.flood_frames_sent = 0
        #: socket writes (over TLS: calls producing records) the flood writer made
        self.flood_writes = 0
        self.rest_requests = 0

    # ---- addresses -----------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        """The venue's main WebSocket endpoint."""
        return self.url(self.protocol.default_path)

    @property
    def rest_url(self) -> str:
        return f"http://{self._authority(self._rest_port)}"

    def url(self, path: str) -> str:
        """Any path on the WebSocket port, e.g. ``sim.url("/public/stream")``."""
        scheme = "wss" if self._ssl_context is not None else "ws"
        return f"{scheme}://{self._authority(self._ws_port)}{path}"

    def _authority(self, port: int) -> str:
        if not port:
            raise RuntimeError("the simulator is not serving yet (await nursery.start(sim.serve))")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{port}"

    # ---- observation ---------------------------------------------------------------------

    @property
    def connections(self) -> list[C]:
        """The live connections, oldest first."""
        return list(self._live)

    @property
    def serves_tls(self) -> bool:
        return self._ssl_context is not None

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery the server runs in (for tasks of its faults)."""
        if self._nursery is None:
            raise RuntimeError("the simulator is not serving")
        return self._nursery

    def connections_view(self) -> Sequence[C]:
        """The live connections, oldest first, without a copy (do not keep it)."""
        return self._live

    # ---- waits (see feedd.sim.waits) -----------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, re-checked on every change (no sleeps needed)."""
        await self.changes.wait_until(predicate)

    async def wait_subscribed(self, topics: str | Iterable[str]) -> C:
        """The first live connection that holds every one of ``topics`` (waits for it)."""
        return await self.changes.wait_subscribed(topics)

    async def wait_connections(self, count: int = 1) -> list[C]:
        """The live connections, once there are at least ``count``."""
        return await self.changes.wait_connections(count)

    # ---- faults (each is FaultSwitches' method of the same name) -------------------------

    def drop_connections(self, *, code: int | None = None, reason: str = "dropped") -> None:
        self.faults.drop_connections(code=code, reason=reason)

    def set_silent(self, silent: bool) -> None:
        self.faults.set_silent(silent)

    def refuse_connections(
        self, count: int, *, status: int = 503, retry_after: float | datetime | None = None
    ) -> None:
        self.faults.refuse_connections(count, status=status, retry_after=retry_after)

    def fail_tls(self, count: int) -> None:
        self.faults.fail_tls(count)

    def send_malformed(self) -> None:
        self.faults.send_malformed()

    def rest_fail(self, failing: bool) -> None:
        self.faults.rest_fail(failing)

    def half_open(self, duration: float) -> None:
        self.faults.half_open(duration)

    def stall_data(self, stalled: bool) -> None:
        self.faults.stall_data(stalled)

    def trickle(self, byte_interval: float | None) -> None:
        self.faults.trickle(byte_interval)

    def send_invalid(self) -> None:
        self.faults.send_invalid()

    def send_oversized(self, declared: int) -> None:
        self.faults.send_oversized(declared)

    def refuse_symbols(self, symbols: Iterable[str]) -> None:
        self.faults.refuse_symbols(symbols)

    def swallow_subscribes(self, swallowing: bool) -> None:
        self.faults.swallow_subscribes(swallowing)

    def close_later(self, conn: C, delay: float, code: int | None, reason: str) -> None:
        """Close ``conn`` ``delay`` seconds from now (a venue's announced end: OKX's 64008 notice
        comes 60 s before the cut); new connections are accepted meanwhile."""

        async def close() -> None:
            await trio.sleep(delay)
            conn.close(code, reason)

        self.nursery.start_soon(close)

    # ---- market data ---------------------------------------------------------------------

    def has_subscribers(self, channel: str) -> bool:
        """Whether any connection takes ``channel`` (so building its payload is worth it)."""
        return channel in self._subscribers

    def publish(self, channel: str, payload: str) -> None:
        """Queue ``payload`` for every connection taking ``channel``, in each one's envelope;
        nothing while silent."""
        subscribers = self._subscribers.get(channel)
        faults = self.faults
        if not subscribers or faults.silent or (faults.data_stalled and not self._heartbeat(channel)):
            return
        for conn in subscribers:
            if conn.offer(conn.frame(channel, payload)):
                conn._touch()
            else:
                self.frames_dropped += 1

    def deliver(self, conn: C, text: str) -> None:
        """Queue ``text`` for ``conn`` alone (a snapshot on subscribe, a queued reply); nothing
        while silent."""
        if not self.faults.silent and not conn.offer(text):
            self.frames_dropped += 1

    # ---- hooks for the exchange's market data ----------------------------------------------

    def _run_feeds(self, nursery: trio.Nursery) -> None:
        """Start the venue's market-data tasks (called once the listeners are up)."""

    def _on_start(self, conn: C, channel: str) -> None:
        """``channel`` began delivering to ``conn`` (after its acknowledgement was sent)."""

    def _on_stop(self, conn: C, channel: str) -> None:
        """``channel`` stopped delivering to ``conn`` (unsubscribed, or the connection ended)."""

    def _heartbeat(self, channel: str) -> bool:
        """Whether ``channel`` carries the venue's heartbeats, not data (it keeps flowing
        through :meth:`stall_data`)."""
        del channel
        return False

    def _floodable(self, channel: str) -> bool:
        """Whether ``channel`` is written by the flood writer when ``flood`` is on."""
        del channel
        return False

    def _flood_payloads(self, conn: C, channels: Sequence[str], per_channel: int) -> list[bytes]:
        """``per_channel`` fresh encoded payloads of each of ``channels``, in sending order."""
        raise NotImplementedError

    def _refusal(self, status: int) -> Reject:
        """The venue's answer with ``status`` to a handshake while :meth:`refuse_connections`
        is in force (its body; the ``Retry-After`` is added by the caller)."""
        return Reject(status, {"error": status_phrase(status)})

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(404, {"error": f"Not found: {request.method} {request.path}"})

    def _rest_outage(self) -> HttpResponse:
        return HttpResponse(503, {"error": "Service unavailable (simulated outage)"})

    # ---- serving -------------------------------------------------------------------------

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the WebSocket endpoint on ``host:port`` and REST on a port of its own, until
        cancelled."""
        async with trio.open_nursery() as nursery:
            tcp = await trio.open_tcp_listeners(port, host=host)
            listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = tcp
            if self._ssl_context is not None:
                listeners = [_TLSListener(each, self._ssl_context, self._take_tls_failure) for each in tcp]
            # WebSocketServer serves any listener; its annotation names only trio's two
            server = WebSocketServer(self._handle, listeners, disconnect_timeout=CLOSE_TIMEOUT)  # type: ignore[arg-type]
            await nursery.start(server.run)
            self._rest_port = await nursery.start(partial(self._rest.serve, host=host, port=0))
            self._host = host
            self._ws_port = tcp[0].socket.getsockname()[1]
            self._nursery = nursery
            self._run_feeds(nursery)
            log.info("%s on %s (REST %s)", type(self).__name__, self.ws_url, self.rest_url)
            task_status.started()

    def _rest_answer(self, request: HttpRequest) -> HttpResponse:
        self.rest_requests += 1
        self.changes.notify()
        if self.faults.rest_failing:
            return self._rest_outage()
        return self._answer_rest(request)

    async def _handle(self, request: WebSocketRequest) -> None:
        self.connection_attempts += 1
        self.handshake_times.append(trio.current_time())
        self.changes.notify()
        path, _, query = request.path.partition("?")
        opened = self.protocol.open(path, query)
        if isinstance(opened, Reject) and opened.status == 404:
            await self._reject(request, opened)
            return
        refusal = self.faults.take_refusal()
        if refusal is not None:
            self.connections_refused += 1
            self.refusals[refusal] += 1
            self.changes.notify()
            await self._reject(request, self.faults.with_retry_after(self._refusal(refusal)))
            return
        if isinstance(opened, Reject):
            await self._reject(request, opened)
            return
        try:
            ws = await request.accept()
        except ConnectionClosed:
            return
        conn = opened.connection
        conn._ws = ws
        if self.protocol.liveness.incoming_per_address:
            remote = ws.remote
            address = str(getattr(remote, "address", remote))
            conn._recent = self._recent_by_address.setdefault(address, deque())
        self.connections_accepted += 1
        self._live.append(conn)
        for channel in opened.start:
            self.start_channel(conn, channel)
        self.changes.notify()
        session = Session(self, conn, ws)
        try:
            await session.run()
        finally:
            self._forget(conn)
            await session.finish()

    async def _reject(self, request: WebSocketRequest, reject: Reject) -> None:
        try:
            await request.reject(
                reject.status,
                extra_headers=[(b"content-type", b"application/json"), *reject.headers],
                body=orjson.dumps(reject.body),
            )
        except ConnectionClosed:
            log.debug("client left before the %d rejection was sent", reject.status)

    def _forget(self, conn: C) -> None:
        if conn in self._live:
            self._live.remove(conn)
        for channel in [*conn._channels, *conn._flood]:
            self.stop_channel(conn, channel)
        conn._ended.set()
        self.changes.notify()

    def start_channel(self, conn: C, channel: str) -> None:
        """``channel`` begins delivering to ``conn`` (once its acknowledgement is on the wire)."""
        if self.flood and self._floodable(channel):
            conn._flood[channel] = None
            conn._flood_updated()
            return
        if channel in conn._channels:
            return
        conn._channels.add(channel)
        self._subscribers.setdefault(channel, set()).add(conn)
        self._on_start(conn, channel)

    def stop_channel(self, conn: C, channel: str) -> None:
        """``channel`` stops delivering to ``conn``."""
        if channel in conn._flood:
            del conn._flood[channel]
            conn._flood_updated()
            return
        if channel not in conn._channels:
            return
        conn._channels.discard(channel)
        subscribers = self._subscribers[channel]
        subscribers.discard(conn)
        if not subscribers:
            del self._subscribers[channel]
        self._on_stop(conn, channel)

    def _take_tls_failure(self) -> bool:
        """Whether the connection just accepted is to get plain text instead of TLS."""
        if not self.faults.take_tls_failure():
            return False
        self.tls_failures += 1
        self.handshake_times.append(trio.current_time())
        self.changes.notify()
        return True
