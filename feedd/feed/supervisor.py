"""One venue's supervisor: turns subscriptions into topics, topics into connections (shards).

It owns the venue's nursery; every connection runner lives there, so one venue failing never
disturbs another venue or the sinks, and adding a subscription at run time starts or reuses a
connection without reconnecting the others.

Live changes come in two forms: :meth:`VenueSupervisor.subscribe` / :meth:`unsubscribe` act at
once and return, and :meth:`subscribe_confirmed` / :meth:`unsubscribe_confirmed` (what the HTTP
and Python APIs call) also wait, within a deadline, until the venue has answered every wire topic
involved, and roll a refused subscription back.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal
from urllib.parse import urlsplit

import trio

from feedd.config import ExchangeConfig
from feedd.errors import (
    NoAnswer,
    NotSubscribed,
    SubscriptionRefused,
    Superseded,
    UnknownSymbol,
    UnsupportedSymbol,
    VenueRefused,
    quoted,
)
from feedd.exchanges.base import ALL_CHANNELS, Channel, Subscription, Topic, Venue
from feedd.exchanges.fields import QuotedVenue
from feedd.feed.backfill import BackfillSettings, backfiller_for
from feedd.feed.conflate import Conflator, flush_every
from feedd.feed.gates import Gate, HandshakeGates
from feedd.feed.instruments import InstrumentKeeper, Instruments, KeeperSettings, rest_client
from feedd.feed.placement import Placement
from feedd.feed.ratelimit import SlidingWindowLimiter
from feedd.feed.replies import Reply
from feedd.feed.runner import ConnectionRunner, RunnerSettings, send_limiter
from feedd.feed.status import VenueStatus
from feedd.feed.tap import Tap
from feedd.feed.validate import Validator
from feedd.model import Ingress
from feedd.wire.proxy import ProxyRoute, ProxySetting, choose_proxy
from feedd.wire.transport import OpenTransport, open_transport

log = logging.getLogger(__name__)


#: ``delisted``: subscribed, and the venue's instrument list no longer has the symbol
SubscriptionState = Literal["active", "pending", "refused", "delisted"]


class VenueSupervisor:
    def __init__(
        self,
        venue: Venue,
        config: ExchangeConfig,
        settings: RunnerSettings,
        *,
        cache_dir: str,
        records: trio.MemorySendChannel[Ingress],
        status: VenueStatus | None = None,
        open_transport: OpenTransport = open_transport,
        initial: Mapping[str, Sequence[Channel]] | None = None,
        gates: HandshakeGates | None = None,
        backfill: BackfillSettings | None = None,
        proxy: ProxySetting = None,
        environ: Mapping[str, str] | None = None,
        instruments_wait: float = 3.0,
        instruments_refresh: float | None = 6 * 3600.0,
        tap: Tap | None = None,
    ) -> None:
        self.venue = venue
        venue.quote_max_age = config.quote_max_age
        self.config = config
        self.settings = settings
        self.cache_dir = cache_dir
        self.status = status or VenueStatus(venue.venue_id)
        self.instruments = Instruments(None, "unchecked")
        #: how long the start waits for the list over REST, how often a good one is fetched again
        self.instruments_wait = instruments_wait
        self.instruments_refresh = instruments_refresh
        #: configured symbols a cached list lacked at start: subscribed if a fresh list has them
        self._awaiting_listing: dict[str, tuple[Channel, ...]] = {}
        #: subscribed symbols the list in use no longer has (they stay subscribed)
        self._delisted: set[str] = set()
        self.base_url = config.url or venue.default_url
        self.rest_url = config.rest_url or venue.default_rest_url
        self._records = records
        self._open = open_transport
        self._subscriptions: dict[Subscription, list[Topic]] = {}
        self._symbols: set[str] = set()
        self._validator = Validator(self._symbols)
        #: symbols whose quotes are records (the ``quotes`` channel), read live by the sessions;
        #: the venue's own set where it has a quote stream, else one nothing reads
        self._quoted: set[str] = venue.quotes.streamed if isinstance(venue, QuotedVenue) else set()
        self._ticked: set[str] = venue.quotes.ticked if isinstance(venue, QuotedVenue) else set()
        #: quotes held for the venue's flush when ``conflate`` is set (None: sent at once)
        self.conflator = Conflator() if config.conflate > 0 else None
        #: trade-id continuity and the REST backfill of gaps (None: the venue's ids say nothing)
        self.backfill = backfiller_for(
            venue, venue.venue_id, self.rest_url, records, self.status, self._validator,
            backfill or BackfillSettings(),
            lambda: rest_client(self.route(self.rest_url).proxy),
        )
        #: the recorder, told of every connection and of every change to the symbols accepted
        self._tap = tap
        #: which connection carries which topic (channels of one exchange may share a topic)
        self.placement: Placement[ConnectionRunner] = Placement(
            venue.max_streams_per_connection, venue.max_chars_per_connection
        )
        self._scopes: dict[ConnectionRunner, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._shard_count: dict[str, int] = {}
        #: per host, the send budget its connections share (venues that limit per address)
        self._limiters: dict[str, SlidingWindowLimiter] = {}
        #: per host, what it said about handshakes (Retry-After) and the connect pacing: shared
        #: with every venue of the service, since a venue throttles an address, not a connection
        self._gates = gates or HandshakeGates()
        #: what to subscribe at start: symbol -> channels (the config file's, unless told)
        self.initial: dict[str, tuple[Channel, ...]] = (
            {s: tuple(config.channels) for s in config.symbols}
            if initial is None
            else {s: tuple(c) for s, c in initial.items()}
        )
        #: set once the instrument list is in and the initial subscriptions are placed; live
        #: subscribes wait for it, so a symbol is checked against the list and not let through
        self.ready = trio.Event()
        #: the venue's proxy (its own, else ``[feed]``'s; None: the environment's, read from
        #: ``environ``): every connection and REST call of the venue takes its route
        self.proxy = proxy
        self._environ = os.environ if environ is None else environ
        self._routes: dict[str, ProxyRoute] = {}
        self.status.proxy = self.route(self.base_url).describe()
        self.status.rest_proxy = self.route(self.rest_url).describe()

    def route(self, url: str) -> ProxyRoute:
        """How ``url`` is reached: the configured proxy, none, or the environment's choice.

        An environment proxy that is not a usable URL (``feedd run`` refuses it at load; the
        Python API does not load) is logged once, and the connection goes direct. Decided once
        per URL, for the supervisor's life (a reload that changes the proxy restarts the venue).
        """
        known = self._routes.get(url)
        if known is not None:
            return known
        try:
            route = choose_proxy(url, self.proxy, self._environ)
        except ValueError as exc:
            log.warning("%s: ignoring the environment's proxy for %s: %s", self.venue_id, url, exc)
            route = ProxyRoute(None, "unusable environment proxy")
        self._routes[url] = route
        return route

    @property
    def venue_id(self) -> str:
        return self.venue.venue_id

    @property
    def rotate_after(self) -> float | None:
        """The configured connection lifetime, else the venue's; 0 configured means never."""
        configured = self.config.rotate_after
        if configured is None:
            return self.venue.rotate_after
        return configured or None

    def reconfigure(self, config: ExchangeConfig) -> None:
        """A reloaded section with the same endpoints: its channels become the default for API
        subscribes and the base the state file is relative to, and ``quote_max_age`` applies at
        once. The symbols are the caller's to subscribe and unsubscribe (live, confirmed)."""
        self.config = config
        self.venue.quote_max_age = config.quote_max_age
        for runner in self.runners():
            runner.rotate_after = self.rotate_after

    def amend_initial(
        self, subscribe: Mapping[str, Sequence[Channel]], unsubscribe: Mapping[str, Sequence[Channel]]
    ) -> bool:
        """Before the venue is ready (its instrument list still loading), change what it will
        subscribe once it is, and return True; once ready, do nothing and return False."""
        if self.ready.is_set():
            return False
        for symbol, channels in unsubscribe.items():
            kept = tuple(c for c in self.initial.get(symbol, ()) if c not in channels)
            if kept:
                self.initial[symbol] = kept
            else:
                self.initial.pop(symbol, None)
        for symbol, channels in subscribe.items():
            have = self.initial.get(symbol, ())
            self.initial[symbol] = tuple(c for c in ALL_CHANNELS if c in have or c in channels)
        return True

    def update_settings(self, settings: RunnerSettings) -> None:
        """New timing settings for every connection, from its next attempt on."""
        self.settings = settings
        for runner in self.runners():
            runner.update_settings(settings)

    def runners(self) -> list[ConnectionRunner]:
        """The venue's connections (shards) now."""
        return list(self.placement.carriers())

    def subscriptions(self) -> list[Subscription]:
        return sorted(self._subscriptions, key=lambda s: (s.symbol, s.channel))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report started, check symbols, open the configured subscriptions, supervise until cancelled.

        Started comes first: the instrument list may take up to ``instruments_wait`` seconds,
        and only this venue waits for it; then the cached list is used and the fetch goes on in
        the background (:class:`~feedd.feed.instruments.InstrumentKeeper`, cancelled with the
        venue), whose later lists replace it (:meth:`_instruments_changed`).
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            if self.backfill is not None:
                self.backfill.attach(nursery)
            if self.conflator is not None:
                nursery.start_soon(
                    flush_every, self.config.conflate, self.conflator, self._records, self.status
                )
            if self.config.check_symbols:
                keeper = InstrumentKeeper(
                    self.venue,
                    self.rest_url,
                    self.cache_dir,
                    KeeperSettings(
                        wait=self.instruments_wait,
                        refresh=self.instruments_refresh,
                        retry_initial=self.settings.reconnect_interval,
                        retry_ceiling=self.settings.max_backoff,
                    ),
                    status=self.status.instruments,
                    on_change=self._instruments_changed,
                    proxy=self.route(self.rest_url).proxy,
                )
                self.instruments = await nursery.start(keeper.run, name=f"{self.venue_id} instruments")
            for symbol, channels in self.initial.items():
                try:
                    self.subscribe(symbol, channels)
                except UnknownSymbol as exc:
                    if self.instruments.source != "cache":
                        log.error("%s", exc)
                        continue
                    # the cached list may predate the symbol's listing: the fresh list decides
                    self._awaiting_listing[self.normalize(symbol)] = tuple(channels)
                    log.error("%s (the cached list; subscribed if the fresh list has it)", exc)
                except SubscriptionRefused as exc:
                    log.error("%s", exc)
            self.status.started = True  # no connection from now on: nothing subscribed, idle
            self.ready.set()
            try:
                await trio.sleep_forever()
            finally:
                if self.backfill is not None:
                    with trio.CancelScope(shield=True):
                        await self.backfill.aclose()

    # ---- the instrument list ---------------------------------------------------------------

    def _instruments_changed(self, instruments: Instruments) -> None:
        """A later list (the background fetch succeeded, or a refresh): symbols are checked
        against it from now on; configured symbols the cached list lacked are subscribed if it
        has them, and subscribed symbols it lacks are reported as delisted."""
        self.instruments = instruments
        known = instruments.symbols
        if known is None:
            return
        awaiting, self._awaiting_listing = self._awaiting_listing, {}
        for symbol, channels in awaiting.items():
            if symbol not in known:
                continue  # still unknown: the error stays in the status
            try:
                self.subscribe(symbol, channels)
            except SubscriptionRefused as exc:
                log.error("%s", exc)
            else:
                log.info("%s: %s is listed by %s: subscribed", self.venue_id, symbol, self.rest_url)
        self._note_delisted()

    def _note_delisted(self) -> None:
        """Compare the subscribed symbols with the list in use: one log line for each symbol
        that left it (and one if it comes back), the venue's status, and the state of its
        subscriptions (``delisted``). Nothing is unsubscribed: the exchange decides."""
        known = self.instruments.symbols
        now = set() if known is None else {s for s in self._symbols if s not in known}
        for symbol in sorted(now - self._delisted):
            log.warning(
                "%s: %s is subscribed but not listed by %s (delisted?); it stays subscribed "
                "(the exchange decides whether it streams)", self.venue_id, symbol, self.rest_url,
            )
        for symbol in sorted((self._delisted - now) & self._symbols):
            log.info("%s: %s is listed again by %s", self.venue_id, symbol, self.rest_url)
        self._delisted = now
        self.status.instruments.delisted = sorted(now)

    # ---- subscriptions ------------------------------------------------------------------

    def normalize(self, symbol: str) -> str:
        return symbol.upper() if self.venue.uppercase_symbols else symbol

    def check(self, symbol: str) -> str:
        """The symbol as the venue spells it; UnsupportedSymbol when the venue's streams would not
        carry it as itself, UnknownSymbol when its instrument list lacks it."""
        symbol = self.normalize(symbol)
        problem = self.venue.symbol_problem(symbol)
        if problem is not None:
            raise UnsupportedSymbol(f"{self.venue_id}: {problem}")
        known = self.instruments.symbols
        if known is not None and symbol not in known:
            raise UnknownSymbol(
                f"{self.venue_id}: unknown symbol {quoted(symbol)}: not listed by {self.rest_url}"
            )
        return symbol

    def subscribe(self, symbol: str, channels: Iterable[Channel]) -> list[Subscription]:
        """Subscribe live; returns the subscriptions that were new.

        Raises UnknownSymbol or UnsupportedSymbol, and reports it in the venue's status (a
        configured symbol that cannot stream is the operator's to fix).
        """
        try:
            symbol = self.check(symbol)
        except (UnknownSymbol, UnsupportedSymbol) as exc:
            reason = str(exc).removeprefix(f"{self.venue_id}: ")
            self.status.subscription_errors[self.normalize(symbol)] = reason
            self.status.last_error = str(exc)
            raise
        added = []
        for channel in dict.fromkeys(channels):
            sub = Subscription(symbol, channel)
            if sub in self._subscriptions:
                continue
            topics = self.venue.topics(sub)
            self._subscriptions[sub] = topics
            added.append(sub)
            if channel == "quotes":
                self._quoted.add(symbol)
            elif channel == "ticker":
                self._ticked.add(symbol)
            for topic in topics:
                self._place(topic)
        if added:
            self._symbols.add(symbol)
            self.status.subscription_errors.pop(symbol, None)
            self._tell_tap()
        return added

    def _tell_tap(self) -> None:
        """The recorder learns what decoding depends on beyond the frames: the symbols accepted,
        and which ones' quote streams give quote or ticker records."""
        if self._tap is not None:
            self._tap.known(self.venue_id, sorted(self._symbols),
                            {"quotes": sorted(self._quoted), "ticker": sorted(self._ticked)})

    def unsubscribe(self, symbol: str, channels: Iterable[Channel]) -> list[Subscription]:
        """Unsubscribe live; raises NotSubscribed when none of the channels was subscribed."""
        return self._unsubscribe(symbol, channels)[0]

    def _unsubscribe(
        self, symbol: str, channels: Iterable[Channel]
    ) -> tuple[list[Subscription], dict[str, Reply]]:
        """The subscriptions removed, and the venue's answers to the unsubscribes this sent.

        The cut is clean: once no channel of the symbol is left, its records are refused at once
        (validation counts those still in flight as ``unknown_symbol``).
        """
        symbol = self.normalize(symbol)
        channels = list(dict.fromkeys(channels))
        removed = []
        replies: dict[str, Reply] = {}
        for channel in channels:
            sub = Subscription(symbol, channel)
            topics = self._subscriptions.pop(sub, None)
            if topics is None:
                continue
            removed.append(sub)
            if channel == "quotes":
                self._quoted.discard(symbol)
            elif channel == "ticker":
                self._ticked.discard(symbol)
            elif channel == "trades" and self.backfill is not None:
                self.backfill.forget(symbol)
            for topic in topics:
                reply = self._displace(topic)
                if reply is not None:
                    replies[topic.name] = reply
        if symbol in self._awaiting_listing:  # nor is it to be once the fresh list has it
            kept = tuple(c for c in self._awaiting_listing.pop(symbol) if c not in channels)
            if kept:
                self._awaiting_listing[symbol] = kept
        if not removed:
            raise NotSubscribed(f"{self.venue_id}: {symbol} is not subscribed to {', '.join(channels)}")
        if not any(s.symbol == symbol for s in self._subscriptions):
            self._symbols.discard(symbol)
            if symbol in self._delisted:
                self._delisted.discard(symbol)
                self.status.instruments.delisted = sorted(self._delisted)
        self._tell_tap()
        return removed, replies

    # ---- changes confirmed by the venue --------------------------------------------------

    def channels_of(self, symbol: str) -> list[Channel]:
        """The channels ``symbol`` is subscribed to (normalized as the venue spells it)."""
        symbol = self.normalize(symbol)
        return [c for c in ALL_CHANNELS if Subscription(symbol, c) in self._subscriptions]

    def _replies(self, subs: Iterable[Subscription]) -> dict[str, Reply]:
        replies = {}
        for sub in subs:
            for topic in self._subscriptions.get(sub, ()):
                runner = self.placement.owner(topic)
                reply = runner.replies.get(topic.name) if runner is not None else None
                if reply is not None:
                    replies[topic.name] = reply
        return replies

    def state_of(self, sub: Subscription) -> SubscriptionState:
        """``active`` once the venue acknowledged every topic, ``refused`` if it refused one;
        ``delisted`` whatever the venue said, once its instrument list lacks the symbol."""
        if sub.symbol in self._delisted:
            return "delisted"
        replies = self._replies([sub]).values()
        if any(r.error is not None for r in replies):
            return "refused"
        return "active" if all(r.done.is_set() for r in replies) else "pending"

    async def _await_ready(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await self.ready.wait()
        if not self.ready.is_set():
            raise NoAnswer(
                f"{self.venue_id}: the instrument list from {self.rest_url} is still loading; try again"
            )

    async def _await_replies(self, replies: Mapping[str, Reply], deadline: float, what: str) -> None:
        with trio.move_on_at(deadline):
            for reply in replies.values():
                await reply.done.wait()
        pending = sorted(name for name, reply in replies.items() if not reply.done.is_set())
        if pending:
            last = f" (last error: {self.status.last_error})" if self.status.last_error else ""
            raise NoAnswer(
                f"{self.venue_id}: no answer from the exchange to {what} {', '.join(pending)} "
                f"in time{last}",
                pending,
            )

    async def subscribe_confirmed(
        self, symbol: str, channels: Iterable[Channel], deadline: float
    ) -> list[Subscription]:
        """Subscribe and wait until the venue acknowledged every topic; the new subscriptions.

        Idempotent: subscriptions that exist already are awaited the same way. A refusal rolls
        the refused subscriptions back and raises VenueRefused with the venue's reason; no answer
        by ``deadline`` (trio clock) raises NoAnswer, and the subscription stays, retried on
        every reconnect; an unsubscribe of the symbol meanwhile raises Superseded. Waits for the
        instrument list first, then raises UnknownSymbol for a symbol it lacks (without marking
        the venue's status: the caller is told).
        """
        await self._await_ready(deadline)
        symbol = self.check(symbol)
        channels = list(dict.fromkeys(channels))
        added = self.subscribe(symbol, channels)
        subs = [Subscription(symbol, c) for c in channels]
        replies = self._replies(subs)
        await self._await_replies(replies, deadline, "the subscription of")
        refused = {name: r.error for name, r in replies.items() if r.error is not None}
        if refused:
            topics = {sub: self._subscriptions.get(sub, []) for sub in subs}
            rollback = [sub.channel for sub in subs if any(t.name in refused for t in topics[sub])]
            if rollback:
                self._unsubscribe(symbol, rollback)
            for name in refused:
                self.status.subscription_errors.pop(name, None)
            reasons = "; ".join(f"{name}: {error}" for name, error in sorted(refused.items()))
            raise VenueRefused(f"{self.venue_id} refused {symbol}: {reasons}")
        if any(r.withdrawn for r in replies.values()):
            # nothing to roll back: the unsubscribe removed it (or a later subscribe owns it now)
            raise Superseded(
                f"{self.venue_id}: {symbol} was unsubscribed while the subscribe was pending; "
                "nothing was refused"
            )
        return added

    async def unsubscribe_confirmed(
        self, symbol: str, channels: Iterable[Channel] | None, deadline: float
    ) -> list[Subscription]:
        """Unsubscribe (every channel of ``symbol`` when ``channels`` is None) and wait until the
        venue confirmed; NotSubscribed when nothing was, NoAnswer when no answer came in time
        (the stream is gone from our side all the same)."""
        symbol = self.normalize(symbol)
        wanted = self.channels_of(symbol) if channels is None else list(channels)
        if not wanted:
            self._awaiting_listing.pop(symbol, None)  # not to be subscribed later either
            raise NotSubscribed(f"{self.venue_id}: {symbol} is not subscribed")
        removed, replies = self._unsubscribe(symbol, wanted)
        await self._await_replies(replies, deadline, "the unsubscription of")
        return removed

    def _place(self, topic: Topic) -> None:
        """Carry ``topic`` on the first connection of its route with room for it, by the venue's
        topic count and, if it states one, its character budget; else on a new connection."""
        runner = self.placement.place(topic, self._start_runner)
        if runner is not None:
            runner.add_topics([topic.name])

    def _displace(self, topic: Topic) -> Reply | None:
        """Release ``topic``; the venue's answer to its unsubscribe, if one was sent and matters.

        A connection left without topics is closed instead, which needs no answer.
        """
        released = self.placement.release(topic)
        if released is None:
            return None
        runner = released.carrier
        runner.remove_topics([topic.name])
        if released.close:
            self._scopes.pop(runner).cancel()
            self.status.connections.pop(runner.name, None)
            return None
        return runner.replies.get(topic.name)

    def _start_runner(self, route: str) -> ConnectionRunner:
        if self._nursery is None:
            raise RuntimeError("the venue supervisor is not running")
        index = self._shard_count[route] = self._shard_count.get(route, 0) + 1
        name = f"{self.venue_id}/{route or 'stream'}#{index}"
        url = self.venue.url(route, self.base_url)
        way = self.route(url)
        runner = ConnectionRunner(
            venue=self.venue,
            url=url,
            name=name,
            topics=(),
            settings=self.settings,
            status=self.status,
            records=self._records,
            validator=self._validator,
            open_transport=(
                self._open if way.proxy is None else functools.partial(self._open, proxy=way.proxy)
            ),
            send_limiter=self._shared_limiter(url),
            rotate_after=self.rotate_after,
            rotate_offset=self._rotate_offset(sum(self._shard_count.values())),
            conflator=self.conflator,
            backfill=self.backfill,
            symbols=lambda: self._symbols_on(runner),
            gate=self._gate(url),
            tap=None if self._tap is None else self._tap.connection(self.venue, name, url),
        )
        runner.conn.proxy = way.describe()
        scope = trio.CancelScope()
        self._scopes[runner] = scope
        self._nursery.start_soon(self._supervise, runner, scope, name=name)
        return runner

    def _rotate_offset(self, number: int) -> float:
        """Shards rotate one after another, not all at once: the ``number``-th connection of the
        venue rotates a little later than the one before (a minute apart at Binance's 23.5 h,
        wrapping within 20 minutes, so every one still comes before the venue's 24 h cut)."""
        lifetime = self.rotate_after
        if lifetime is None:
            return 0.0
        spacing = min(60.0, lifetime / 16)
        return ((number - 1) * spacing) % min(lifetime / 2, 1200.0)

    def _symbols_on(self, runner: ConnectionRunner) -> list[str]:
        """The symbols with a stream on ``runner`` (for its disconnect and reconnect events)."""
        return sorted({
            sub.symbol
            for sub, topics in self._subscriptions.items()
            if any(self.placement.owner(topic) is runner for topic in topics)
        })

    def _shared_limiter(self, url: str) -> SlidingWindowLimiter | None:
        """The send budget a connection to ``url`` shares with the venue's others to its host, when
        the venue counts messages per address; None when it counts per connection."""
        if self.venue.message_limit_scope != "address":
            return None
        host = urlsplit(url).hostname or url
        limiter = self._limiters.get(host)
        if limiter is None:
            limiter = self._limiters[host] = send_limiter(self.venue, shared=True)
        return limiter

    def _gate(self, url: str) -> Gate:
        """The handshake gate of a connection to ``url``, whose host the status then shows."""
        gate = self._gates.gate(url, self.venue_id, self.venue.connect_limit, self.status.handshakes)
        self.status.hosts[gate.host.host] = gate.host
        return gate

    @staticmethod
    async def _supervise(runner: ConnectionRunner, scope: trio.CancelScope) -> None:
        with scope:
            await runner.run()
