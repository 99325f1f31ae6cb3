"""Serving, connections, faults and counters shared by every exchange simulator.

Split the way hypercorn splits ``protocol/`` from ``trio/``. An exchange module supplies a
:class:`SimProtocol`: a pure object that turns a handshake path into a connection or a
rejection, and one client text frame into a :class:`Reply`. :class:`SimServer` does everything
that involves sockets and time around it: the WebSocket and REST listeners, a reader and a
writer task per connection, server pings, idle cuts, subscribe deadlines and rate limits (as
the protocol's :class:`Liveness` asks), faults on demand, the flood writer, and the counters
and ``wait_*`` helpers tests synchronise on. Market data reaches clients through
:meth:`SimServer.publish`, keyed by *channel*: the protocol's name for what one subscription
delivers.

An exchange simulator subclasses :class:`SimServer` for its market data only: it starts its
feeds in :meth:`SimServer._run_feeds` and may react to a channel starting or stopping on a
connection (a snapshot on subscribe, demand for a replay).
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from email.utils import format_datetime
from functools import partial
from http import HTTPStatus
from typing import Any, Final, Generic, Protocol, TypeVar

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from feedd.sim.rest import HttpRequest, HttpResponse, JsonHttpServer

log = logging.getLogger(__name__)

_OUTBOX_SIZE: Final = 8192
_CLOSE_TIMEOUT: Final = 5.0
#: frames the flood writer puts in one socket write by default: one, as an exchange writes them,
#: so over TLS every frame is a TLS record of its own (a client must not get batches for free)
FRAMES_PER_WRITE: Final = 1
#: frames the flood writer builds per round (per channel set), then writes FRAMES_PER_WRITE at a time
FLOOD_ROUND: Final = 512
#: what :meth:`SimServer.send_invalid` sends: not JSON at all (a proxy's error page)
INVALID_FRAME: Final = "<html><body><h1>502 Bad Gateway</h1></body></html>"
#: bytes of payload written after an oversized frame's header (the rest never comes)
_OVERSIZED_PREFIX: Final = 64 * 1024


@attrs.frozen(slots=True)
class Liveness:
    """The connection rules a venue enforces, all optional.

    ``ping_interval``: the server sends a WebSocket ping this often and closes (1008) a client
    that has not answered within ``pong_timeout``. ``max_incoming_per_second``: more client
    messages than this within one second closes the connection (1008); with
    ``incoming_per_address`` the count spans every connection from the client's address (a
    per-IP limit). ``idle_timeout``: a connection with no client ping (a :class:`Reply` with
    ``ping``) and no data frame sent for this long is cut without a close frame.
    ``subscribe_timeout``: a connection that has not come to hold a subscription this long after
    opening is cut without a close frame.
    """

    ping_interval: float | None = None
    pong_timeout: float = 60.0
    max_incoming_per_second: int | None = None
    incoming_per_address: bool = False
    idle_timeout: float | None = None
    subscribe_timeout: float | None = None


@attrs.frozen(slots=True)
class Reject:
    """Refuse a handshake with an HTTP status, a JSON body and any extra headers."""

    status: int
    body: Any
    headers: tuple[tuple[bytes, bytes], ...] = ()


@attrs.frozen(slots=True)
class Reply:
    """What one client message causes: ``frames`` sent back at once (before anything else is
    queued), then ``start`` channels begin and ``stop`` channels end delivering to the
    connection. ``ping`` marks an application-level ping (client activity for the idle rule).

    With ``queued``, ``frames`` instead join the connection's queue behind the data frames
    already in it, each passed through :meth:`SimConnection.frame` with channel ``""``: for
    venues that number every message of a connection, so replies and data share one order."""

    frames: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    ping: bool = False
    queued: bool = False


class SimConnection:
    """One live client connection, as tests observe it.

    Exchange modules subclass it for their per-connection protocol state; the protocol keeps
    :attr:`topics` (what the client holds, acknowledged) and the server keeps the channels it
    delivers and the socket.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        #: the subscriptions the client holds, in acknowledgement order (kept by the protocol)
        self.topics: dict[str, None] = {}
        self.frames_sent = 0
        #: data frames this client was too slow to take (its queue was full)
        self.frames_dropped = 0
        self._ws: WebSocketConnection | None = None
        self._channels: set[str] = set()
        self._flood: dict[str, None] = {}
        self._flood_changed = trio.Event()
        self._recent: deque[float] = deque()
        self._subscribed = trio.Event()
        self._idle_scope: trio.CancelScope | None = None
        self._idle_after = 0.0
        self._scope = trio.CancelScope()
        self._close_intent: tuple[int | None, str] | None = None
        self._outbox_send, self._outbox = trio.open_memory_channel[str](_OUTBOX_SIZE)
        #: half-open (:meth:`SimServer.half_open`): nothing is read or written
        self._frozen = False
        #: set once the server has forgotten the connection
        self._ended = trio.Event()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} topics={len(self.topics)}>"

    def frame(self, channel: str, payload: str) -> str:
        """The text frame carrying ``payload`` of ``channel`` (the venue's envelope, if any);
        called as a frame is queued. ``channel`` is ``""`` for a queued reply."""
        del channel
        return payload

    def offer(self, text: str) -> bool:
        """Queue a frame without waiting; a client too slow to drain its queue loses frames."""
        try:
            self._outbox_send.send_nowait(text)
        except trio.WouldBlock:
            self.frames_dropped += 1
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def close(self, code: int | None, reason: str) -> None:
        """End the connection: with a close frame of ``code``, or abruptly when it is None."""
        if self._close_intent is None:
            self._close_intent = (code, reason)
        self._scope.cancel()

    def _touch(self) -> None:
        """Client or data activity: push the idle cut back (when the venue has one)."""
        if self._idle_scope is not None:
            self._idle_scope.deadline = trio.current_time() + self._idle_after

    def _over_rate(self, now: float, limit: int) -> bool:
        recent = self._recent
        recent.append(now)
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        return len(recent) > limit

    def _flood_updated(self) -> None:
        self._flood_changed.set()
        self._flood_changed = trio.Event()


C = TypeVar("C", bound=SimConnection)


@attrs.frozen(slots=True)
class Accept(Generic[C]):
    """Accept a handshake as ``connection``, delivering ``start`` channels from the outset."""

    connection: C
    start: tuple[str, ...] = ()


class SimProtocol(Protocol[C]):
    """A venue's wire protocol as a pure object: no socket, no clock, no task."""

    @property
    def liveness(self) -> Liveness: ...

    @property
    def default_path(self) -> str:
        """The path :attr:`SimServer.ws_url` points at."""
        ...

    @property
    def malformed_frame(self) -> str:
        """A truncated frame of the venue's own shape, for :meth:`SimServer.send_malformed`."""
        ...

    #: symbols (as the client spells them, e.g. ``BTCUSDT`` or ``BTC-USD``) whose subscribe
    #: requests get the venue's error reply (a fault)
    refused: frozenset[str]
    #: subscribe requests are read and dropped: no ack, no error, no data (a fault)
    swallow_subscribes: bool

    def open(self, path: str, query: str) -> Accept[C] | Reject:
        """A new connection for a handshake on ``path`` (``query`` without the ``?``)."""
        ...

    def receive(self, conn: C, text: str) -> Reply:
        """The effect of one client text frame; updates ``conn.topics``."""
        ...


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
            with trio.move_on_after(_CLOSE_TIMEOUT), contextlib.suppress(trio.BrokenResourceError):
                await tcp.send_all(_PLAIN_ANSWER)
            await trio.aclose_forcefully(tcp)


def status_phrase(status: int) -> str:
    """The reason phrase of an HTTP status (``I'm a Teapot`` for 418, as Binance's ban)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def frame_header(length: int) -> bytes:
    """RFC 6455 header of one final, unmasked (server-to-client) text frame."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


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
        self._changed = trio.Event()
        self._silent = False
        self._unsilenced = trio.Event()
        self._unsilenced.set()
        self._refuse = 0
        self._refuse_status = 503
        self._retry_after: float | datetime | None = None
        self._tls_failures = 0
        self._rest_failing = False
        self._data_stalled = False
        #: seconds between the bytes of a frame while trickling (slow loris); None: off
        self._trickle: float | None = None
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

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked on every connection, subscription or
        counter change, so tests need no sleeps."""
        while not predicate():
            await self._changed.wait()

    async def wait_subscribed(self, topics: str | Iterable[str]) -> C:
        """The first live connection that holds every one of ``topics`` (waits for it)."""
        names = {topics} if isinstance(topics, str) else set(topics)
        found: list[C] = []

        def holder() -> bool:
            found[:] = [c for c in self._live if names.issubset(c.topics)]
            return bool(found)

        await self.wait_until(holder)
        return found[0]

    async def wait_connections(self, count: int = 1) -> list[C]:
        """The live connections, once there are at least ``count``."""
        await self.wait_until(lambda: len(self._live) >= count)
        return self.connections

    # ---- faults --------------------------------------------------------------------------

    def drop_connections(self, *, code: int | None = None, reason: str = "dropped") -> None:
        """End every live connection: abruptly (TCP close, like a network drop) by default, or
        with a close frame of ``code``."""
        for conn in list(self._live):
            conn.close(code, reason)

    def set_silent(self, silent: bool) -> None:
        """Stall: keep connections open and read requests (they take effect), but send nothing
        back: no data, no replies, no pings, as a hung server would."""
        self._silent = silent
        if silent:
            if self._unsilenced.is_set():
                self._unsilenced = trio.Event()
        else:
            self._unsilenced.set()

    def refuse_connections(
        self, count: int, *, status: int = 503, retry_after: float | datetime | None = None
    ) -> None:
        """Reject the next ``count`` handshakes with HTTP ``status``; -1 refuses until reset with 0.

        ``retry_after`` adds a ``Retry-After`` header: seconds (rounded up, as delta-seconds must
        be whole) or an aware datetime (sent as an HTTP-date). 429 is a venue's "too many
        connection attempts", 418 Binance's IP ban, 5xx an outage.
        """
        if count < -1:
            raise ValueError("count must be -1 (until reset), 0 (accept again) or positive")
        if not 400 <= status <= 599:
            raise ValueError(f"a refusal is a 4xx or 5xx status, not {status}")
        self._refuse = count
        self._refuse_status = status
        self._retry_after = retry_after

    def fail_tls(self, count: int) -> None:
        """Answer the next ``count`` connections in plain text instead of TLS (-1: until reset
        with 0), as a port that does not speak TLS would (a proxy or load balancer set up
        wrong): the client's TLS handshake fails before any HTTP. Only for a simulator serving
        ``wss``; such a connection never reaches the handshake counters but :attr:`tls_failures`."""
        if self._ssl_context is None:
            raise RuntimeError("fail_tls needs a simulator serving wss (an ssl_context)")
        if count < -1:
            raise ValueError("count must be -1 (until reset), 0 (succeed again) or positive")
        self._tls_failures = count

    def _take_tls_failure(self) -> bool:
        """Whether the connection just accepted is to get plain text instead of TLS."""
        if not self._tls_failures:
            return False
        if self._tls_failures > 0:
            self._tls_failures -= 1
        self.tls_failures += 1
        self.handshake_times.append(trio.current_time())
        self._notify()
        return True

    def send_malformed(self) -> None:
        """Send one truncated JSON text frame on every live connection."""
        for conn in self._live:
            conn.offer(self.protocol.malformed_frame)

    def rest_fail(self, failing: bool) -> None:
        """While True, every REST request gets the venue's outage answer (HTTP 503)."""
        self._rest_failing = failing

    def half_open(self, duration: float) -> None:
        """Every live connection goes half-open for ``duration`` seconds: the server neither
        reads nor writes (no data, no replies, no pings, no pongs), and sends no FIN either, as
        when the path to the client dies silently. Then it is dropped without a close frame, as
        the server's own timeout would. Connections opened meanwhile are healthy."""
        nursery = self._require_nursery()
        for conn in self._live:
            conn._frozen = True  # from now on the reader and the writer drop everything
            nursery.start_soon(self._hold_half_open, conn, duration)

    def stall_data(self, stalled: bool) -> None:
        """While True, no market data is published, but everything that proves the socket goes
        on: replies (with a new subscription's snapshot), pongs, server pings and heartbeat
        channels (Coinbase's ``heartbeats``). The flood writer is not stalled."""
        self._data_stalled = stalled

    def trickle(self, byte_interval: float | None) -> None:
        """Slow loris: while set, every frame is written one byte per ``byte_interval`` seconds
        (None: at full speed again). Replies and pongs queue behind the trickled frame. The
        flood writer does not trickle."""
        if byte_interval is not None and byte_interval <= 0:
            raise ValueError(f"byte_interval must be positive, got {byte_interval}")
        self._trickle = byte_interval

    def send_invalid(self) -> None:
        """Send one text frame that is not JSON at all on every live connection."""
        for conn in self._live:
            conn.offer(INVALID_FRAME)

    def send_oversized(self, declared: int) -> None:
        """Start one frame declaring ``declared`` payload bytes on every live connection: its
        header and up to 64 KiB of it, never the rest. A client with a smaller frame limit must
        refuse it from the header alone (RFC 6455 1009) without buffering; one that waits gets
        nothing more on that connection."""
        header = frame_header(declared)
        data = header + b" " * min(declared, _OVERSIZED_PREFIX)
        nursery = self._require_nursery()
        for conn in self._live:
            nursery.start_soon(self._write_raw, conn, data)

    def refuse_symbols(self, symbols: Iterable[str]) -> None:
        """Answer subscribe requests naming any of ``symbols`` (as the client spells them:
        ``BTCUSDT``, ``BTC-USD``) with the venue's error reply; an empty set ends it. Takes
        effect on the next request: a drop makes the client resubscribe."""
        self.protocol.refused = frozenset(symbols)

    def swallow_subscribes(self, swallowing: bool) -> None:
        """While True, subscribe requests are read and dropped: no ack, no error, no data for
        them (pings are still answered). Takes effect on the next request."""
        self.protocol.swallow_subscribes = swallowing

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("the simulator is not serving")
        return self._nursery

    # ---- market data ---------------------------------------------------------------------

    def has_subscribers(self, channel: str) -> bool:
        """Whether any connection takes ``channel`` (so building its payload is worth it)."""
        return channel in self._subscribers

    def publish(self, channel: str, payload: str) -> None:
        """Queue ``payload`` for every connection taking ``channel``, in each one's envelope;
        nothing while silent."""
        subscribers = self._subscribers.get(channel)
        if not subscribers or self._silent or (self._data_stalled and not self._heartbeat(channel)):
            return
        for conn in subscribers:
            if conn.offer(conn.frame(channel, payload)):
                conn._touch()
            else:
                self.frames_dropped += 1

    def deliver(self, conn: C, text: str) -> None:
        """Queue ``text`` for ``conn`` alone (a snapshot on subscribe, a queued reply); nothing
        while silent."""
        if not self._silent and not conn.offer(text):
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
            server = WebSocketServer(self._handle, listeners, disconnect_timeout=_CLOSE_TIMEOUT)  # type: ignore[arg-type]
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
        self._notify()
        if self._rest_failing:
            return self._rest_outage()
        return self._answer_rest(request)

    async def _handle(self, request: WebSocketRequest) -> None:
        self.connection_attempts += 1
        self.handshake_times.append(trio.current_time())
        self._notify()
        path, _, query = request.path.partition("?")
        opened = self.protocol.open(path, query)
        if isinstance(opened, Reject) and opened.status == 404:
            await self._reject(request, opened)
            return
        if self._refuse:
            if self._refuse > 0:
                self._refuse -= 1
            self.connections_refused += 1
            self.refusals[self._refuse_status] += 1
            self._notify()
            await self._reject(request, self._with_retry_after(self._refusal(self._refuse_status)))
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
            self._start(conn, channel)
        self._notify()
        try:
            await self._run(conn, ws)
        finally:
            self._forget(conn)
            await self._finish(conn, ws)

    def _with_retry_after(self, reject: Reject) -> Reject:
        retry_after = self._retry_after
        if retry_after is None:
            return reject
        value = (
            format_datetime(retry_after, usegmt=True) if isinstance(retry_after, datetime)
            else str(math.ceil(retry_after))
        )
        return attrs.evolve(reject, headers=(*reject.headers, (b"retry-after", value.encode("ascii"))))

    async def _reject(self, request: WebSocketRequest, reject: Reject) -> None:
        try:
            await request.reject(
                reject.status,
                extra_headers=[(b"content-type", b"application/json"), *reject.headers],
                body=orjson.dumps(reject.body),
            )
        except ConnectionClosed:
            log.debug("client left before the %d rejection was sent", reject.status)

    async def _run(self, conn: C, ws: WebSocketConnection) -> None:
        async def until_done(task: Callable[[C, WebSocketConnection], Any]) -> None:
            await task(conn, ws)
            conn._scope.cancel()

        liveness = self.protocol.liveness
        with conn._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(until_done, self._reader)
                nursery.start_soon(until_done, self._writer)
                if liveness.ping_interval is not None:
                    nursery.start_soon(self._pinger, conn, ws, liveness, nursery)
                if liveness.idle_timeout is not None:
                    await nursery.start(self._idle_watch, conn, liveness.idle_timeout)
                if liveness.subscribe_timeout is not None:
                    nursery.start_soon(self._subscribe_watch, conn, liveness.subscribe_timeout)
                if self.flood:
                    nursery.start_soon(until_done, self._flooder)

    async def _finish(self, conn: C, ws: WebSocketConnection) -> None:
        if conn._close_intent is None:
            return  # the client closed; trio-websocket completes the handshake
        code, reason = conn._close_intent
        if code is None:
            # Reaching into trio-websocket's transport: an abrupt TCP close, no close frame.
            await trio.aclose_forcefully(ws._stream)
            return
        with trio.move_on_after(_CLOSE_TIMEOUT):
            await ws.aclose(code, reason)

    def _forget(self, conn: C) -> None:
        if conn in self._live:
            self._live.remove(conn)
        for channel in [*conn._channels, *conn._flood]:
            self._stop(conn, channel)
        conn._ended.set()
        self._notify()

    def _start(self, conn: C, channel: str) -> None:
        if self.flood and self._floodable(channel):
            conn._flood[channel] = None
            conn._flood_updated()
            return
        if channel in conn._channels:
            return
        conn._channels.add(channel)
        self._subscribers.setdefault(channel, set()).add(conn)
        self._on_start(conn, channel)

    def _stop(self, conn: C, channel: str) -> None:
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

    # ---- the connection's tasks ----------------------------------------------------------

    async def _reader(self, conn: C, ws: WebSocketConnection) -> None:
        limit = self.protocol.liveness.max_incoming_per_second
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as closed:
                if closed.reason is not None:
                    self.client_close_codes[closed.reason.code] += 1
                    self._notify()
                return
            if conn._frozen:
                continue  # half-open: a request the server never reads
            self.requests_received += 1
            if limit is not None and conn._over_rate(trio.current_time(), limit):
                self.rate_limit_closes += 1
                self._notify()
                conn.close(1008, "Too many requests")
                return
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            reply = self.protocol.receive(conn, text)
            if conn.topics and not conn._subscribed.is_set():
                conn._subscribed.set()
            if reply.ping:
                self.pings_received += 1
                conn._touch()
            self._notify()
            for channel in reply.stop:
                self._stop(conn, channel)
            if reply.queued and not self._silent:
                # Queued ahead of the channels' first data all the same: they start below.
                for text_out in reply.frames:
                    self.deliver(conn, conn.frame("", text_out))
            elif not self._silent:  # a stalled server: requests take effect, nothing comes back
                # Replies are written here, not queued: channels start delivering only after
                # their acknowledgement is on the wire, as on the real exchanges.
                for text_out in reply.frames:
                    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                        try:
                            await ws.send_message(text_out)
                        except ConnectionClosed:
                            return
            for channel in reply.start:
                self._start(conn, channel)
            if reply.start or reply.stop:
                self._notify()

    async def _writer(self, conn: C, ws: WebSocketConnection) -> None:
        async for text in conn._outbox:
            if conn._frozen:
                continue  # half-open: nothing leaves
            if self._trickle is not None:
                if not await self._send_trickled(ws, text):
                    return
                conn.frames_sent += 1
                continue
            # Shielded (with a bound): cancelling a write midway would cut a frame in half, and
            # the close frame that follows would then be garbage to the client.
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                try:
                    await ws.send_message(text)
                except ConnectionClosed:
                    return
            conn.frames_sent += 1

    async def _send_trickled(self, ws: WebSocketConnection, text: str) -> bool:
        """Write one frame a byte at a time (slow loris); False once the connection is gone.

        Reaching into trio-websocket's connection as the flood writer does, under its send lock,
        so pongs and replies wait behind the frame. Not shielded: a trickled frame may take
        minutes, and a connection ending meanwhile is ended abruptly anyway."""
        body = text.encode()
        data = frame_header(len(body)) + body
        async with ws._stream_lock:
            for index in range(len(data)):
                interval = self._trickle
                if ws.closed is not None:
                    return False
                # trickling ended mid-frame: the rest goes at once, so the frame stays whole
                chunk = data[index:] if interval is None else data[index : index + 1]
                try:
                    await ws._stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
                if interval is None or index == len(data) - 1:
                    break
                await trio.sleep(interval)
        return True

    async def _write_raw(self, conn: C, data: bytes) -> None:
        """Write ``data`` as-is between two whole frames (a protocol violation, on purpose)."""
        ws = conn._ws
        if ws is None:
            return
        async with ws._stream_lock:
            if ws.closed is not None:
                return
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(_CLOSE_TIMEOUT),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await ws._stream.send_all(data)

    async def _hold_half_open(self, conn: C, duration: float) -> None:
        """Hold the connection's send lock (so trio-websocket cannot pong or close either; a
        frame being written finishes first) while the reader and writer drop everything; then cut
        it without a close frame."""
        ws = conn._ws
        if ws is None:
            return
        with trio.move_on_after(duration):
            async with ws._stream_lock:
                await conn._ended.wait()
        conn.close(None, "half-open")

    async def _pinger(
        self, conn: C, ws: WebSocketConnection, liveness: Liveness, nursery: trio.Nursery
    ) -> None:
        assert liveness.ping_interval is not None
        count = 0
        while True:
            await trio.sleep(liveness.ping_interval)
            if self._silent or conn._frozen:
                continue
            count += 1
            nursery.start_soon(self._expect_pong, conn, ws, liveness, b"%d" % count)

    async def _expect_pong(
        self, conn: C, ws: WebSocketConnection, liveness: Liveness, payload: bytes
    ) -> None:
        with trio.move_on_after(liveness.pong_timeout):
            with contextlib.suppress(ConnectionClosed):
                await ws.ping(payload)
            return
        self.pong_timeouts += 1
        self._notify()
        conn.close(1008, "Pong timeout")

    async def _idle_watch(
        self, conn: C, idle_after: float, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # The idle cut is a cancel scope whose deadline every ping and data frame pushes back.
        with trio.CancelScope(deadline=trio.current_time() + idle_after) as scope:
            conn._idle_scope, conn._idle_after = scope, idle_after
            task_status.started()
            await trio.sleep_forever()
        conn._idle_scope = None
        self.idle_closes += 1
        self._notify()
        conn.close(None, "idle timeout")

    async def _subscribe_watch(self, conn: C, within: float) -> None:
        with trio.move_on_after(within):
            await conn._subscribed.wait()
            return
        self.subscribe_timeouts += 1
        self._notify()
        conn.close(None, "no subscription in time")

    async def _flooder(self, conn: C, ws: WebSocketConnection) -> None:
        while True:
            if self._silent:
                await self._unsilenced.wait()
                continue
            if not conn._flood:
                await conn._flood_changed.wait()
                continue
            channels = list(conn._flood)
            payloads = self._flood_payloads(conn, channels, max(1, FLOOD_ROUND // len(channels)))
            frames = [frame_header(len(body)) + body for body in payloads]
            per_write = self.frames_per_write
            writes = (
                frames if per_write == 1
                else [b"".join(frames[i : i + per_write]) for i in range(0, len(frames), per_write)]
            )
            # Reaching into trio-websocket's connection: pre-built frames written straight to its
            # stream (one send_all per write: over TLS, one SSL_write, so its own record(s)), under
            # its send lock so control frames and replies still interleave whole. Server frames are
            # unmasked and no extension is negotiated, so the bytes are valid as-is.
            stream = ws._stream
            async with ws._stream_lock:
                if ws.closed is not None:
                    return
                # Shielded for the same reason as in _writer: frames must stay whole.
                with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                    try:
                        for data in writes:
                            await stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
            self.flood_writes += len(writes)
            conn.frames_sent += len(payloads)
            conn._touch()
            self.flood_frames_sent += len(payloads)
