"""No trade lost across a gap: trade-id continuity per symbol, and the REST backfill of a break.

Binance numbers each symbol's trades one by one (``t`` on ``@trade``, ``a`` on ``@aggTrade``), so
the first trade after a reconnect, or a jump in a live stream, names exactly the trades missed.
A venue that says so (:class:`~feedd.exchanges.base.TradeHistory`) gets a :class:`Backfiller`:
the connection readers pass it their validated records (:meth:`Backfiller.sift`, a dict lookup
and a compare per trade), and it

- drops a trade whose id was already delivered (a rotation's overlap, a replayed frame), so each
  trade reaches consumers once;
- on a jump, holds that symbol's live trades (its other records and every other symbol go on)
  and fetches the missing ids from the venue's REST in a task of its own, paced by the venue's
  ``history_rate``, paging ``history_page`` trades at a time, at most ``backfill_max`` per gap;
- delivers, in id order, a ``backfill`` event saying what was recovered and lost (and why),
  the recovered trades (``backfilled`` set), then the held live ones.

The hold is bounded: after ``backfill_hold`` seconds (or ``MAX_HELD`` held trades) the live
trades go on, and what the REST gives later still follows, its event marked ``late``. A dead or
slow REST endpoint therefore delays only the held symbol, and never beyond the bound; a gap whose
trades are older than ``backfill_max_age`` is not fetched (the REST keeps little history) and is
reported lost.

A venue whose ids are not consecutive (:class:`~feedd.exchanges.base.RecentTrades`: Bybit, OKX,
Coinbase Advanced Trade) is recovered by time instead. Its readers' cost stays one dict store per
trade (the symbol's last trade delivered, the *anchor*); the connection says when it broke
(:meth:`Backfiller.broken`: a reconnect after a disconnect, or the venue's message sequence
skipped), and the symbol's next trade then holds it and asks the REST for its latest trades.
What lies after the anchor in the REST's exchange order, up to the newest trade held, is the
break's: the held live trades take their places in that order (so duplicates are dropped by trade
id, against the ids held) and the others are delivered ``backfilled``. Where the REST no longer
has the anchor (it keeps only the latest few hundred), the trades after the anchor's time are
taken, and the event says older ones may be lost; what was lost is not counted (those ids say
nothing), and ``missing`` is ``[0, 0]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import attrs
import httpx
import trio

from feedd.errors import describe, excerpt
from feedd.exchanges.base import RecentTrades, TradeHistory
from feedd.feed.ratelimit import SlidingWindowLimiter
from feedd.feed.status import VenueStatus
from feedd.feed.validate import Validator
from feedd.model import TRADE, Backfilled, Batch, Ingress, MarketData

log = logging.getLogger(__name__)

#: live trades held per symbol at most while its backfill runs; past it they go on (late)
MAX_HELD = 100_000
#: seconds one history request may take
REST_TIMEOUT = 10.0
#: seconds a whole gap's fetch may take before the rest counts as lost
FETCH_DEADLINE = 60.0


@attrs.frozen
class BackfillSettings:
    """``[feed] backfill_max`` (0: fetch nothing, report gaps as lost), ``backfill_hold`` and
    ``backfill_max_age`` (seconds)."""

    max_trades: int = 10_000
    hold: float = 2.0
    max_age: float = 600.0


@attrs.define
class _Hold:
    """One symbol's trades held while its gaps are fetched."""

    #: live trades received since the first gap, in id order
    live: Batch = attrs.Factory(list)
    #: recovered trades and the events saying so, not yet delivered
    fetched: Batch = attrs.Factory(list)
    events: list[Backfilled] = attrs.Factory(list)
    #: gaps still being fetched
    pending: int = 0
    #: the hold ended (all fetched, or the bound passed): later fetches are delivered as late
    released: bool = False
    #: ``fetched`` is in exchange order already (a recovery by time), not to be sorted by id
    ordered: bool = False
    #: trade ids of the live trades held (recovery by time: the ones the REST's answer repeats)
    seen: set[str] = attrs.Factory(set)


class Backfiller:
    """One venue's trade-id tracker and gap fetcher (see the module docstring)."""

    def __init__(
        self,
        venue: TradeHistory | RecentTrades,
        venue_id: str,
        rest_url: str,
        records: trio.MemorySendChannel[Ingress],
        status: VenueStatus,
        validator: Validator,
        settings: BackfillSettings,
        client: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        self.venue = venue
        #: makes the REST client, through the venue's proxy (feed.instruments.rest_client)
        self._make_client = client or (lambda: httpx.AsyncClient(timeout=REST_TIMEOUT))
        self.venue_id = venue_id
        self.rest_url = rest_url.rstrip("/")
        self.settings = settings
        self._records = records
        self._status = status
        self._validator = validator
        #: per symbol, the last trade id delivered and its exchange time
        self._last: dict[str, tuple[int, datetime]] = {}
        self._held: dict[str, _Hold] = {}
        #: recovery by time: per symbol the last trade delivered, and the symbols whose
        #: connection broke since, with the trade delivered last before the break
        self._anchor: dict[str, MarketData] = {}
        self._broken: dict[str, MarketData] = {}
        self._by_id = isinstance(venue, TradeHistory)
        #: the readers' entry (see the module docstring): by trade id, or by time
        self.sift: Callable[[Batch], Batch] = self._sift_ids if self._by_id else self._sift_times
        rate = venue.history_rate if isinstance(venue, TradeHistory) else venue.recent_rate
        self._limiter = SlidingWindowLimiter(max(1, round(rate)), 1.0)
        self._nursery: trio.Nursery | None = None
        self._http: httpx.AsyncClient | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Where the fetch tasks run: the venue's nursery (cancelled with it)."""
        self._nursery = nursery

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def forget(self, symbol: str) -> None:
        """The symbol's trades were unsubscribed: a later subscribe starts afresh, not with a
        backfill of everything since."""
        self._last.pop(symbol, None)
        self._anchor.pop(symbol, None)
        self._broken.pop(symbol, None)

    def broken(self, symbols: Iterable[str]) -> None:
        """The connection carrying ``symbols`` broke (a reconnect after a disconnect, or the
        venue's message sequence skipped): trades may be missing after each one's last. Venues
        with consecutive ids need not be told (their ids say it); for the others, each symbol's
        next trade starts a recovery by time."""
        if self._by_id:
            return
        anchors, held = self._anchor, self._held
        for symbol in symbols:
            anchor = anchors.get(symbol)
            if anchor is not None and symbol not in held:
                self._broken.setdefault(symbol, anchor)

    def holding(self, symbol: str) -> bool:
        return symbol in self._held

    # ---- the readers' side (synchronous, per batch) -------------------------------------------

    def _sift_ids(self, records: Batch) -> Batch:
        """The records to deliver now, in order: duplicates dropped, a held symbol's trades kept
        back, a jump's fetch started.

        A batch is mostly one symbol's trades: its last id, time and hold stay in locals while
        the symbol does not change, and go back to the dict when it does and at the end (a dict
        lookup, a tuple and a store per trade were ~0.15 µs of the ~0.35 this takes a trade).
        """
        last_of = self._last
        held = self._held
        out: Batch = []
        keep = out.append
        symbol: str | None = None  # whose state the next three hold
        number_at = 0
        time_at: datetime | None = None  # None: no trade of the symbol seen yet
        hold: _Hold | None = None
        for record in records:
            trade_id = record.trade_id
            if trade_id is None or record.kind != TRADE:
                keep(record)
                continue
            try:
                number = int(trade_id)
            except ValueError:
                keep(record)
                continue
            if record.symbol != symbol:
                if symbol is not None and time_at is not None:
                    last_of[symbol] = (number_at, time_at)
                symbol = record.symbol
                number_at, time_at = last_of.get(symbol, (0, None))
                hold = held.get(symbol)
            if time_at is not None:
                if number <= number_at:
                    self._status.duplicates += 1
                    continue
                if number > number_at + 1:
                    self._gap(symbol, number_at + 1, number - 1, time_at, record.timestamp)
                    hold = held.get(symbol)  # the gap may have started one
            number_at = number
            time_at = record.timestamp
            if hold is None:
                keep(record)
            else:
                hold.live.append(record)
                if len(hold.live) >= MAX_HELD and not hold.released:
                    self._start(self._release, symbol, hold, "held trades at their bound")
        if symbol is not None and time_at is not None:
            last_of[symbol] = (number_at, time_at)
        return out

    def _gap(self, symbol: str, first: int, last: int, before: datetime, after: datetime) -> None:
        missing = last - first + 1
        settings = self.settings
        reason: str | None = None
        if settings.max_trades <= 0:
            reason = "backfill is off ([feed] backfill_max = 0)"
        elif after - before > timedelta(seconds=settings.max_age):
            reason = f"older than backfill_max_age ({settings.max_age:g} s)"
        if reason is not None or self._nursery is None:
            self._report(symbol, first, last, 0, missing, reason or "the venue is not running", late=False)
            if self._nursery is not None:
                self._start(self._send, Backfilled(
                    self.venue_id, (symbol,), datetime.now(UTC), 0, missing, (first, last), reason
                ))
            return
        hold = self._held.get(symbol)
        if hold is None:
            hold = self._held[symbol] = _Hold()
            self._start(self._bound, symbol, hold)
        # a hold already released (still draining) takes the gap too: its trades come late
        hold.pending += 1
        self._start(self._recover, symbol, first, last, hold)

    def _sift_times(self, records: Batch) -> Batch:
        """:meth:`sift` for a venue recovered by time: each trade noted as its symbol's anchor;
        the first trade of a broken symbol holds it and starts the recovery."""
        anchors = self._anchor
        held = self._held
        broken = self._broken
        out: Batch = []
        keep = out.append
        for record in records:
            if record.kind != TRADE:
                keep(record)
                continue
            symbol = record.symbol
            if held or broken:
                anchor = broken.pop(symbol, None)
                if anchor is not None:
                    self._break(symbol, anchor, record)
                hold = held.get(symbol)
                if hold is not None:
                    trade_id = record.trade_id
                    if trade_id is not None:
                        if trade_id in hold.seen:
                            self._status.duplicates += 1
                            continue
                        hold.seen.add(trade_id)
                    anchors[symbol] = record
                    hold.live.append(record)
                    if len(hold.live) >= MAX_HELD and not hold.released:
                        self._start(self._release, symbol, hold, "held trades at their bound")
                    continue
            anchors[symbol] = record
            keep(record)
        return out

    def _break(self, symbol: str, anchor: MarketData, first: MarketData) -> None:
        """A broken symbol's first trade since: hold it and fetch the REST's latest trades."""
        settings = self.settings
        reason: str | None = None
        if settings.max_trades <= 0:
            return  # backfill is off: nothing to fetch, and what was lost is not known
        if first.timestamp - anchor.timestamp > timedelta(seconds=settings.max_age):
            reason = f"older than backfill_max_age ({settings.max_age:g} s)"
        if reason is not None or self._nursery is None:
            if self._nursery is not None:
                log.warning("%s: %s: a break of %s not recovered (%s)", self.venue_id, symbol,
                            first.timestamp - anchor.timestamp, reason)
                self._start(self._send, Backfilled(
                    self.venue_id, (symbol,), datetime.now(UTC), 0, 0, (0, 0), reason
                ))
            return
        hold = self._held[symbol] = _Hold(ordered=True, pending=1)
        self._start(self._bound, symbol, hold)
        self._start(self._recover_times, symbol, anchor, hold)

    def _start(self, fn: object, *args: object) -> None:
        nursery = self._nursery
        assert nursery is not None
        nursery.start_soon(fn, *args)  # type: ignore[arg-type]

    # ---- the tasks ------------------------------------------------------------------------------

    async def _send(self, item: Ingress) -> None:
        await self._records.send(item)

    async def _bound(self, symbol: str, hold: _Hold) -> None:
        await trio.sleep(self.settings.hold)
        if not hold.released:
            await self._release(symbol, hold, f"backfill_hold ({self.settings.hold:g} s) passed")

    async def _recover(self, symbol: str, first: int, last: int, hold: _Hold) -> None:
        recovered, reason = await self._fetch(symbol, first, last)
        missing = last - first + 1
        lost = missing - len(recovered)
        late = hold.released
        event = Backfilled(
            self.venue_id, (symbol,), datetime.now(UTC), len(recovered), lost, (first, last),
            reason if lost else None, late,
        )
        self._report(symbol, first, last, len(recovered), lost, reason, late=late)
        hold.pending -= 1
        if late:
            # the live trades went on: these follow them, flagged by the event's ``late``
            await self._records.send(event)
            if recovered:
                await self._records.send(recovered)
            return
        hold.events.append(event)
        hold.fetched.extend(recovered)
        if hold.pending == 0:
            await self._release(symbol, hold, None)

    async def _recover_times(self, symbol: str, anchor: MarketData, hold: _Hold) -> None:
        latest, reason = await self._fetch_recent(symbol)
        window, incomplete = self._window(latest, anchor, hold)
        seen = hold.seen
        recovered = [attrs.evolve(r, backfilled=True) for r in window if r.trade_id not in seen]
        if incomplete and reason is None:
            reason = (f"the REST keeps only its latest {len(latest)} trades: older ones of the break "
                      "may be lost")
        late = hold.released
        event = Backfilled(self.venue_id, (symbol,), datetime.now(UTC), len(recovered), 0, (0, 0),
                           reason, late)
        self._status.backfilled += len(recovered)
        if reason is not None:
            log.warning("%s: %s: a break recovered %d trade(s) (%s)", self.venue_id, symbol,
                        len(recovered), reason)
        else:
            log.info("%s: %s: a break recovered %d trade(s)%s", self.venue_id, symbol, len(recovered),
                     " (after the live trades that followed them)" if late else "")
        hold.pending -= 1
        if late:
            await self._records.send(event)
            if recovered:
                await self._records.send(recovered)
            return
        # the live trades held take their places in the REST's order; the others follow them
        live = {r.trade_id: r for r in hold.live}
        placed = [live.get(r.trade_id) or attrs.evolve(r, backfilled=True) for r in window]
        taken = {r.trade_id for r in window}
        hold.live = [r for r in hold.live if r.trade_id not in taken]
        hold.events.append(event)
        hold.fetched.extend(placed)
        await self._release(symbol, hold, None)

    @staticmethod
    def _window(latest: Batch, anchor: MarketData, hold: _Hold) -> tuple[Batch, bool]:
        """The trades of ``latest`` (exchange order) after ``anchor`` up to the newest one held;
        and whether the REST no longer has the anchor (older trades of the break may be gone)."""
        if not latest:
            return [], False
        start = None
        for index in range(len(latest) - 1, -1, -1):
            if latest[index].trade_id == anchor.trade_id:
                start = index + 1
                break
        incomplete = start is None
        if start is None:
            after = anchor.timestamp
            start = next((i for i, r in enumerate(latest) if r.timestamp > after), len(latest))
            incomplete = latest[0].timestamp > after  # the REST's oldest is newer than the anchor
        seen = hold.seen
        end = None
        for index in range(len(latest) - 1, start - 1, -1):
            if latest[index].trade_id in seen:
                end = index + 1
                break
        if end is None:
            # none of the held trades is in the answer yet: the ones no later than the first held
            first = hold.live[0].timestamp if hold.live else None
            return [r for r in latest[start:] if first is None or r.timestamp <= first], incomplete
        return latest[start:end], incomplete

    async def _fetch_recent(self, symbol: str) -> tuple[Batch, str | None]:
        """The REST's latest trades of ``symbol`` (at most ``backfill_max``), valid ones, in
        exchange order; and why there are none (None: the REST answered)."""
        venue = self.venue
        assert isinstance(venue, RecentTrades)
        limit = max(1, min(venue.recent_page, self.settings.max_trades))
        http = self._client()
        page: Batch = []
        reason: str | None = None
        with trio.move_on_after(FETCH_DEADLINE) as deadline:
            await self._limiter.acquire()
            try:
                response = await http.get(self.rest_url + venue.recent_path(symbol, limit))
            except httpx.HTTPError as exc:
                return [], f"REST unavailable: {describe(exc)}"
            if response.status_code != 200:
                return [], (f"REST refused: HTTP {response.status_code} "
                            f"{excerpt(response.text, 120)}").rstrip()
            try:
                page = venue.parse_recent(symbol, response.json(), datetime.now(UTC))
            except ValueError as exc:
                return [], f"bad REST answer: {exc}"
        if deadline.cancelled_caught:
            return [], f"REST too slow: the fetch took over {FETCH_DEADLINE:g} s"
        check = self._validator.historical_reason
        rejected = self._status.rejected
        out: Batch = []
        for record in page:
            why = check(record)
            if why is None:
                out.append(record)
            else:
                rejected[why] += 1
        return out, reason

    async def _release(self, symbol: str, hold: _Hold, why: str | None) -> None:
        """Deliver what the hold has, in id order, then let the symbol's trades through.

        The symbol stays held while the sends wait for room in the hub, so live trades read
        meanwhile queue behind the ones being sent, never ahead of them.
        """
        if hold.released:
            return
        hold.released = True
        if why is not None and hold.pending:
            log.warning("%s: %s: %s; live trades go on, the backfill follows", self.venue_id, symbol, why)
        events, hold.events = hold.events, []
        fetched = hold.fetched if hold.ordered else sorted(hold.fetched, key=lambda r: int(r.trade_id or 0))
        hold.fetched = []
        for event in events:
            await self._records.send(event)
        batch, hold.live = fetched + hold.live, []
        while batch:
            await self._records.send(batch)
            batch, hold.live = hold.live, []
        if self._held.get(symbol) is hold:
            del self._held[symbol]

    async def _fetch(self, symbol: str, first: int, last: int) -> tuple[Batch, str | None]:
        """The trades ``first``..``last`` from the venue's REST, at most ``backfill_max``; and
        why the rest are missing (None: none is)."""
        venue = self.venue
        assert isinstance(venue, TradeHistory)
        wanted = min(last - first + 1, self.settings.max_trades)
        out: Batch = []
        next_id = first
        reason: str | None = None
        http = self._client()
        with trio.move_on_after(FETCH_DEADLINE) as deadline:
            while len(out) < wanted:
                await self._limiter.acquire()
                limit = min(venue.history_page, wanted - len(out))
                url = self.rest_url + venue.history_path(symbol, next_id, limit)
                try:
                    response = await http.get(url)
                except httpx.HTTPError as exc:
                    reason = f"REST unavailable: {describe(exc)}"
                    break
                now = datetime.now(UTC)
                if response.status_code != 200:
                    reason = (f"REST refused: HTTP {response.status_code} "
                              f"{excerpt(response.text, 120)}").rstrip()
                    break
                try:
                    page = venue.parse_history(symbol, response.json(), now)
                except ValueError as exc:
                    reason = f"bad REST answer: {exc}"
                    break
                got = self._usable(page, next_id, last)
                if not got:
                    reason = f"REST has no trades from id {next_id} on (too old for it)"
                    break
                if int(got[0].trade_id or 0) != next_id:
                    # the venue no longer keeps the oldest ones: what it has is still delivered
                    reason = f"REST has trades only from id {got[0].trade_id} on"
                out.extend(got)
                next_id = int(got[-1].trade_id or 0) + 1
                if next_id > last:
                    break
        if deadline.cancelled_caught:
            reason = f"REST too slow: the fetch took over {FETCH_DEADLINE:g} s"
        if reason is None and len(out) < last - first + 1:
            reason = f"more than backfill_max ({self.settings.max_trades}) trades missed"
        return out, reason

    def _usable(self, page: Batch, first: int, last: int) -> Batch:
        """The page's valid trades with ids ``first``..``last``, flagged ``backfilled``."""
        check = self._validator.historical_reason
        rejected = self._status.rejected
        out: Batch = []
        for record in page:
            try:
                number = int(record.trade_id or "")
            except ValueError:
                continue
            if not first <= number <= last:
                continue
            reason = check(record)
            if reason is not None:
                rejected[reason] += 1
                continue
            out.append(attrs.evolve(record, backfilled=True))
        return out

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = self._make_client()
        return self._http

    def _report(self, symbol: str, first: int, last: int, recovered: int, lost: int,
                reason: str | None, *, late: bool) -> None:
        status = self._status
        status.backfilled += recovered
        status.lost_trades += lost
        ids = f"trades {first}-{last}" if first != last else f"trade {first}"
        if lost:
            log.warning("%s: %s: %s missed; recovered %d, lost %d (%s)", self.venue_id, symbol, ids,
                        recovered, lost, reason)
        else:
            log.info("%s: %s: %s missed; all %d recovered%s", self.venue_id, symbol, ids, recovered,
                     " (after the live trades that followed them)" if late else "")


def backfiller_for(
    venue: object,
    venue_id: str,
    rest_url: str,
    records: trio.MemorySendChannel[Ingress],
    status: VenueStatus,
    validator: Validator,
    settings: BackfillSettings,
    client: Callable[[], httpx.AsyncClient] | None = None,
) -> Backfiller | None:
    """A backfiller if the venue's trade ids are consecutive and its REST has them, or its REST
    gives its latest trades (recovery by time); else None."""
    if not isinstance(venue, TradeHistory | RecentTrades):
        return None
    return Backfiller(venue, venue_id, rest_url, records, status, validator, settings, client)
