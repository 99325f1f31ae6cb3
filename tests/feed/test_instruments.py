"""Instrument lists: every page of a venue's list, the on-disk cache as fallback, and the keeper
that starts a venue without waiting long on REST and keeps its list fresh."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
import trio
import trio.testing

from feedd.config import ExchangeConfig
from feedd.control.report import by_symbol
from feedd.errors import NotSubscribed
from feedd.exchanges.base import InstrumentPage, Subscription
from feedd.exchanges.binance import BinanceSpot
from feedd.feed import instruments
from feedd.feed.gates import DEFAULT_BAN, DEFAULT_RETRY_AFTER
from feedd.feed.instruments import InstrumentKeeper, Instruments, KeeperSettings, load_instruments
from feedd.feed.runner import RunnerSettings
from feedd.feed.supervisor import VenueSupervisor
from feedd.wire.transport import Transport

REAL_CLIENT = httpx.AsyncClient


class PagedVenue(BinanceSpot):
    """A venue whose list comes in pages chained by a cursor, as Bybit's does."""

    def instruments_path(self, cursor: str | None = None) -> str:
        return "/list" + (f"?cursor={cursor}" if cursor else "")

    def parse_instruments(self, body: Any) -> InstrumentPage:
        return InstrumentPage(frozenset(body["symbols"]), body["next"] or None)


def serve(monkeypatch: pytest.MonkeyPatch, pages: dict[str, dict[str, Any]]) -> list[str]:
    """Answer the instrument requests from ``pages`` (keyed by cursor); returns the cursors asked."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = parse_qs(urlsplit(str(request.url)).query).get("cursor", [""])[0]
        asked.append(cursor)
        return httpx.Response(200, json=pages[cursor])

    def client(**kwargs: Any) -> httpx.AsyncClient:
        return REAL_CLIENT(transport=httpx.MockTransport(handler), **kwargs)

    monkeypatch.setattr(instruments.httpx, "AsyncClient", client)
    return asked


async def test_every_page_of_the_list_is_fetched_by_its_cursor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    asked = serve(monkeypatch, {
        "": {"symbols": ["A", "B"], "next": "p2"},
        "p2": {"symbols": ["C"], "next": "p3"},
        "p3": {"symbols": ["D"], "next": ""},
    })
    found = await load_instruments(PagedVenue(), "http://rest", str(tmp_path))
    assert found.symbols == frozenset("ABCD")
    assert found.source == "rest"
    assert asked == ["", "p2", "p3"]


async def test_a_cursor_that_repeats_is_a_bad_list_and_the_cache_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve(monkeypatch, {"": {"symbols": ["A"], "next": ""}})
    await load_instruments(PagedVenue(), "http://rest", str(tmp_path))  # fills the cache
    serve(monkeypatch, {"": {"symbols": ["A", "B"], "next": "p2"}, "p2": {"symbols": ["C"], "next": "p2"}})
    found = await load_instruments(PagedVenue(), "http://rest", str(tmp_path))
    assert found.source == "cache" and found.symbols == frozenset("A")
    assert "repeats its page cursor 'p2'" in (found.error or "")


async def test_an_error_without_text_still_says_what_happened(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("", request=request)

    monkeypatch.setattr(
        instruments.httpx, "AsyncClient",
        lambda **kwargs: REAL_CLIENT(transport=httpx.MockTransport(handler), **kwargs),
    )
    found = await load_instruments(PagedVenue(), "http://rest", str(tmp_path))
    assert found.source == "unavailable"
    assert found.error is not None and found.error.endswith("unavailable: ReadTimeout")


class PostedVenue(PagedVenue):
    """A venue whose pages are asked for by POSTing a body (Hyperliquid's ``info``)."""

    def instruments_path(self, cursor: str | None = None) -> str:
        return "/info"

    def instruments_body(self, cursor: str | None = None) -> dict[str, str]:
        return {"page": cursor or ""}


async def test_a_venue_with_a_request_body_has_every_page_posted_with_its_body(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pages = {"": {"symbols": ["A"], "next": "p2"}, "p2": {"symbols": ["B"], "next": ""}}
    asked: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.append((request.method, request.url.path, body))
        return httpx.Response(200, json=pages[body["page"]])

    def client(**kwargs: Any) -> httpx.AsyncClient:
        return REAL_CLIENT(transport=httpx.MockTransport(handler), **kwargs)

    monkeypatch.setattr(instruments.httpx, "AsyncClient", client)
    found = await load_instruments(PostedVenue(), "http://rest", str(tmp_path))
    assert (found.symbols, found.source) == (frozenset("AB"), "rest")
    assert asked == [("POST", "/info", {"page": ""}), ("POST", "/info", {"page": "p2"})]


# ---- the keeper: a start that never waits long on REST, then a list kept fresh ---------------
# On trio's MockClock (autojump): every wait below is virtual, and exact.

FIVE_HOURS = 5 * 3600.0


class Rest:
    """A REST endpoint whose answer the test switches: a list, a status (with Retry-After), or
    no answer at all; every request's time (trio clock) is kept."""

    def __init__(self) -> None:
        self.symbols: list[str] = ["A", "B", "C"]
        self.status = 200
        self.retry_after: str | None = None
        self.hang = False
        self.asked: list[float] = []

    def fail(self, status: int, retry_after: str | None = None) -> None:
        self.status, self.retry_after = status, retry_after

    def serve(self, symbols: list[str]) -> None:
        self.status, self.retry_after, self.hang, self.symbols = 200, None, False, symbols

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(trio.current_time())
        if self.hang:
            await trio.sleep_forever()
        if self.status != 200:
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            return httpx.Response(self.status, headers=headers, json={"error": "down"})
        return httpx.Response(200, json={"symbols": self.symbols, "next": ""})

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(
            instruments.httpx, "AsyncClient",
            lambda **kwargs: REAL_CLIENT(transport=httpx.MockTransport(self.handler), **kwargs),
        )


@pytest.fixture
def rest(monkeypatch: pytest.MonkeyPatch) -> Rest:
    served = Rest()
    served.install(monkeypatch)
    return served


def cache_of(tmp_path: Path) -> Path:
    return tmp_path / f"{PagedVenue().venue_id}-instruments.json"


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def cache_contents(tmp_path: Path) -> object:
    return orjson.loads(cache_of(tmp_path).read_bytes())


def cached(tmp_path: Path, symbols: list[str], age: float) -> None:
    """A cache file as an earlier run left it, ``age`` seconds ago."""
    path = cache_of(tmp_path)
    path.write_bytes(orjson.dumps(symbols))
    then = time.time() - age
    os.utime(path, (then, then))


class Changes:
    """The lists the keeper hands on after the first, each with an event to wait for it."""

    def __init__(self) -> None:
        self.lists: list[Instruments] = []
        self._arrived = trio.Event()

    def __call__(self, instruments: Instruments) -> None:
        self.lists.append(instruments)
        self._arrived.set()

    async def next(self) -> Instruments:
        await self._arrived.wait()
        self._arrived = trio.Event()
        return self.lists[-1]


def keeper(
    tmp_path: Path, changes: Changes, *, wait: float = 3.0, refresh: float | None = None
) -> InstrumentKeeper:
    settings = KeeperSettings(wait=wait, refresh=refresh, retry_initial=5.0, retry_ceiling=300.0)
    return InstrumentKeeper(PagedVenue(), "http://rest", str(tmp_path), settings, on_change=changes)


async def test_a_start_while_rest_answers_503_takes_the_cache_at_once_and_the_fresh_list_when_rest_returns(
    rest: Rest, tmp_path: Path, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    cached(tmp_path, ["A", "B"], age=FIVE_HOURS + 60)
    rest.fail(503)
    changes = Changes()
    keep = keeper(tmp_path, changes)
    start = trio.current_time()
    first: Instruments = await nursery.start(keep.run)
    assert trio.current_time() == start  # no wait: the 503 said it all
    assert (first.source, first.symbols) == ("cache", frozenset("AB"))
    assert keep.status.summary(time.time()) == "cached (5 h old)"
    assert keep.status.last_error is not None and "HTTP 503 Service Unavailable" in keep.status.last_error

    await trio.sleep(200)  # REST still down: asked again and again, ever less often
    gaps = [b - a for a, b in itertools.pairwise(rest.asked)]
    assert len(gaps) >= 4
    assert gaps == sorted(gaps)  # half-jitter: each wait at least the one before
    assert 2.5 <= gaps[0] <= 5.0
    assert changes.lists == []  # nothing new to hand on meanwhile
    assert keep.status.consecutive_failures == len(rest.asked)

    rest.serve(["A", "B", "C"])
    with trio.fail_after(400):
        fresh = await changes.next()
    assert (fresh.source, fresh.symbols) == ("rest", frozenset("ABC"))
    assert keep.current is fresh
    assert cache_contents(tmp_path) == ["A", "B", "C"]  # the cache replaced
    assert files_in(tmp_path) == [cache_of(tmp_path).name]  # no temporary file left
    snapshot = keep.status.snapshot(trio.current_time(), time.time())
    assert snapshot["summary"] == "fetched (0 min old)"
    assert (snapshot["source"], snapshot["symbols"], snapshot["consecutive_failures"]) == ("rest", 3, 0)
    assert snapshot["last_error"] is None and snapshot["next_fetch_in"] is None  # no refresh set


async def test_a_rest_that_hangs_gets_the_cache_after_the_wait_and_the_fetch_goes_on(
    rest: Rest, tmp_path: Path, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    cached(tmp_path, ["A"], age=2 * 3600)
    rest.hang = True
    changes = Changes()
    keep = keeper(tmp_path, changes, wait=3.0)
    start = trio.current_time()
    first: Instruments = await nursery.start(keep.run)
    assert trio.current_time() - start == 3.0  # the wait, not the fetch's own timeout
    assert (first.source, first.symbols) == ("cache", frozenset("A"))
    assert first.error is not None and "no answer in 3 s" in first.error
    assert keep.status.summary(time.time()) == "cached (2 h old)"
    assert len(rest.asked) == 1  # that first fetch is still waiting, not abandoned

    rest.hang = False  # the server comes back, but the hung request never ends by itself
    with trio.fail_after(instruments.ATTEMPT_TIMEOUT + 10):
        fresh = await changes.next()
    assert fresh.source == "rest"
    assert keep.status.failures == 1
    assert rest.asked[1] - rest.asked[0] >= instruments.ATTEMPT_TIMEOUT  # it timed out, then again


@pytest.mark.parametrize(
    ("status", "retry_after", "waited"),
    [(429, "120", 120.0), (418, "7200", 7200.0), (429, None, DEFAULT_RETRY_AFTER), (418, None, DEFAULT_BAN)],
    ids=["429-retry-after", "418-retry-after", "429-without", "418-without"],
)
async def test_a_throttled_fetch_waits_as_long_as_the_answer_says_before_asking_again(
    rest: Rest, tmp_path: Path, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
    status: int, retry_after: str | None, waited: float,
) -> None:
    rest.fail(status, retry_after)
    changes = Changes()
    keep = keeper(tmp_path, changes)
    first: Instruments = await nursery.start(keep.run)
    assert first.source == "unavailable"  # no cache yet: symbols go unchecked meanwhile
    assert keep.status.summary(time.time()) == "unavailable (symbols unchecked)"
    assert f"HTTP {status}" in (keep.status.last_error or "")
    rest.serve(["A"])
    with trio.fail_after(waited + 1):
        fresh = await changes.next()
    assert fresh.symbols == frozenset("A")
    assert rest.asked[1] - rest.asked[0] == pytest.approx(waited)  # not the 5 s backoff


async def test_an_empty_list_is_a_failed_fetch_and_keeps_the_cache(
    rest: Rest, tmp_path: Path, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    cached(tmp_path, ["A"], age=60)
    rest.serve([])
    first: Instruments = await nursery.start(keeper(tmp_path, Changes()).run)
    assert (first.source, first.symbols) == ("cache", frozenset("A"))
    assert first.error is not None and first.error.endswith("unavailable: the list is empty")
    assert cache_contents(tmp_path) == ["A"]


async def test_a_list_that_comes_within_the_wait_is_used_at_start(
    rest: Rest, tmp_path: Path, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    cached(tmp_path, ["OLD"], age=FIVE_HOURS)
    changes = Changes()
    first: Instruments = await nursery.start(keeper(tmp_path, changes).run)
    assert (first.source, first.symbols) == ("rest", frozenset("ABC"))
    assert changes.lists == []


async def test_a_good_list_is_fetched_again_every_refresh_and_a_failed_refresh_keeps_it(
    rest: Rest, tmp_path: Path, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    changes = Changes()
    keep = keeper(tmp_path, changes, refresh=3600.0)
    start = trio.current_time()
    first: Instruments = await nursery.start(keep.run)
    assert first.symbols == frozenset("ABC")
    assert keep.status.snapshot(trio.current_time(), time.time())["next_fetch_in"] == 3600.0

    rest.serve(["A", "B", "NEW"])  # a new listing, and C delisted
    with trio.fail_after(3601):
        listed = await changes.next()
    assert listed.symbols == frozenset({"A", "B", "NEW"})
    assert rest.asked == [start, start + 3600]

    rest.fail(503)  # the next refresh fails: the list in hand stays, retried with backoff
    await trio.sleep(3600 + 60)
    assert keep.current is listed and changes.lists == [listed]
    assert keep.status.source == "rest" and keep.status.consecutive_failures >= 2
    rest.serve(["A", "B"])
    with trio.fail_after(400):
        again = await changes.next()
    assert again.symbols == frozenset("AB")
    assert cache_contents(tmp_path) == ["A", "B"]


# ---- the supervisor: new listings, and subscribed symbols that leave the list -----------------


@asynccontextmanager
async def never_connects(url: str, *, connect_timeout: float) -> AsyncIterator[Transport]:
    await trio.sleep_forever()
    yield  # type: ignore[misc]  # pragma: no cover


def supervisor(tmp_path: Path, symbols: tuple[str, ...], refresh: float | None = 3600.0) -> VenueSupervisor:
    send, _ = trio.open_memory_channel[list[object]](1)
    return VenueSupervisor(
        PagedVenue(),
        ExchangeConfig(symbols=symbols, channels=("trades",), rest_url="http://rest"),
        RunnerSettings(reconnect_interval=5.0, max_backoff=300.0),
        cache_dir=str(tmp_path),
        records=send,  # type: ignore[arg-type]
        open_transport=never_connects,
        instruments_refresh=refresh,
    )


async def test_a_subscribed_symbol_a_refresh_no_longer_lists_is_reported_delisted_and_stays_subscribed(
    rest: Rest, tmp_path: Path, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rest.serve(["BTCUSDT", "ETHUSDT"])
    venue = supervisor(tmp_path, ("BTCUSDT", "ETHUSDT"))
    await nursery.start(venue.run)
    await venue.ready.wait()
    assert [s["state"] for s in by_symbol(venue)] == ["pending", "pending"]

    rest.serve(["BTCUSDT", "SOLUSDT"])  # ETHUSDT delisted, SOLUSDT listed
    await trio.sleep(3600 + 1)
    eth = Subscription("ETHUSDT", "trades")
    assert eth in venue.subscriptions()  # never dropped: the exchange decides
    assert venue.state_of(eth) == "delisted"
    assert by_symbol(venue) == [
        {"symbol": "BTCUSDT", "channels": ["trades"], "state": "pending"},
        {"symbol": "ETHUSDT", "channels": ["trades"], "state": "delisted"},
    ]
    assert venue.status.snapshot()["instruments"]["delisted"] == ["ETHUSDT"]
    venue.subscribe("SOLUSDT", ["trades"])  # the new listing is subscribable now

    await trio.sleep(3600 + 1)  # the next refresh says the same: no second report
    warned = [r.getMessage() for r in caplog.records if "ETHUSDT" in r.getMessage()]
    assert len(warned) == 1 and "not listed" in warned[0] and "stays subscribed" in warned[0]

    venue.unsubscribe("ETHUSDT", ["trades"])
    assert venue.status.instruments.delisted == []


async def test_a_configured_symbol_the_cached_list_lacks_is_subscribed_once_the_fresh_list_has_it(
    rest: Rest, tmp_path: Path, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    cached(tmp_path, ["BTCUSDT"], age=FIVE_HOURS)  # written before NEWUSDT was listed
    rest.fail(503)
    venue = supervisor(tmp_path, ("BTCUSDT", "NEWUSDT", "LATERUSDT", "TYPOUSDT"), refresh=None)
    await nursery.start(venue.run)
    await venue.ready.wait()
    assert venue.instruments.source == "cache"
    assert venue.status.snapshot()["instruments"]["summary"] == "cached (5 h old)"
    assert [s.symbol for s in venue.subscriptions()] == ["BTCUSDT"]
    assert set(venue.status.subscription_errors) == {"NEWUSDT", "LATERUSDT", "TYPOUSDT"}

    with pytest.raises(NotSubscribed):  # the operator drops another one meanwhile
        await venue.unsubscribe_confirmed("LATERUSDT", None, trio.current_time() + 10)
    rest.serve(["BTCUSDT", "NEWUSDT", "LATERUSDT"])
    await trio.sleep(600)
    assert venue.instruments.source == "rest"
    assert [s.symbol for s in venue.subscriptions()] == ["BTCUSDT", "NEWUSDT"]
    # NEWUSDT's error cleared; TYPOUSDT is unknown to the fresh list too; LATERUSDT's stays
    # as it was at start (dropped before the list came, it never was subscribed)
    assert set(venue.status.subscription_errors) == {"LATERUSDT", "TYPOUSDT"}
