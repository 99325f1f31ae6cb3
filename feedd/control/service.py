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

or, without the block, started by ``await ws.initialize()`` and stopped by ``await ws.close()``,
under trio (the task tree is then a system task of the run) or under asyncio (a trio guest run on
the asyncio loop, :mod:`~feedd.control.guest`; every awaitable call is bridged onto it). The loop
is the running one, found by sniffio; no config means :mod:`~feedd.control.defaults`' discovery.

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
import os
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import sniffio
import trio

from feedd.config import Config, ExchangeConfig, proxy_of, read_token_file
from feedd.control import report, subscriptions
from feedd.control.apply import apply_reload, runner_settings
from feedd.control.callbacks import Callbacks, LoopCallbackSink
from feedd.control.defaults import resolve_config
from feedd.control.history import History
from feedd.control.metrics import DELAY_BUCKETS, Metrics
from feedd.control.reload import ReloadOutcome
from feedd.control.state import StateFile
from feedd.errors import InvalidRequest, ServiceNotRunning, UnknownVenue, VenueDisabled
from feedd.exchanges import make_venue
from feedd.exchanges.base import Channel
from feedd.fanout.callback import AnyCallback, Callback, CallbackSink, _is_async
from feedd.fanout.hub import Hub, SubscriberInfo
from feedd.fanout.unix import UnixPublisher
from feedd.feed.backfill import BackfillSettings
from feedd.feed.gates import HandshakeGates
from feedd.feed.status import VenueStatus
from feedd.feed.supervisor import VenueSupervisor
from feedd.model import Ingress
from feedd.wire.transport import TRANSPORTS, OpenTransport

if TYPE_CHECKING:
    import asyncio

    from feedd.control.guest import GuestRun
    from feedd.fanout.nats import NatsSink
    from feedd.http.app import App, Handler, Request, Response
    from feedd.record.writer import Recorder

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how long a live subscribe or unsubscribe waits for the venue's answer, by default
ACK_TIMEOUT = 10.0
#: how long a graceful stop may take before what is left is cancelled (``feedd run`` promises
#: an exit within 5 s of SIGTERM: the rest is cancelling, the interpreter's own exit, and room
#: for a loaded machine)
STOP_GRACE = 3.0


def _loop() -> str:
    """``"trio"`` or ``"asyncio"``: the loop of the calling task (sniffio)."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        raise RuntimeError("WebSocketService's awaitable calls run under trio or asyncio: "
                           "await them inside trio.run(...) or asyncio.run(...)") from None
    if library not in ("trio", "asyncio"):
        raise RuntimeError(f"WebSocketService runs under trio or asyncio, not {library}")
    return library


def start_failure(exc: BaseException) -> BaseException:
    """What a start raised, out of the nurseries' groups when it is one exception (a port
    taken is a ListenError, not a group of one), so every form of start raises the same."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


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

    ``config``: a :class:`~feedd.config.Config`, a config file's path (loaded with the
    environment's overrides), or None: ``$FEEDD_CONFIG``, else ``/etc/feedd/config.toml`` if it
    exists, else every venue with no symbols (:mod:`feedd.control.defaults`); a bad file raises
    :class:`~feedd.config.ConfigError` naming the file and the key. ``serve_unix`` and
    ``serve_http`` start the ``[unix]`` publisher and the ``[http]`` API; the daemon turns both
    on. Runtime subscription changes are saved to ``[feed] state_file`` and restored at start
    either way. An instance runs once.
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        serve_unix: bool = False,
        serve_http: bool = False,
        open_transport: OpenTransport | None = None,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        config = resolve_config(config)
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
        #: run() was entered (an instance runs once), and has returned
        self._ran = False
        self._ended = trio.Event()
        #: under asyncio: the trio guest run holding the task tree
        self._guest: GuestRun | None = None
        #: under trio without ``async with``: set once the system task started (or failed to),
        #: and its crash
        self._system_started: trio.Event | None = None
        self._failure: BaseException | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> WebSocketService:
        if _loop() == "asyncio":  # the block is the guest run's lifetime
            self._check_startable()
            await self._start_guest()
            return self
        stack = AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        try:
            await nursery.start(self.run)
        except BaseException as exc:
            await stack.aclose()
            failure = start_failure(exc)
            if failure is exc:
                raise
            raise failure from None
        self._stack = stack
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if self._guest is not None:  # asyncio: a graceful stop, the body's exception as raised
            await self.close()
            return None
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
        """Start the service in the background if it is not running, and return once it is
        ready: every venue started, its instrument list in, its configured and restored
        subscriptions placed (they are then being connected).

        Inside ``async with`` it only waits. Under trio otherwise the task tree becomes a system
        task of the run, until :meth:`close` or the end of ``trio.run``; under asyncio it is a
        trio guest run on the asyncio loop (:mod:`feedd.control.guest`), until :meth:`close` or
        the end of ``asyncio.run``. Raises what the start raised (a port taken, say), and
        ServiceNotRunning after the service stopped (an instance runs once).
        """
        if _loop() == "asyncio":
            if self._guest is None:
                self._check_startable()
                await self._start_guest()
            guest = self._bridged()
            assert guest is not None
            await guest.call(self._wait_ready)
            return
        if self._nursery is None:
            if self._system_started is None:
                self._check_startable()
                self._system_started = trio.Event()
                await self._start_in_system_task(self._system_started)
            else:  # another task is starting it
                await self._system_started.wait()
        await self._wait_ready()

    async def close(self) -> None:
        """Stop gracefully and wait until the task tree has ended; raises what made it fail,
        if it did. Idempotent; inside ``async with`` the block's end does the same."""
        if _loop() == "asyncio":
            if self._guest is not None:
                failure = await self._guest.stop()
                if failure is not None:
                    raise failure
            return
        if self._guest is not None:
            raise RuntimeError("this service runs under asyncio: close it there")
        self.stop()
        if self._ran:
            await self._ended.wait()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _not_running(self) -> ServiceNotRunning:
        if self._ran or self._guest is not None:
            return ServiceNotRunning("the service is not running any more: an instance runs once, "
                                     "make a new one")
        return ServiceNotRunning("the service is not running: `await ws.initialize()` starts it "
                                 "(or `async with WebSocketService(config) as ws`)")

    def _check_startable(self) -> None:
        if self._ran or self._guest is not None:
            raise self._not_running()

    async def _wait_ready(self) -> None:
        if self._nursery is None:
            raise self._not_running()
        for supervisor in self.venues.values():
            await supervisor.ready.wait()

    async def _start_in_system_task(self, started: trio.Event) -> None:
        """Run the task tree as a system task of the trio run: it outlives the caller's task
        and ends at :meth:`close` or when ``trio.run``'s main function returns (cancelled)."""
        failed: list[Exception] = []

        async def system() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        await nursery.start(self.run)
                    except Exception as exc:  # noqa: BLE001 (raised by initialize(), below)
                        failed.append(exc)
                        return
                    finally:
                        started.set()
            except Exception as exc:  # never out of a system task: that would crash the run
                log.error("feedd's service failed", exc_info=exc)
                self._failure = exc

        trio.lowlevel.spawn_system_task(system, name="feedd: WebSocketService")
        await started.wait()
        if failed:
            raise start_failure(failed[0]) from None

    async def _start_guest(self) -> GuestRun:
        import asyncio

        from feedd.control.guest import GuestRun

        self._guest = GuestRun(self.run, self.stop, asyncio.get_running_loop(), start_failure)
        await self._guest.start()
        return self._guest

    def _asyncio_host(self) -> asyncio.AbstractEventLoop | None:
        """The asyncio loop the service runs on as a trio guest, if it does."""
        return None if self._guest is None else self._guest.loop

    def _bridged(self) -> GuestRun | None:
        """The guest run to bridge a call onto, when called from asyncio; None from trio."""
        if _loop() == "trio":
            return None
        guest = self._guest
        if guest is None or guest.done.done():
            raise self._not_running()
        return guest

    async def run(
        self, *, task_status: trio.TaskStatus[WebSocketService] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The task tree; ``task_status.started(self)`` once sinks listen and every venue started.

        A venue counts as started before its instrument list arrives (its supervisor fetches it in
        the background), so a slow or dead REST endpoint delays only its own venue.
        """
        if self._stop.is_set() or self._ran:
            return
        self._ran = True
        try:
            await self._run(task_status)
        finally:
            self._nursery = None
            self.callbacks.stopped()
            self._ended.set()

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
            backfill=BackfillSettings(
                config.feed.backfill_max, config.feed.backfill_hold, config.feed.backfill_max_age
            ),
            proxy=proxy_of(config, venue_id),
            instruments_wait=config.feed.instruments_wait,
            instruments_refresh=config.feed.instruments_refresh or None,
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
        if (guest := self._bridged()) is not None:
            return await guest.call(self.reload, config)
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
        as usual. An ``async def`` callback runs on the program's event loop (trio's, or
        asyncio's when the service runs under asyncio) and must not block; a plain function
        runs in a worker thread of its own (one per batch of pending records), since only a
        thread keeps a blocking function off the loop, so it must be thread-safe with respect
        to its own state. At stop or removal a call in progress is abandoned, not awaited (see
        :class:`~feedd.fanout.callback.CallbackSink`). Returns the sink, for
        :meth:`remove_data_callback` and its counters.
        """
        return self._add_callback(callback, buffer, data=True, events=events)

    def add_event_callback(self, callback: AnyCallback, *, buffer: int = 1_000) -> CallbackSink:
        """Call ``callback(event)`` for every feed event only (disconnects and reconnects, see
        :meth:`add_data_callback`); removed with :meth:`remove_data_callback`."""
        return self._add_callback(callback, buffer, data=False, events=True)

    def _add_callback(self, callback: AnyCallback, buffer: int, *, data: bool, events: bool) -> CallbackSink:
        name = self.callbacks.name(callback)
        sink = (
            LoopCallbackSink(callback, buffer, name, host=self._asyncio_host, data=data, events=events)
            if _is_async(callback)
            else CallbackSink(callback, buffer, name=name, data=data, events=events)
        )
        if self._guest is not None and not trio.lowlevel.in_trio_run():
            # from asyncio while the guest runs: the registry is the trio side's to change
            self._guest.soon(lambda: self.callbacks.add(sink))
            return sink
        return self.callbacks.add(sink)

    def remove_data_callback(self, sink: CallbackSink) -> None:
        """Stop calling the callback: no record is passed to it after this returns (a plain
        callback's call in progress, in its thread, is not waited for)."""
        if self._guest is not None and not trio.lowlevel.in_trio_run():
            sink.close()  # now: nothing more is passed to it; its task ends on the trio side
            self._guest.soon(lambda: self.callbacks.remove(sink))
            return
        self.callbacks.remove(sink)

    # ---- subscriptions (feedd.control.subscriptions) ------------------------------------

    def _checked(
        self, exchange: str, symbol: object, channels: Sequence[str] | None, *, every: bool
    ) -> tuple[VenueSupervisor, str, list[Channel] | None]:
        """The venue's supervisor, the symbol and the channels of a request, or its refusal;
        no channels mean the configured ones, or with ``every`` None (all the symbol has)."""
        if self._nursery is None:
            raise self._not_running()
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
        reconnect); the same classes under asyncio.
        """
        if (guest := self._bridged()) is not None:
            return await guest.call(partial(self.subscribe_to_symbol, exchange, symbol, channels,
                                            ack_timeout=ack_timeout))
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
        if (guest := self._bridged()) is not None:
            return await guest.call(partial(self.unsubscribe_from_symbol, exchange, symbol, channels,
                                            ack_timeout=ack_timeout))
        supervisor, symbol, wanted = self._checked(exchange, symbol, channels, every=True)
        return await subscriptions.unsubscribe(
            supervisor, self.state, exchange, symbol, wanted, self._deadline(ack_timeout)
        )

    async def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription: ``{"exchange", "symbol", "channels", "state"}``, ``state`` being
        ``active`` (acknowledged), ``pending`` (not yet), ``refused`` (by the venue) or
        ``delisted`` (the venue's instrument list no longer has the symbol; still subscribed)."""
        return await self._sync_call(self.current_subscriptions)

    def current_subscriptions(self) -> list[dict[str, Any]]:
        """:meth:`list_subscriptions` as a plain call, from trio (the HTTP API's)."""
        return report.list_subscriptions(self)

    async def _sync_call(self, fn: Callable[[], T]) -> T:
        """``fn()``, in trio's context (bridged when called from asyncio)."""
        if (guest := self._bridged()) is not None:
            return await guest.call_sync(fn)
        return fn()

    # ---- status (feedd.control.report) --------------------------------------------------

    def subscribers(self) -> list[SubscriberInfo]:
        """Every subscriber's counters: the callbacks, then the Unix socket's."""
        return report.subscribers(self)

    def health(self) -> tuple[str, list[str]]:
        """``ok``/``degraded``/``down`` and why; a venue is fresh with a message within
        ``stale_after`` seconds on every connection. A NATS sink that is not connected makes
        an ``ok`` feed ``degraded``: the records still reach the other consumers."""
        return report.health(self)

    async def get_connection_status(self) -> dict[str, Any]:
        """The status document of ``GET /api/v1/websocket/status``: every venue's state and
        counters, the sinks, the subscribers, the last reload."""
        return await self._sync_call(self.connection_status)

    def connection_status(self) -> dict[str, Any]:
        """:meth:`get_connection_status` as a plain call, from trio (the HTTP API's)."""
        return report.connection_status(self)

    def summary(self) -> str:
        """The state in one line (systemd's ``STATUS=``), with what the last reload left to do."""
        return report.summary(self)

    # ---- the HTTP API inside the program's own web app ----------------------------------

    def asgi_app(self) -> App:
        """The HTTP API (``/api/v1/websocket/*``, ``/healthz``, ``/metrics``, the page at ``/``)
        as an ASGI application for the program's own server, on its own loop: mounted in a
        Starlette or FastAPI app under asyncio (``app.mount("/", ws.asgi_app())``), or served
        by hypercorn under trio. The token of ``[http]`` is demanded as by ``feedd run``.

        Each request is answered on the loop it arrives on; under asyncio its handler, which
        calls the service, runs in the trio guest (bridged, as every awaitable call is). A
        request while the service is not running is answered 503.
        """
        from feedd.http.api import build_app

        app = build_app(self)
        app.handle_with(self._handle_request)
        return app

    async def _handle_request(self, handler: Handler, request: Request) -> Response:
        from feedd.http.app import HttpError

        try:
            if (guest := self._bridged()) is not None:
                return await guest.call(handler, request)
            return await handler(request)
        except ServiceNotRunning as exc:
            raise HttpError(503, str(exc)) from None


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
    "ServiceNotRunning",
    "UnknownVenue",
    "VenueDisabled",
    "WebSocketService",
]
