"""One accepted connection's tasks: the I/O side of a simulator, for any venue's protocol.

A :class:`Session` runs a reader (each client frame through the venue's
:meth:`~feedd.sim.protocol.SimProtocol.receive`, its answer written back before the channels it
starts deliver), a writer (the connection's queue of data frames, trickled during a slow-loris
fault), and whatever the venue's :class:`~feedd.sim.protocol.Liveness` asks for: a server pinger,
an idle cut, a subscribe deadline; with ``flood``, the flood writer. :func:`write_raw` and
:func:`hold_half_open` are the faults that reach under trio-websocket to the socket.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Generic

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from feedd.sim.protocol import C, Liveness, SimConnection, frame_header

if TYPE_CHECKING:
    from feedd.sim.server import SimServer

#: seconds a close handshake or one shielded write may take
CLOSE_TIMEOUT: Final = 5.0
#: frames the flood writer puts in one socket write by default: one, as an exchange writes them,
#: so over TLS every frame is a TLS record of its own (a client must not get batches for free)
FRAMES_PER_WRITE: Final = 1
#: frames the flood writer builds per round (per channel set), then writes FRAMES_PER_WRITE at a time
FLOOD_ROUND: Final = 512


class Session(Generic[C]):
    """The tasks of ``conn``, accepted by ``server`` as ``ws``, until the connection ends."""

    def __init__(self, server: SimServer[C], conn: C, ws: WebSocketConnection) -> None:
        self.server = server
        self.conn = conn
        self.ws = ws

    async def run(self) -> None:
        """Serve the connection until it ends: its reader, writer and the venue's watches."""
        conn = self.conn

        async def until_done(task: Callable[[], Awaitable[None]]) -> None:
            await task()
            conn._scope.cancel()

        liveness = self.server.protocol.liveness
        with conn._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(until_done, self._reader)
                nursery.start_soon(until_done, self._writer)
                if liveness.ping_interval is not None:
                    nursery.start_soon(self._pinger, liveness, nursery)
                if liveness.idle_timeout is not None:
                    await nursery.start(self._idle_watch, liveness.idle_timeout, liveness.idle_close)
                if liveness.subscribe_timeout is not None:
                    nursery.start_soon(self._subscribe_watch, liveness.subscribe_timeout)
                if self.server.flood:
                    nursery.start_soon(until_done, self._flooder)

    async def finish(self) -> None:
        """Close the connection as it was ended: with its close frame, or abruptly."""
        conn, ws = self.conn, self.ws
        if conn._close_intent is None:
            return  # the client closed; trio-websocket completes the handshake
        code, reason = conn._close_intent
        if code is None:
            # Reaching into trio-websocket's transport: an abrupt TCP close, no close frame.
            await trio.aclose_forcefully(ws._stream)
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            await ws.aclose(code, reason)

    async def _reader(self) -> None:
        conn, ws = self.conn, self.ws
        liveness = self.server.protocol.liveness
        limit, window = liveness.max_incoming_per_second, liveness.incoming_window
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as closed:
                if closed.reason is not None:
                    self.server.client_close_codes[closed.reason.code] += 1
                    self.server.changes.notify()
                return
            if conn._frozen:
                continue  # half-open: a request the server never reads
            self.server.requests_received += 1
            if limit is not None and conn._over_rate(trio.current_time(), limit, window):
                self.server.rate_limit_closes += 1
                self.server.changes.notify()
                conn.close(1008, "Too many requests")
                return
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            reply = self.server.protocol.receive(conn, text)
            if conn.topics and not conn._subscribed.is_set():
                conn._subscribed.set()
            if reply.ping:
                self.server.pings_received += 1
                conn._touch()
            self.server.changes.notify()
            for channel in reply.stop:
                self.server.stop_channel(conn, channel)
            if reply.queued and not self.server.faults.silent:
                # Queued ahead of the channels' first data all the same: they start below.
                for text_out in reply.frames:
                    self.server.deliver(conn, conn.frame("", text_out))
            elif not self.server.faults.silent:  # a stalled server: requests take effect, nothing comes back
                # Replies are written here, not queued: channels start delivering only after
                # their acknowledgement is on the wire, as on the real exchanges.
                for text_out in reply.frames:
                    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                        try:
                            await ws.send_message(text_out)
                        except ConnectionClosed:
                            return
            for channel in reply.start:
                self.server.start_channel(conn, channel)
            if reply.start or reply.stop:
                self.server.changes.notify()

    async def _writer(self) -> None:
        conn, ws = self.conn, self.ws
        async for text in conn._outbox:
            if conn._frozen:
                continue  # half-open: nothing leaves
            if self.server.faults.trickling is not None:
                if not await self._send_trickled(text):
                    return
                conn.frames_sent += 1
                continue
            # Shielded (with a bound): cancelling a write midway would cut a frame in half, and
            # the close frame that follows would then be garbage to the client.
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await ws.send_message(text)
                except ConnectionClosed:
                    return
            conn.frames_sent += 1

    async def _send_trickled(self, text: str) -> bool:
        """Write one frame a byte at a time (slow loris); False once the connection is gone.

        Reaching into trio-websocket's connection as the flood writer does, under its send lock,
        so pongs and replies wait behind the frame. Not shielded: a trickled frame may take
        minutes, and a connection ending meanwhile is ended abruptly anyway."""
        ws = self.ws
        body = text.encode()
        data = frame_header(len(body)) + body
        async with ws._stream_lock:
            for index in range(len(data)):
                interval = self.server.faults.trickling
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

    async def _pinger(self, liveness: Liveness, nursery: trio.Nursery) -> None:
        assert liveness.ping_interval is not None
        conn = self.conn
        count = 0
        while True:
            await trio.sleep(liveness.ping_interval)
            if self.server.faults.silent or conn._frozen:
                continue
            count += 1
            nursery.start_soon(self._expect_pong, liveness, b"%d" % count)

    async def _expect_pong(self, liveness: Liveness, payload: bytes) -> None:
        conn, ws = self.conn, self.ws
        with trio.move_on_after(liveness.pong_timeout):
            with contextlib.suppress(ConnectionClosed):
                await ws.ping(payload)
            return
        self.server.pong_timeouts += 1
        self.server.changes.notify()
        conn.close(1008, "Pong timeout")

    async def _idle_watch(
        self, idle_after: float, close: tuple[int, str] | None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        conn = self.conn
        # The idle cut is a cancel scope whose deadline every ping and data frame pushes back.
        with trio.CancelScope(deadline=trio.current_time() + idle_after) as scope:
            conn._idle_scope, conn._idle_after = scope, idle_after
            task_status.started()
            await trio.sleep_forever()
        conn._idle_scope = None
        self.server.idle_closes += 1
        self.server.changes.notify()
        conn.close(*(close or (None, "idle timeout")))

    async def _subscribe_watch(self, within: float) -> None:
        conn = self.conn
        with trio.move_on_after(within):
            await conn._subscribed.wait()
            return
        self.server.subscribe_timeouts += 1
        self.server.changes.notify()
        conn.close(None, "no subscription in time")

    async def _flooder(self) -> None:
        conn, ws = self.conn, self.ws
        while True:
            if self.server.faults.silent:
                await self.server.faults.wait_unsilenced()
                continue
            if not conn._flood:
                await conn._flood_changed.wait()
                continue
            channels = list(conn._flood)
            payloads = self.server._flood_payloads(conn, channels, max(1, FLOOD_ROUND // len(channels)))
            frames = [frame_header(len(body)) + body for body in payloads]
            per_write = self.server.frames_per_write
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
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                    try:
                        for data in writes:
                            await stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
            self.server.flood_writes += len(writes)
            conn.frames_sent += len(payloads)
            conn._touch()
            self.server.flood_frames_sent += len(payloads)


async def write_raw(conn: SimConnection, data: bytes) -> None:
    """Write ``data`` as-is between two whole frames (a protocol violation, on purpose)."""
    ws = conn._ws
    if ws is None:
        return
    async with ws._stream_lock:
        if ws.closed is not None:
            return
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(CLOSE_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await ws._stream.send_all(data)


async def hold_half_open(conn: SimConnection, duration: float) -> None:
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
