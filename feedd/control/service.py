"""The service: everything ``feedd run`` runs, and what an embedding program drives directly.

    service nursery
    ├─ hub → delay metrics sink, data callbacks (each its own buffer and task), unix publisher,
    │        nats sink (with a [nats] table: its own buffer, connection and task)
    ├─ http server (status, control, health, metrics)
    └─ venue supervisors → connection runners

:class:`WebSocketService` is an async context manager owning that nursery::

    async with WebSocketService(config) as ws:
        await ws.subscribe_to_symbol("binance", "ETHUSDT")
        ws.add_data_callback(on_record)

The HTTP API and the Python API are the same calls: a live subscribe waits for the venue's
instrument list, checks the symbol, places the stream on a connection of the venue that has room
(or a new one), waits until the venue acknowledged it, and saves the change to the state file.

The service keeps the task tree and the registries (venues, statuses, callbacks); the jobs over
them live beside it: :mod:`~feedd.control.callbacks` (the callbacks registry),
:mod:`~feedd.control.subscriptions` (a live subscribe or unsubscribe, its checks and its saving),
:mod:`~feedd.control.report` (status document, health, summary), :mod:`~feedd.control.apply`
(a reload's apply step, beside :mod:`~feedd.control.reload`'s plan).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from feedd.config import Config, ExchangeConfig, read_token_file
from feedd.control import report, subscriptions
from feedd.control.apply import apply_reload, runner_settings
from feedd.control.callbacks import Callbacks
from feedd.control.history import History
from feedd.control.metrics import DELAY_BUCKETS, Metrics
from feedd.control.reload import ReloadOutcome
from feedd.control.state import StateFile
from feedd.errors import InvalidRequest, UnknownVenue, VenueDisabled
from feedd.exchanges import make_venue
from feedd.exchanges.base import Channel
from feedd.fanout.callback import AnyCallback, Callback, CallbackSink
from feedd.fanout.hub import Hub, SubscriberInfo
from feedd.fanout.unix import UnixPublisher
from feedd.feed.gates import HandshakeGates
from feedd.feed.status import VenueStatus
from feedd.feed.supervisor import VenueSupervisor
from feedd.model import Ingress
from feedd.wire.transport import TRANSPORTS, OpenTransport

if TYPE_CHECKING:
    from feedd.fanout.nats import NatsSink
    from feedd.record.writer import Recorder

log = logging.getLogger(__name__)

#: how long a live subscribe or unsubscribe waits for the venue's answer, by default
ACK_TIMEOUT = 10.0
#: how long a graceful stop may take before what is left is cancelled (``feedd run`` promises
#: an exit within 5 s of SIGTERM: the rest is cancelling, the interpreter's own exit, and room
#: for a loaded machine)
STOP_GRACE = 3.0




@attrs.define(eq=False)
class _VenueRun:
    """One venue's supervisor as a task of the service: cancelled by ``scope``, ``done`` once
    ended; ``records`` is its own sender to the hub, closed when it ends."""

    supervisor: VenueSupervisor
    records: trio.MemorySendChannel[Ingress]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The supervisor until it ends or ``scope`` is cancelled; then ``records`` closes."""
        try:
            with self.scope, self.records:
                await self.supervisor.run(task_status=task_status)
        finally:
            self.done.set()


class WebSocketService:
    """Market data from every configured venue, to callbacks (and, for the daemon, to the Unix
    socket and the HTTP API), with live subscription changes that survive a restart.

    ``serve_unix`` and ``serve_http`` start the ``[unix]`` publisher and the ``[http]`` API; the
    daemon turns both on. Runtime subscription changes are saved to ``[feed] state_file`` and
    restored at start either way. An instance runs once.
    """

    def __init__(
        self,
        config: Config,
        *,
        serve_unix: bool = False,
        serve_http: bool = False,
        open_transport: OpenTransport | None = None,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        if config.http.token_file is not None and config.http.token is None:
            config = read_token_file(config)
        self.config = config
        self.ack_timeout = ack_timeout
        self.hub = Hub()
        self.publisher = (
            UnixPublisher(
                self.hub,
                config.unix.path,
                client_buffer=config.unix.client_buffer,
                max_clients=config.unix.max_clients,
            )
            if serve_unix
            else None
        )
        #: the NATS JetStream sink, with a ``[nats]`` table (imported only then)
        self.nats: NatsSink | None = None
        if config.nats is not None:
            from feedd.fanout.nats import NatsSink

            self.nats = NatsSink(config.nats, connect_timeout=config.feed.connect_timeout)
        self._nats_done = trio.Event()
        #: the recorder, with a ``[record]`` table (feedd.record): taps every connection
        self.recorder: Recorder | None = None
        if config.record is not None:
            from feedd.record.writer import Recorder

            self.recorder = Recorder.from_config(config.record)
        self.serve_http = serve_http
        #: the HTTP API's bound address (``HOST:PORT``) once it listens
        self.http_address: str | None = None
        self.venues: dict[str, VenueSupervisor] = {}
        self.statuses: dict[str, VenueStatus] = {}
        self._runs: dict[str, _VenueRun] = {}
        #: every host's handshake gate (Retry-After, connect pacing), shared by all venues
        self.gates = HandshakeGates()
        #: what the last :meth:`reload` did (None before the first)
        self.last_reload: ReloadOutcome | None = None
        self._reload_lock = trio.Lock()
        self._reloading: trio.CancelScope | None = None
        self.state = StateFile(config.feed.state_file)
        self.metrics = Metrics(self)
        #: per-second counter history, for feedd top and the status page
        self.history = History(DELAY_BUCKETS)
        #: the data and event callbacks, each with its own buffer and task
        self.callbacks = Callbacks(self.hub)
        self._open = open_transport or TRANSPORTS[config.feed.transport]
        self._nursery: trio.Nursery | None = None
        self._started = False
        self._stop = trio.Event()
        self._http_stop = trio.Event()
        self._http_done = trio.Event()
        self._hub_done = trio.Event()
        self._publisher_done = trio.Event()
        self._stack: AsyncExitStack | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> WebSocketService:
        stack = AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        try:
            await nursery.start(self.run)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        if exc is None:
            self.stop()  # graceful: requests in flight get their answers
        elif self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        try:
            return await stack.__aexit__(kind, exc, tb)
        except BaseExceptionGroup as group:
            # the nursery wraps the body's own exception; hand it back as it was raised
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                raise exc.with_traceback(tb) from None
            raise

    async def initialize(self) -> None:
        """Wait until every running venue has its instrument list and has placed its configured
        and restored subscriptions (they are then being connected). Starting is ``async with``."""
        if self._nursery is None:
            raise RuntimeError("the service is not running: use `async with WebSocketService(config) as ws`")
        for supervisor in self.venues.values():
            await supervisor.ready.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[WebSocketService] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The task tree; ``task_status.started(self)`` once sinks listen and every venue started.

        A venue counts as started before its instrument list arrives (its supervisor fetches it in
        the background), so a slow or dead REST endpoint delays only its own venue.
        """
        if self._stop.is_set():
            return
        try:
            await self._run(task_status)
        finally:
            self._nursery = None
            self.callbacks.stopped()

    async def _run(self, task_status: trio.TaskStatus[WebSocketService]) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(_until_done, self.hub.run, self._hub_done)
            self.hub.attach(self.metrics.sink)
            await nursery.start(self.history.run, lambda: report.totals(self))
            self.callbacks.start(nursery)
            if self.publisher is not None:
                await nursery.start(_until_done, self.publisher.serve, self._publisher_done)
            if self.nats is not None:
                self.hub.attach(self.nats)
                await nursery.start(_until_done, self.nats.run, self._nats_done)
            if self.recorder is not None:
                await nursery.start(self.recorder.run)  # cancelled last: closes its files
            restored = self.state.load()
            for venue_id, exchange in config.exchanges.items():
                enabled = config.feed.enabled and exchange.enabled
                self.new_status(venue_id, enabled=enabled)
                if enabled:
                    self.add_venue(venue_id, exchange)
            for venue_id in sorted(set(restored) - set(self.venues)):
                log.warning("%s: runtime subscriptions of %s, which is not running, are kept but not used",
                            config.feed.state_file, venue_id)
            if self.serve_http:
                self.http_address = await nursery.start(_serve_http, self, self._http_stop, self._http_done)
            for venue_id in self.venues:
                await self.start_venue(venue_id)
            if not config.feed.enabled:
                log.warning("the feed is disabled (feed.enabled / ENABLE_WEBSOCKET_FEED): no venue runs")
            where = [f"socket {config.unix.path}"] if self.publisher is not None else []
            where += [f"HTTP API http://{self.http_address}"] if self.http_address else []
            log.info("feedd running: %d venue(s)%s", len(self.venues), "".join(f", {w}" for w in where))
            self._started = True
            task_status.started(self)
            await self._stop.wait()
            with trio.move_on_after(STOP_GRACE) as grace:
                await self._wind_down()
            if grace.cancelled_caught:
                log.warning("stopping took longer than %.0f s: cancelling what is left "
                            "(a subscriber that does not read, or an exchange that does not answer)",
                            STOP_GRACE)
            nursery.cancel_scope.cancel()

    async def _wind_down(self) -> None:
        """The graceful stop, in the order that loses nothing: stop reading (every connection
        closes politely), let the hub hand on what it holds, let the sinks write it out; the
        HTTP API answers what is in flight meanwhile."""
        self._http_stop.set()
        if self._reloading is not None:
            self._reloading.cancel()
        async with self._reload_lock:  # a reload cancelled above unwinds first
            for run in self._runs.values():
                run.scope.cancel()
            for run in self._runs.values():
                await run.done.wait()
        self.hub.close()  # with every venue's sender closed, the hub drains and returns
        await self._hub_done.wait()
        if self.publisher is not None:
            self.publisher.finish()
            await self._publisher_done.wait()
        if self.nats is not None:
            await self.nats.flushed()  # what the hub handed on, acked (if NATS is there)
        if self.serve_http:
            await self._http_done.wait()

    # ---- venues: the task tree's steps, also the reload's (feedd.control.apply) ----------

    def add_venue(self, venue_id: str, exchange: ExchangeConfig) -> None:
        """Create a venue's supervisor (configured + runtime subscriptions) and its status."""
        config = self.config
        status = self.new_status(venue_id, enabled=True)
        changes = self.state.venues.get(venue_id)
        configured = {s: tuple(exchange.channels) for s in exchange.symbols}
        records = self.hub.sender()
        supervisor = VenueSupervisor(
            make_venue(venue_id),
            exchange,
            runner_settings(config),
            cache_dir=config.feed.cache_dir,
            records=records,
            status=status,
            open_transport=self._open,
            initial=configured if changes is None else changes.merge(configured),
            gates=self.gates,
            tap=self.recorder,
        )
        self.venues[venue_id] = supervisor
        self._runs[venue_id] = _VenueRun(supervisor, records)

    def new_status(self, venue_id: str, *, enabled: bool) -> VenueStatus:
        """A venue's status for a new run of it, its counters carried over from the last run."""
        status = VenueStatus(venue_id, enabled=enabled)
        previous = self.statuses.get(venue_id)
        if previous is not None:
            status.carry_totals(previous)
        self.statuses[venue_id] = status
        return status

    async def start_venue(self, venue_id: str) -> None:
        """Start a venue :meth:`add_venue` created, as a task of the service."""
        assert self._nursery is not None
        await self._nursery.start(self._runs[venue_id].run, name=f"venue {venue_id}")

    async def stop_venue(self, venue_id: str) -> None:
        """Stop a venue: its connections close (politely), its records stop; waits until done."""
        run = self._runs.pop(venue_id)
        del self.venues[venue_id]
        run.scope.cancel()
        await run.done.wait()

    # ---- reload -------------------------------------------------------------------------

    async def reload(self, config: Config) -> ReloadOutcome:
        """Apply the difference between the running config and ``config``, live.

        Venues start, stop or (when their endpoints changed) restart; symbols and channels the
        edit added are subscribed and those it removed unsubscribed, through the same calls as
        the API, concurrently, each waiting at most the ack timeout; settings that can change
        live do; those that need a restart are left as they run and reported. Streams the edit
        does not touch are not reconnected. Reloads run one at a time; a stop cancels one.
        """
        if config.http.token_file is not None and config.http.token is None:
            config = read_token_file(config)
        async with self._reload_lock:
            if self._stop.is_set() or not self._started:
                raise RuntimeError("the service is not running")
            with trio.CancelScope() as self._reloading:
                try:
                    outcome = await apply_reload(self, config)
                finally:
                    self._reloading = None
            self.last_reload = outcome
            return outcome

    def reload_refused(self, source: str, error: str) -> ReloadOutcome:
        """Record a reload whose config could not be used (it was not applied)."""
        self.last_reload = ReloadOutcome(source, error=error)
        return self.last_reload

    def stop(self) -> None:
        """Stop gracefully: the HTTP API answers what is in flight (bounded), then all ends."""
        self._stop.set()
        if not self._started and self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # still starting: nothing to be graceful about

    # ---- data callbacks (feedd.control.callbacks) --------------------------------------

    def add_data_callback(
        self, callback: Callback | AnyCallback, *, buffer: int = 10_000, events: bool = False
    ) -> CallbackSink:
        """Call ``callback(record)`` (sync, or async and awaited) for every record from now on;
        with ``events=True`` also for every feed event (:class:`~feedd.model.Disconnected`,
        :class:`~feedd.model.Reconnected`), in order with the records, as the socket's
        subscribers get them.

        Each callback has its own task and a buffer of ``buffer`` records: a slow one loses its
        oldest records (counted in ``dropped``) and never stalls the feed or the others; an
        exception is logged (rate-limited) and counted in ``errors``, and the next record comes
        as usual. An ``async def`` callback runs on the event loop and must not block; a plain
        function runs in a worker thread of its own (one per batch of pending records), since
        only a thread keeps a blocking function off the loop, so it must be thread-safe with
        respect to its own state. At stop or removal a call in progress is abandoned, not
        awaited (see :class:`~feedd.fanout.callback.CallbackSink`). Returns the sink, for
        :meth:`remove_data_callback` and its counters.
        """
        return self.callbacks.add(CallbackSink(
            callback, buffer, name=self.callbacks.name(callback), events=events
        ))

    def add_event_callback(self, callback: AnyCallback, *, buffer: int = 1_000) -> CallbackSink:
        """Call ``callback(event)`` for every feed event only (disconnects and reconnects, see
        :meth:`add_data_callback`); removed with :meth:`remove_data_callback`."""
        return self.callbacks.add(CallbackSink(
            callback, buffer, name=self.callbacks.name(callback), data=False, events=True
        ))

    def remove_data_callback(self, sink: CallbackSink) -> None:
        """Stop calling the callback: no record is passed to it after this returns (a plain
        callback's call in progress, in its thread, is not waited for)."""
        self.callbacks.remove(sink)

    # ---- subscriptions (feedd.control.subscriptions) ------------------------------------

    def _checked(
        self, exchange: str, symbol: object, channels: Sequence[str] | None, *, every: bool
    ) -> tuple[VenueSupervisor, str, list[Channel] | None]:
        """The venue's supervisor, the symbol and the channels of a request, or its refusal;
        no channels mean the configured ones, or with ``every`` None (all the symbol has)."""
        supervisor = self.venues.get(exchange)
        if supervisor is None:
            disabled, why = subscriptions.venue_problem(exchange, self.statuses, self.config.feed.enabled)
            raise VenueDisabled(why) if disabled else UnknownVenue(why)
        try:
            wanted = None if channels is None and every else \
                subscriptions.wanted_channels(supervisor, channels)
            return supervisor, subscriptions.checked_symbol(symbol), wanted
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    def _deadline(self, ack_timeout: float | None) -> float:
        return trio.current_time() + (self.ack_timeout if ack_timeout is None else ack_timeout)

    async def subscribe_to_symbol(
        self,
        exchange: str,
        symbol: str,
        channels: Sequence[str] | None = None,
        *,
        ack_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Subscribe live (default channels: the venue's configured ones) and wait until the venue
        acknowledged it, at most ``ack_timeout`` seconds (default: the service's).

        Idempotent. Raises UnknownVenue, VenueDisabled, InvalidRequest, UnknownSymbol,
        UnsupportedSymbol, VenueRefused (rolled back) or NoAnswer (kept, and retried on every
        reconnect).
        """
        supervisor, symbol, wanted = self._checked(exchange, symbol, channels, every=False)
        assert wanted is not None
        return await subscriptions.subscribe(
            supervisor, self.state, exchange, symbol, wanted, self._deadline(ack_timeout)
        )

    async def unsubscribe_from_symbol(
        self,
        exchange: str,
        symbol: str,
        channels: Sequence[str] | None = None,
        *,
        ack_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Unsubscribe live (default: every channel of the symbol) and wait for the venue's answer.

        Raises NotSubscribed when none of the channels is subscribed, NoAnswer when the venue did
        not confirm in time (the stream is gone from feedd's side all the same).
        """
        supervisor, symbol, wanted = self._checked(exchange, symbol, channels, every=True)
        return await subscriptions.unsubscribe(
            supervisor, self.state, exchange, symbol, wanted, self._deadline(ack_timeout)
        )

    def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription: ``{"exchange", "symbol", "channels", "state"}``, ``state`` being
        ``active`` (acknowledged), ``pending`` (not yet) or ``refused`` (by the venue)."""
        return report.list_subscriptions(self)

    # ---- status (feedd.control.report) --------------------------------------------------

    def subscribers(self) -> list[SubscriberInfo]:
        """Every subscriber's counters: the callbacks, then the Unix socket's."""
        return report.subscribers(self)

    def health(self) -> tuple[str, list[str]]:
        """``ok``/``degraded``/``down`` and why; a venue is fresh with a message within
        ``stale_after`` seconds on every connection. A NATS sink that is not connected makes
        an ``ok`` feed ``degraded``: the records still reach the other consumers."""
        return report.health(self)

    def get_connection_status(self) -> dict[str, Any]:
        """The status document of ``GET /api/v1/websocket/status``."""
        return report.connection_status(self)

    def summary(self) -> str:
        """The state in one line (systemd's ``STATUS=``), with what the last reload left to do."""
        return report.summary(self)


async def _serve_http(
    service: WebSocketService,
    stop: trio.Event,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The service's HTTP API until ``stop``, ``task_status.started(address)`` once it listens;
    ``done`` once it answered what was in flight."""
    from feedd.http.api import build_app
    from feedd.http.server import serve_http, split_listen

    listen = service.config.http.listen
    try:
        async with trio.open_nursery() as nursery:
            address: str = await nursery.start(serve_http, build_app(service), listen, stop.wait)
            host = split_listen(listen)[0]
            if service.config.http.token is None and host not in ("127.0.0.1", "::1", "localhost"):
                log.warning("the HTTP API listens on %s without a token: anyone who can reach it "
                            "can change subscriptions ([http] token)", address)
            task_status.started(address)
    finally:
        done.set()  # hypercorn returned: requests in flight were answered


async def _until_done(
    fn: Callable[..., Awaitable[None]],
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``fn(task_status=...)`` and set ``done`` when it returns, however it ends."""
    try:
        await fn(task_status=task_status)
    finally:
        done.set()


__all__ = [
    "ACK_TIMEOUT",
    "InvalidRequest",
    "UnknownVenue",
    "VenueDisabled",
    "WebSocketService",
]
