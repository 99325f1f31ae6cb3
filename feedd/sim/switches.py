"""Faults on demand: the switches a simulator's server consults, and one-shot faults.

:class:`FaultSwitches` is the state of every fault a test (or :mod:`feedd.sim.faults`' schedule)
turns on: the server asks it whether to refuse a handshake, fail TLS, stay silent, stall data,
trickle frames or fail REST; its one-shot faults (drops, bad frames, half-open connections) act
on the server's live connections at once. :class:`~feedd.sim.server.SimServer` keeps one as
:attr:`~feedd.sim.server.SimServer.faults` and a method of the same name for each fault.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from email.utils import format_datetime
from typing import Final, Generic, Protocol

import attrs
import trio

from feedd.sim.protocol import C, Reject, SimProtocol, frame_header
from feedd.sim.session import hold_half_open, write_raw

#: what :meth:`FaultSwitches.send_invalid` sends: not JSON at all (a proxy's error page)
INVALID_FRAME: Final = "<html><body><h1>502 Bad Gateway</h1></body></html>"
#: bytes of payload written after an oversized frame's header (the rest never comes)
_OVERSIZED_PREFIX: Final = 64 * 1024


class Switched(Protocol[C]):
    """The server as its fault switches see it."""

    @property
    def protocol(self) -> SimProtocol[C]: ...

    @property
    def connections(self) -> list[C]: ...

    @property
    def serves_tls(self) -> bool: ...

    @property
    def nursery(self) -> trio.Nursery:
        """The server's nursery (RuntimeError when it is not serving)."""
        ...


class FaultSwitches(Generic[C]):
    """Every fault of one simulator: what is switched on, and the faults that act at once."""

    def __init__(self, server: Switched[C]) -> None:
        self._server = server
        #: stalled (:meth:`set_silent`): nothing is sent at all
        self.silent = False
        self._unsilenced = trio.Event()
        self._unsilenced.set()
        self._refuse = 0
        self._refuse_status = 503
        self._retry_after: float | datetime | None = None
        self._tls_failures = 0
        #: every REST request gets the venue's outage answer (:meth:`rest_fail`)
        self.rest_failing = False
        #: no market data is published (:meth:`stall_data`)
        self.data_stalled = False
        #: seconds between the bytes of a frame while trickling (slow loris); None: off
        self.trickling: float | None = None

    # ---- switches the server consults ----------------------------------------------------

    async def wait_unsilenced(self) -> None:
        await self._unsilenced.wait()

    def take_refusal(self) -> int | None:
        """The HTTP status to refuse the handshake just seen with, or None to go on."""
        if not self._refuse:
            return None
        if self._refuse > 0:
            self._refuse -= 1
        return self._refuse_status

    def with_retry_after(self, reject: Reject) -> Reject:
        """``reject`` with the ``Retry-After`` header :meth:`refuse_connections` asked for."""
        retry_after = self._retry_after
        if retry_after is None:
            return reject
        value = (
            format_datetime(retry_after, usegmt=True) if isinstance(retry_after, datetime)
            else str(math.ceil(retry_after))
        )
        return attrs.evolve(reject, headers=(*reject.headers, (b"retry-after", value.encode("ascii"))))

    def take_tls_failure(self) -> bool:
        """Whether the connection just accepted is to get plain text instead of TLS."""
        if not self._tls_failures:
            return False
        if self._tls_failures > 0:
            self._tls_failures -= 1
        return True

    # ---- switches ------------------------------------------------------------------------

    def set_silent(self, silent: bool) -> None:
        """Stall: keep connections open and read requests (they take effect), but send nothing
        back: no data, no replies, no pings, as a hung server would."""
        self.silent = silent
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
        ``wss``; such a connection never reaches the handshake counters but ``tls_failures``."""
        if not self._server.serves_tls:
            raise RuntimeError("fail_tls needs a simulator serving wss (an ssl_context)")
        if count < -1:
            raise ValueError("count must be -1 (until reset), 0 (succeed again) or positive")
        self._tls_failures = count

    def rest_fail(self, failing: bool) -> None:
        """While True, every REST request gets the venue's outage answer (HTTP 503)."""
        self.rest_failing = failing

    def stall_data(self, stalled: bool) -> None:
        """While True, no market data is published, but everything that proves the socket goes
        on: replies (with a new subscription's snapshot), pongs, server pings and heartbeat
        channels (Coinbase's ``heartbeats``). The flood writer is not stalled."""
        self.data_stalled = stalled

    def trickle(self, byte_interval: float | None) -> None:
        """Slow loris: while set, every frame is written one byte per ``byte_interval`` seconds
        (None: at full speed again). Replies and pongs queue behind the trickled frame. The
        flood writer does not trickle."""
        if byte_interval is not None and byte_interval <= 0:
            raise ValueError(f"byte_interval must be positive, got {byte_interval}")
        self.trickling = byte_interval

    def refuse_symbols(self, symbols: Iterable[str]) -> None:
        """Answer subscribe requests naming any of ``symbols`` (as the client spells them:
        ``BTCUSDT``, ``BTC-USD``) with the venue's error reply; an empty set ends it. Takes
        effect on the next request: a drop makes the client resubscribe."""
        self._server.protocol.refused = frozenset(symbols)

    def swallow_subscribes(self, swallowing: bool) -> None:
        """While True, subscribe requests are read and dropped: no ack, no error, no data for
        them (pings are still answered). Takes effect on the next request."""
        self._server.protocol.swallow_subscribes = swallowing

    # ---- faults that act at once, on every live connection -------------------------------

    def drop_connections(self, *, code: int | None = None, reason: str = "dropped") -> None:
        """End every live connection: abruptly (TCP close, like a network drop) by default, or
        with a close frame of ``code``."""
        for conn in self._live():
            conn.close(code, reason)

    def send_malformed(self) -> None:
        """Send one truncated JSON text frame on every live connection."""
        for conn in self._live():
            conn.offer(self._server.protocol.malformed_frame)

    def send_invalid(self) -> None:
        """Send one text frame that is not JSON at all on every live connection."""
        for conn in self._live():
            conn.offer(INVALID_FRAME)

    def half_open(self, duration: float) -> None:
        """Every live connection goes half-open for ``duration`` seconds: the server neither
        reads nor writes (no data, no replies, no pings, no pongs), and sends no FIN either, as
        when the path to the client dies silently. Then it is dropped without a close frame, as
        the server's own timeout would. Connections opened meanwhile are healthy."""
        nursery = self._server.nursery
        for conn in self._live():
            conn._frozen = True  # from now on the reader and the writer drop everything
            nursery.start_soon(hold_half_open, conn, duration)

    def send_oversized(self, declared: int) -> None:
        """Start one frame declaring ``declared`` payload bytes on every live connection: its
        header and up to 64 KiB of it, never the rest. A client with a smaller frame limit must
        refuse it from the header alone (RFC 6455 1009) without buffering; one that waits gets
        nothing more on that connection."""
        data = frame_header(declared) + b" " * min(declared, _OVERSIZED_PREFIX)
        nursery = self._server.nursery
        for conn in self._live():
            nursery.start_soon(write_raw, conn, data)

    def _live(self) -> Sequence[C]:
        return self._server.connections
