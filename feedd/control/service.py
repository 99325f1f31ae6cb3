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
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from feedd.config import Config, ExchangeConfig, read_token_file, symbol_problem
from feedd.control.history import History, Totals
from feedd.control.metrics import DELAY_BUCKETS, Metrics
from feedd.control.reload import ReloadOutcome, VenuePlan, plan_reload, subscriptions_of
from feedd.control.state import StateFile
from feedd.errors import (
    InvalidRequest,
    NoAnswer,
    NotSubscribed,
    SubscriptionRefused,
    UnknownVenue,
    VenueDisabled,
    quoted,
)
from feedd.exchanges import make_venue, venue_ids
from feedd.exchanges.base import CHANNELS, Channel, Subscription
from feedd.fanout.callback import AnyCallback, Callback, CallbackSink
from feedd.fanout.hub import Hub, SubscriberInfo
from feedd.fanout.unix import UnixPublisher
from feedd.feed.gates import HandshakeGates
from feedd.feed.runner import RunnerSettings
from feedd.feed.status import VenueStatus, overall
from feedd.feed.supervisor import VenueSupervisor
from feedd.model import Ingress
from feedd.wire.transport import TRANSPORTS, OpenTransport

if TYPE_CHECKING:
    from feedd.fanout.nats import NatsSink

log = logging.getLogger(__name__)

#: how long a live subscribe or unsubscribe waits for the venue's answer, by default
ACK_TIMEOUT = 10.0
#: how long a graceful stop may take before what is left is cancelled (``feedd run`` promises
#: an exit within 5 s of SIGTERM: the rest is cancelling, the interpreter's own exit, and room
#: for a loaded machine)
STOP_GRACE = 3.0


def runner_settings(config: Config) -> RunnerSettings:
    feed = config.feed
    return RunnerSettings(
        reconnect_interval=feed.reconnect_interval,
        max_backoff=feed.max_backoff,
        max_retries=feed.max_retries,
        stale_after=feed.stale_after,
        stable_after=feed.stable_after,
        connect_timeout=feed.connect_timeout,
    )


_DONE = {"start": "started", "stop": "stopped", "restart": "restarted"}


@attrs.define(eq=False)
class _VenueRun:
    """One venue's supervisor as a task of the service: cancelled by ``scope``, ``done`` once
    ended; ``records`` is its own sender to the hub, closed when it ends."""

    supervisor: VenueSupervisor
    records: trio.MemorySendChannel[Ingress]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)


def _channel_list(subs: Iterable[Subscription]) -> list[str]:
    channels = {s.channel for s in subs}
    return [c for c in CHANNELS if c in channels]


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
        self.callbacks: dict[CallbackSink, trio.CancelScope] = {}
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

    async def _run(self, task_status: trio.TaskStatus[WebSocketService]) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(_until_done, self.hub.run, self._hub_done)
            self.hub.attach(self.metrics.sink)
            await nursery.start(self.history.run, self._totals)
            for sink, scope in self.callbacks.items():
                self._start_callback(sink, scope)
            if self.publisher is not None:
                await nursery.start(_until_done, self.publisher.serve, self._publisher_done)
            if self.nats is not None:
                self.hub.attach(self.nats)
                await nursery.start(_until_done, self.nats.run, self._nats_done)
            restored = self.state.load()
            for venue_id, exchange in config.exchanges.items():
                enabled = config.feed.enabled and exchange.enabled
                self._new_status(venue_id, enabled=enabled)
                if enabled:
                    self._add_venue(venue_id, exchange)
            for venue_id in sorted(set(restored) - set(self.venues)):
                log.warning("%s: runtime subscriptions of %s, which is not running, are kept but not used",
                            config.feed.state_file, venue_id)
            if self.serve_http:
                self.http_address = await nursery.start(self._serve_http)
            for venue_id in self.venues:
                await self._start_venue(venue_id)
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

    # ---- venues -------------------------------------------------------------------------

    def _add_venue(self, venue_id: str, exchange: ExchangeConfig) -> None:
        """Create a venue's supervisor (configured + runtime subscriptions) and its status."""
        config = self.config
        status = self._new_status(venue_id, enabled=True)
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
        )
        self.venues[venue_id] = supervisor
        self._runs[venue_id] = _VenueRun(supervisor, records)

    def _new_status(self, venue_id: str, *, enabled: bool) -> VenueStatus:
        """A venue's status for a new run of it, its counters carried over from the last run."""
        status = VenueStatus(venue_id, enabled=enabled)
        previous = self.statuses.get(venue_id)
        if previous is not None:
            status.carry_totals(previous)
        self.statuses[venue_id] = status
        return status

    async def _start_venue(self, venue_id: str) -> None:
        assert self._nursery is not None
        await self._nursery.start(self._run_venue, self._runs[venue_id], name=f"venue {venue_id}")

    @staticmethod
    async def _run_venue(
        run: _VenueRun, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with run.scope, run.records:
                await run.supervisor.run(task_status=task_status)
        finally:
            run.done.set()

    async def _stop_venue(self, venue_id: str) -> None:
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
                    outcome = await self._apply(config)
                finally:
                    self._reloading = None
            self.last_reload = outcome
            return outcome

    def reload_refused(self, source: str, error: str) -> ReloadOutcome:
        """Record a reload whose config could not be used (it was not applied)."""
        self.last_reload = ReloadOutcome(source, error=error)
        return self.last_reload

    async def _apply(self, new: Config) -> ReloadOutcome:
        old = self.config
        plan = plan_reload(old, new)
        self.config = config = plan.config
        applied = list(plan.applied)
        problems: list[str] = []
        settings = runner_settings(config)
        if settings != runner_settings(old):
            for supervisor in self.venues.values():
                supervisor.update_settings(settings)
        if self.publisher is not None:
            self.publisher.client_buffer = config.unix.client_buffer
            self.publisher.max_clients = config.unix.max_clients
        updates: list[VenuePlan] = []
        live: list[VenuePlan] = []  # updates made through live subscribes and unsubscribes
        for step in plan.venues:
            if step.action in ("stop", "restart"):
                await self._stop_venue(step.venue)
            if step.action in ("start", "restart"):
                self._add_venue(step.venue, config.exchanges[step.venue])
                await self._start_venue(step.venue)
            if step.action == "update":
                supervisor = self.venues[step.venue]
                supervisor.reconfigure(config.exchanges[step.venue])
                if supervisor.amend_initial(step.subscribe, step.unsubscribe):
                    applied.append(f"{step.venue}: {step.why} (applied once its instrument list is in)")
                else:
                    live.append(step)
                updates.append(step)
            else:
                applied.append(f"{step.venue}: {_DONE[step.action]} ({step.why})")
        for venue_id in config.exchanges:
            if venue_id not in self.venues:
                self._new_status(venue_id, enabled=False)
        for venue_id in [v for v in self.statuses if v not in config.exchanges]:
            del self.statuses[venue_id]
        async with trio.open_nursery() as nursery:
            for step in live:
                for symbol, channels in step.unsubscribe.items():
                    nursery.start_soon(self._reload_change, self.unsubscribe_from_symbol,
                                       step.venue, symbol, channels, applied, problems)
                for symbol, channels in step.subscribe.items():
                    nursery.start_soon(self._reload_change, self.subscribe_to_symbol,
                                       step.venue, symbol, channels, applied, problems)
        if [step for step in updates if self._forget_config_changes(step.venue, old)]:
            with trio.CancelScope(shield=True):
                await self.state.save()
        return ReloadOutcome(new.source, applied=tuple(applied),
                             needs_restart=plan.needs_restart, problems=tuple(problems))

    async def _reload_change(
        self,
        call: Callable[..., Awaitable[dict[str, Any]]],
        venue_id: str,
        symbol: str,
        channels: Sequence[Channel],
        applied: list[str],
        problems: list[str],
    ) -> None:
        subscribe = call == self.subscribe_to_symbol
        verb = "subscribed" if subscribe else "unsubscribed"
        what = f"{venue_id}: {symbol} {'+'.join(channels)}"
        try:
            answer = await call(venue_id, symbol, channels)
        except NotSubscribed:
            return  # removed through the API already
        except NoAnswer as exc:  # the change stands; the venue may still confirm it
            problems.append(f"{what}: {verb}, but {str(exc).removeprefix(f'{venue_id}: ')}")
        except SubscriptionRefused as exc:
            problems.append(f"{what}: not {verb}: {str(exc).removeprefix(f'{venue_id}: ')}")
        else:
            done = answer["added" if subscribe else "removed"]
            if done:  # nothing when the API had made the change already
                applied.append(f"{venue_id}: {symbol} {'+'.join(done)}: {verb}")

    def _forget_config_changes(self, venue_id: str, old: Config) -> bool:
        """Drop runtime changes the edit made moot: an API subscription the config now has, an
        API unsubscription of a subscription the config no longer has, or has again (the edit
        that adds it is the newer wish). Whether anything was dropped."""
        changes = self.state.venues.get(venue_id)
        if changes is None:
            return False
        base = subscriptions_of(self.config.exchanges[venue_id])
        added = base - subscriptions_of(old.exchanges[venue_id])
        before = (set(changes.subscribed), set(changes.unsubscribed))
        changes.subscribed -= base
        changes.unsubscribed &= base - added
        return (changes.subscribed, changes.unsubscribed) != before

    async def _serve_http(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        from feedd.http.api import build_app
        from feedd.http.server import serve_http, split_listen

        listen = self.config.http.listen
        try:
            async with trio.open_nursery() as nursery:
                address: str = await nursery.start(serve_http, build_app(self), listen, self._http_stop.wait)
                host = split_listen(listen)[0]
                if self.config.http.token is None and host not in ("127.0.0.1", "::1", "localhost"):
                    log.warning("the HTTP API listens on %s without a token: anyone who can reach it "
                                "can change subscriptions ([http] token)", address)
                task_status.started(address)
        finally:
            self._http_done.set()  # hypercorn returned: requests in flight were answered

    def stop(self) -> None:
        """Stop gracefully: the HTTP API answers what is in flight (bounded), then all ends."""
        self._stop.set()
        if not self._started and self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # still starting: nothing to be graceful about

    # ---- data callbacks -----------------------------------------------------------------

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
        return self._add_callback(CallbackSink(
            callback, buffer, name=self._callback_name(callback), events=events
        ))

    def add_event_callback(self, callback: AnyCallback, *, buffer: int = 1_000) -> CallbackSink:
        """Call ``callback(event)`` for every feed event only (disconnects and reconnects, see
        :meth:`add_data_callback`); removed with :meth:`remove_data_callback`."""
        return self._add_callback(CallbackSink(
            callback, buffer, name=self._callback_name(callback), data=False, events=True
        ))

    def _callback_name(self, callback: object) -> str:
        name = getattr(callback, "__qualname__", type(callback).__name__)
        return f"callback#{len(self.callbacks) + 1}:{name}"

    def _add_callback(self, sink: CallbackSink) -> CallbackSink:
        scope = trio.CancelScope()
        self.callbacks[sink] = scope
        if self._nursery is not None:
            self._start_callback(sink, scope)
        return sink

    def remove_data_callback(self, sink: CallbackSink) -> None:
        """Stop calling the callback: no record is passed to it after this returns (a plain
        callback's call in progress, in its thread, is not waited for)."""
        scope = self.callbacks.pop(sink, None)
        if scope is not None:
            self.hub.detach(sink)
            sink.close()
            scope.cancel()

    def _start_callback(self, sink: CallbackSink, scope: trio.CancelScope) -> None:
        async def deliver() -> None:
            with scope:
                await sink.run()

        assert self._nursery is not None
        self.hub.attach(sink)
        self._nursery.start_soon(deliver, name=sink.name)

    # ---- subscriptions ------------------------------------------------------------------

    def _supervisor(self, exchange: str) -> VenueSupervisor:
        supervisor = self.venues.get(exchange)
        if supervisor is not None:
            return supervisor
        if exchange in self.statuses:
            why = "the feed is disabled" if not self.config.feed.enabled else "enabled = false"
            raise VenueDisabled(f"venue {quoted(exchange)} is not running ({why})")
        configured = ", ".join(self.statuses) or "none"
        if exchange not in venue_ids():
            raise UnknownVenue(f"unknown venue {quoted(exchange)} (configured: {configured})")
        raise UnknownVenue(f"venue {quoted(exchange)} is not configured (configured: {configured})")

    def _channels(self, supervisor: VenueSupervisor, channels: Sequence[str] | None) -> list[Channel]:
        if channels is None:
            return list(supervisor.config.channels)
        if isinstance(channels, str) or not channels:
            raise InvalidRequest("channels: expected a non-empty list of " + ", ".join(CHANNELS))
        wanted: list[Channel] = []
        for channel in channels:
            if channel not in CHANNELS:
                raise InvalidRequest(f"unknown channel {quoted(channel)} (known: {', '.join(CHANNELS)})")
            wanted.append(channel)
        for channel in wanted:
            try:
                supervisor.venue.topics(Subscription("X", channel))
            except ValueError:
                raise InvalidRequest(f"{supervisor.venue_id} has no {channel!r} channel") from None
        return list(dict.fromkeys(wanted))

    @staticmethod
    def _symbol(symbol: object) -> str:
        if not isinstance(symbol, str):
            raise InvalidRequest(f"symbol: expected text, got {type(symbol).__name__}")
        problem = symbol_problem(symbol)
        if problem is not None:
            raise InvalidRequest(f"symbol: {problem}")
        return symbol

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
        supervisor = self._supervisor(exchange)
        wanted = self._channels(supervisor, channels)
        symbol = self._symbol(symbol)
        deadline = trio.current_time() + (self.ack_timeout if ack_timeout is None else ack_timeout)
        before = set(supervisor.subscriptions())
        try:
            added = await supervisor.subscribe_confirmed(symbol, wanted, deadline)
        finally:
            persisted = await self._record(supervisor, before)
        symbol = supervisor.normalize(symbol)
        return {
            "exchange": exchange,
            "symbol": symbol,
            "channels": supervisor.channels_of(symbol),
            "added": _channel_list(added),
            "persisted": persisted,
        }

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
        supervisor = self._supervisor(exchange)
        wanted = None if channels is None else self._channels(supervisor, channels)
        symbol = self._symbol(symbol)
        if wanted is not None and not set(wanted) & set(supervisor.channels_of(symbol)):
            raise NotSubscribed(
                f"{exchange}: {supervisor.normalize(symbol)} is not subscribed to {', '.join(wanted)}"
            )
        deadline = trio.current_time() + (self.ack_timeout if ack_timeout is None else ack_timeout)
        before = set(supervisor.subscriptions())
        try:
            removed = await supervisor.unsubscribe_confirmed(symbol, wanted, deadline)
        finally:
            persisted = await self._record(supervisor, before)
        symbol = supervisor.normalize(symbol)
        return {
            "exchange": exchange,
            "symbol": symbol,
            "removed": _channel_list(removed),
            "channels": supervisor.channels_of(symbol),
            "persisted": persisted,
        }

    async def _record(self, supervisor: VenueSupervisor, before: set[Subscription]) -> bool:
        """Save what changed relative to the config; whether the state file holds it now."""
        after = set(supervisor.subscriptions())
        exchange = supervisor.config
        base = {Subscription(s, c) for s in exchange.symbols for c in exchange.channels}
        changed = self.state.changes(supervisor.venue_id).record(before, after, base)
        if not changed:
            return self.state.writable
        with trio.CancelScope(shield=True):  # a change made is a change saved
            saved = await self.state.save()
        return saved

    def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription: ``{"exchange", "symbol", "channels", "state"}``, ``state`` being
        ``active`` (acknowledged), ``pending`` (not yet) or ``refused`` (by the venue)."""
        return [
            {"exchange": venue_id, **entry}
            for venue_id, supervisor in self.venues.items()
            for entry in _by_symbol(supervisor)
        ]

    # ---- status -------------------------------------------------------------------------

    def subscribers(self) -> list[SubscriberInfo]:
        found = [sink.info() for sink in self.callbacks]
        if self.publisher is not None:
            found += [
                SubscriberInfo("unix", f"unix#{sub.number}", sub.sent, sub.dropped_total, sub.pending)
                for sub in sorted(self.publisher.subscribers, key=lambda s: s.number)
            ]
        return found

    def health(self) -> tuple[str, list[str]]:
        """``ok``/``degraded``/``down`` and why; a venue is fresh with a message within
        ``stale_after`` seconds on every connection. A NATS sink that is not connected makes
        an ``ok`` feed ``degraded``: the records still reach the other consumers."""
        state, reasons = overall(self.statuses.values(), self.config.feed.stale_after)
        if self.nats is not None and (problem := self.nats.problem()) is not None:
            reasons = [*reasons, problem]
            if state == "ok":
                state = "degraded"
        return state, reasons

    def _totals(self) -> dict[str, Totals]:
        delays = self.metrics.delay_counts()
        return {
            venue: Totals(
                status.frames, status.messages, sum(status.rejected.values()), delays.get(venue, ())
            )
            for venue, status in self.statuses.items()
        }

    def get_connection_status(self) -> dict[str, Any]:
        """The status document of ``GET /api/v1/websocket/status``."""
        state, reasons = self.health()
        exchanges = {}
        for venue_id, status in self.statuses.items():
            supervisor = self.venues.get(venue_id)
            subs = [] if supervisor is None else _by_symbol(supervisor)
            exchanges[venue_id] = status.snapshot(subs)
            exchanges[venue_id]["latency"] = self.history.latency(venue_id)
        return {
            "state": state,
            "reasons": reasons,
            "exchanges": exchanges,
            "subscribers": [
                {"kind": s.kind, "name": s.name, "delivered": s.delivered, "dropped": s.dropped,
                 "pending": s.pending, **({"errors": s.errors} if s.kind == "callback" else {})}
                for s in self.subscribers()
            ],
            "sinks": {} if self.nats is None else {"nats": self.nats.snapshot()},
            "http": {"listen": self.http_address, "token": self.config.http.token is not None},
            "state_file": {"path": str(self.state.path), "problem": self.state.problem},
            "reload": None if self.last_reload is None else self.last_reload.snapshot(),
        }

    def summary(self) -> str:
        """The state in one line (systemd's ``STATUS=``), with what the last reload left to do."""
        state, _ = self.health()
        states = [self.statuses[v].state for v in self.venues]
        subscriptions = sum(len(s.subscriptions()) for s in self.venues.values())
        line = f"{state}: {states.count('connected')}/{len(self.venues)} venue(s) connected"
        if "idle" in states:
            line += f", {states.count('idle')} idle (nothing subscribed)"
        line += f", {subscriptions} subscription(s)"
        if self.publisher is not None:
            line += f", {len(self.publisher.subscribers)} socket subscriber(s)"
        if self.nats is not None:
            line += f", nats {'connected' if self.nats.connected else 'not connected'}"
        reload = self.last_reload
        if reload is not None and (not reload.ok or reload.needs_restart):
            line += f"; last reload: {reload.summary()}"
        return line


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


def _by_symbol(supervisor: VenueSupervisor) -> list[dict[str, Any]]:
    """A venue's subscriptions, one entry per symbol and state."""
    groups: dict[tuple[str, str], list[Channel]] = {}
    for sub in supervisor.subscriptions():
        groups.setdefault((sub.symbol, supervisor.state_of(sub)), []).append(sub.channel)
    return [
        {"symbol": symbol, "channels": [c for c in CHANNELS if c in channels], "state": state}
        for (symbol, state), channels in groups.items()
    ]


__all__ = [
    "ACK_TIMEOUT",
    "InvalidRequest",
    "UnknownVenue",
    "VenueDisabled",
    "WebSocketService",
]
