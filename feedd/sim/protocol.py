"""A venue's wire protocol as the simulators see it: pure types, no socket, no clock, no task.

An exchange module supplies a :class:`SimProtocol`: an object that turns a handshake path into
an :class:`Accept` (a new :class:`SimConnection`) or a :class:`Reject`, and one client text frame
into an :class:`Answer`. :class:`~feedd.sim.server.SimServer` drives it, the way hypercorn's
``protocol/`` modules are driven by its ``trio/`` ones; :class:`Liveness` is the connection rules
the server enforces for the venue.
"""

from __future__ import annotations

from collections import deque
from http import HTTPStatus
from typing import Any, Final, Generic, Protocol, TypeVar

import attrs
import trio
from trio_websocket import WebSocketConnection

#: text frames a connection's queue holds before a slow client loses data frames
OUTBOX_SIZE: Final = 8192


@attrs.frozen(slots=True)
class Liveness:
    """The connection rules a venue enforces, all optional.

    ``ping_interval``: the server sends a WebSocket ping this often and closes (1008) a client
    that has not answered within ``pong_timeout``. ``max_incoming_per_second``: more client
    messages than this within ``incoming_window`` seconds (one, unless the venue counts per
    minute) closes the connection (1008); with ``incoming_per_address`` the count spans every
    connection from the client's address (a per-IP limit). ``idle_timeout``: a connection with
    no client ping (a :class:`Answer` with ``ping``) and no data frame sent for this long is cut:
    with ``idle_close``, a close frame of that code and reason (OKX: 4004), else without a close
    frame.
    ``subscribe_timeout``: a connection that has not come to hold a subscription this long after
    opening is cut without a close frame.
    """

    ping_interval: float | None = None
    pong_timeout: float = 60.0
    max_incoming_per_second: int | None = None
    incoming_per_address: bool = False
    incoming_window: float = 1.0
    idle_timeout: float | None = None
    idle_close: tuple[int, str] | None = None
    subscribe_timeout: float | None = None


@attrs.frozen(slots=True)
class Reject:
    """Refuse a handshake with an HTTP status, a JSON body and any extra headers."""

    status: int
    body: Any
    headers: tuple[tuple[bytes, bytes], ...] = ()


@attrs.frozen(slots=True)
class Answer:
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
        self._budgets: dict[str, deque[float]] = {}
        self._subscribed = trio.Event()
        self._idle_scope: trio.CancelScope | None = None
        self._idle_after = 0.0
        self._scope = trio.CancelScope()
        self._close_intent: tuple[int | None, str] | None = None
        self._outbox_send, self._outbox = trio.open_memory_channel[str](OUTBOX_SIZE)
        #: half-open (:meth:`~feedd.sim.server.SimServer.half_open`): nothing is read or written
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

    def _over_rate(self, now: float, limit: int, window: float = 1.0) -> bool:
        recent = self._recent
        recent.append(now)
        while recent and recent[0] <= now - window:
            recent.popleft()
        return len(recent) > limit

    def within_budget(self, key: str, now: float, limit: int, window: float) -> bool:
        """Count one ``key`` request at ``now`` if fewer than ``limit`` were counted in the last
        ``window`` seconds, and say whether it was: a venue's per-connection request quota
        (OKX's 480 subscribes an hour), refused with the venue's reply rather than a close."""
        recent = self._budgets.setdefault(key, deque())
        while recent and recent[0] <= now - window:
            recent.popleft()
        if len(recent) >= limit:
            return False
        recent.append(now)
        return True

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
        """The path :attr:`~feedd.sim.server.SimServer.ws_url` points at."""
        ...

    @property
    def malformed_frame(self) -> str:
        """A truncated frame of the venue's own shape (the ``send_malformed`` fault)."""
        ...

    #: symbols (as the client spells them, e.g. ``BTCUSDT`` or ``BTC-USD``) whose subscribe
    #: requests get the venue's error reply (a fault)
    refused: frozenset[str]
    #: subscribe requests are read and dropped: no ack, no error, no data (a fault)
    swallow_subscribes: bool

    def open(self, path: str, query: str) -> Accept[C] | Reject:
        """A new connection for a handshake on ``path`` (``query`` without the ``?``)."""
        ...

    def receive(self, conn: C, text: str) -> Answer:
        """The effect of one client text frame; updates ``conn.topics``."""
        ...


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

