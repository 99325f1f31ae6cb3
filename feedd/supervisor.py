"""One venue's supervisor: turns subscriptions into topics, topics into connections (shards).

It owns the venue's nursery; every connection runner lives there, so one venue failing never
disturbs another venue or the sinks, and adding a subscription at run time starts or reuses a
connection without reconnecting the others.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

import trio

from feedd.config import ExchangeConfig
from feedd.connection import ConnectionRunner, RunnerSettings
from feedd.exchanges.base import Channel, Subscription, Topic, Venue
from feedd.instruments import Instruments, load_instruments
from feedd.model import Batch
from feedd.status import VenueStatus
from feedd.transport import OpenTransport, open_transport
from feedd.validate import Validator

log = logging.getLogger(__name__)


class SubscriptionRefused(Exception):
    """A subscription the daemon will not make; the message names venue and symbol."""


class UnknownSymbol(SubscriptionRefused):
    pass


class NotSubscribed(SubscriptionRefused):
    pass


class VenueSupervisor:
    def __init__(
        self,
        venue: Venue,
        config: ExchangeConfig,
        settings: RunnerSettings,
        *,
        cache_dir: str,
        records: trio.MemorySendChannel[Batch],
        status: VenueStatus | None = None,
        open_transport: OpenTransport = open_transport,
    ) -> None:
        self.venue = venue
        venue.quote_max_age = config.quote_max_age
        self.config = config
        self.settings = settings
        self.cache_dir = cache_dir
        self.status = status or VenueStatus(venue.venue_id)
        self.instruments = Instruments(None, "unchecked")
        self.base_url = config.url or venue.default_url
        self.rest_url = config.rest_url or venue.default_rest_url
        self._records = records
        self._open = open_transport
        self._subscriptions: dict[Subscription, list[Topic]] = {}
        self._symbols: set[str] = set()
        self._validator = Validator(self._symbols)
        self._runners: dict[str, list[ConnectionRunner]] = {}
        self._scopes: dict[ConnectionRunner, trio.CancelScope] = {}
        self._owner: dict[Topic, ConnectionRunner] = {}
        #: subscriptions using each wire topic: channels of one exchange may share a topic, and
        #: the topic leaves the wire only when the last of them is unsubscribed
        self._refs: Counter[Topic] = Counter()
        self._nursery: trio.Nursery | None = None
        self._shard_count: dict[str, int] = {}

    @property
    def venue_id(self) -> str:
        return self.venue.venue_id

    def subscriptions(self) -> list[Subscription]:
        return sorted(self._subscriptions, key=lambda s: (s.symbol, s.channel))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report started, check symbols, open the configured subscriptions, supervise until cancelled.

        Started comes first: the instrument list may take up to its REST timeout, and only this
        venue waits for it (the fetch is cancelled with the venue).
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            if self.config.check_symbols:
                self.instruments = await load_instruments(self.venue, self.rest_url, self.cache_dir)
            for symbol in self.config.symbols:
                try:
                    self.subscribe(symbol, self.config.channels)
                except SubscriptionRefused as exc:
                    log.error("%s", exc)
            await trio.sleep_forever()

    # ---- subscriptions ------------------------------------------------------------------

    def normalize(self, symbol: str) -> str:
        return symbol.upper() if self.venue.uppercase_symbols else symbol

    def subscribe(self, symbol: str, channels: Iterable[Channel]) -> list[Subscription]:
        """Subscribe live; returns the subscriptions that were new. Raises UnknownSymbol."""
        symbol = self.normalize(symbol)
        known = self.instruments.symbols
        if known is not None and symbol not in known:
            reason = f"unknown symbol {symbol!r}: not listed by {self.rest_url}"
            self.status.subscription_errors[symbol] = reason
            self.status.last_error = f"{self.venue_id}: {reason}"
            raise UnknownSymbol(f"{self.venue_id}: {reason}")
        added = []
        for channel in dict.fromkeys(channels):
            sub = Subscription(symbol, channel)
            if sub in self._subscriptions:
                continue
            topics = self.venue.topics(sub)
            self._subscriptions[sub] = topics
            added.append(sub)
            for topic in topics:
                self._place(topic)
        if added:
            self._symbols.add(symbol)
            self.status.subscription_errors.pop(symbol, None)
        return added

    def unsubscribe(self, symbol: str, channels: Iterable[Channel]) -> list[Subscription]:
        """Unsubscribe live; raises NotSubscribed when none of the channels was subscribed."""
        symbol = self.normalize(symbol)
        removed = []
        for channel in dict.fromkeys(channels):
            sub = Subscription(symbol, channel)
            topics = self._subscriptions.pop(sub, None)
            if topics is None:
                continue
            removed.append(sub)
            for topic in topics:
                self._displace(topic)
        if not removed:
            raise NotSubscribed(f"{self.venue_id}: {symbol} is not subscribed to {', '.join(channels)}")
        if not any(s.symbol == symbol for s in self._subscriptions):
            self._symbols.discard(symbol)
        return removed

    def _place(self, topic: Topic) -> None:
        self._refs[topic] += 1
        if topic in self._owner:
            return
        shards = self._runners.setdefault(topic.route, [])
        limit = self.venue.max_streams_per_connection
        runner = next((r for r in shards if len(r.topics) < limit), None)
        if runner is None:
            runner = self._start_runner(topic.route)
            shards.append(runner)
        runner.add_topics([topic.name])
        self._owner[topic] = runner

    def _displace(self, topic: Topic) -> None:
        self._refs[topic] -= 1
        if self._refs[topic] > 0:
            return
        del self._refs[topic]
        runner = self._owner.pop(topic, None)
        if runner is None:
            return
        runner.remove_topics([topic.name])
        if not runner.topics:
            self._runners[topic.route].remove(runner)
            self._scopes.pop(runner).cancel()
            self.status.connections.pop(runner.name, None)

    def _start_runner(self, route: str) -> ConnectionRunner:
        if self._nursery is None:
            raise RuntimeError("the venue supervisor is not running")
        index = self._shard_count[route] = self._shard_count.get(route, 0) + 1
        name = f"{self.venue_id}/{route or 'stream'}#{index}"
        runner = ConnectionRunner(
            venue=self.venue,
            url=self.venue.url(route, self.base_url),
            name=name,
            topics=(),
            settings=self.settings,
            status=self.status,
            records=self._records,
            validator=self._validator,
            open_transport=self._open,
        )
        scope = trio.CancelScope()
        self._scopes[runner] = scope
        self._nursery.start_soon(self._supervise, runner, scope, name=name)
        return runner

    @staticmethod
    async def _supervise(runner: ConnectionRunner, scope: trio.CancelScope) -> None:
        with scope:
            await runner.run()
