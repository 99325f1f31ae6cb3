"""The venue's instrument list: which symbols exist, so a typo is an error and not a silent hole.

Binance acknowledges a stream for a symbol that does not exist and then sends nothing (protocols
§2.2), so feedd asks the REST instrument list first. The list is cached on disk (atomic write),
and a start never waits on REST for long: :class:`InstrumentKeeper` gives the venue the fresh
list if it comes within ``wait`` seconds, else the cached one at once (else none: symbols go
unchecked), and goes on fetching in the background, with backoff and honouring ``Retry-After``,
until a fetch succeeds; from then on it fetches again every ``refresh`` seconds, so new listings
become subscribable and delisted symbols are noticed (the supervisor reports those).
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import attrs
import httpx
import orjson
import trio

from feedd.errors import describe, first_of_run
from feedd.exchanges.base import PostedInstruments, Venue
from feedd.feed.backoff import Backoff
from feedd.feed.gates import DEFAULT_BAN, DEFAULT_RETRY_AFTER, MAX_WAIT, THROTTLING
from feedd.feed.status import InstrumentsStatus, age_text
from feedd.wire.proxy import ProxyURL
from feedd.wire.upgrade import parse_retry_after

log = logging.getLogger(__name__)

#: one request's timeout (httpx: connect, read, write, pool)
REST_TIMEOUT = 10.0
#: a whole fetch, every page of it: a server that trickles its answer is a failed attempt too
ATTEMPT_TIMEOUT = 30.0


@attrs.frozen
class Instruments:
    """``symbols`` is None when neither REST nor the cache could say (symbols then go unchecked).

    ``listed_at`` is when the list was fetched (wall clock, Unix seconds): for a cached list, the
    cache file's time.
    """

    symbols: frozenset[str] | None
    source: str  # "rest", "cache", "unavailable" or "unchecked" (not asked yet, or not to be)
    error: str | None = None
    listed_at: float | None = None


@attrs.frozen
class FetchFailed:
    """One fetch that did not bring a list: why, and the wait the answer asked for (seconds)."""

    error: str
    retry_after: float | None = None


def _cache_file(cache_dir: str, venue_id: str) -> Path:
    return Path(cache_dir) / f"{venue_id}-instruments.json"


def _write_cache(path: Path, symbols: frozenset[str]) -> None:
    # Small file, written rarely (start-up, refreshes): a blocking write is cheaper than a thread
    # hop. Written whole to a temporary file, flushed, then renamed over the old one: a crash
    # leaves the old list or the new one, never half of one.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as file:
        file.write(orjson.dumps(sorted(symbols)))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _read_cache(path: Path) -> frozenset[str]:
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise ValueError("not a list of symbols")
    return frozenset(data)


#: pages followed at most; a venue whose cursor never ends is a bad answer, not a loop
MAX_PAGES = 100


def rest_client(proxy: ProxyURL | None) -> httpx.AsyncClient:
    """The venue's REST client: through ``proxy`` when given (SOCKS needs httpx's ``socks`` extra),
    else directly. feedd.wire.proxy chose, from the config and the environment, so httpx must not
    choose again from the environment: a given proxy overrides it, and a direct client does not
    trust the environment (only its SSL_CERT_FILE / SSL_CERT_DIR, which is kept)."""
    if proxy is not None:
        return httpx.AsyncClient(timeout=REST_TIMEOUT, proxy=proxy.url())
    return httpx.AsyncClient(timeout=REST_TIMEOUT, trust_env=False, verify=_environment_trust())


def _environment_trust() -> ssl.SSLContext | bool:
    """What httpx trusts when it trusts the environment: SSL_CERT_FILE or SSL_CERT_DIR if set and
    there, else its own default (True)."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    cafile = cafile if cafile and os.path.isfile(cafile) else None
    capath = capath if capath and os.path.isdir(capath) else None
    if cafile is None and capath is None:
        return True
    return ssl.create_default_context(cafile=cafile, capath=capath)


async def _fetch(venue: Venue, rest_url: str, proxy: ProxyURL | None = None) -> frozenset[str]:
    """Every page of the instrument list, following the venue's cursor (GET, or POST of the
    venue's body for a :class:`PostedInstruments` venue)."""
    base = rest_url.rstrip("/")
    symbols: set[str] = set()
    cursor: str | None = None
    seen: set[str] = set()
    async with rest_client(proxy) as http:
        for _ in range(MAX_PAGES):
            url = base + venue.instruments_path(cursor)
            if isinstance(venue, PostedInstruments):
                response = await http.post(url, json=venue.instruments_body(cursor))
            else:
                response = await http.get(url)
            response.raise_for_status()
            page = venue.parse_instruments(response.json())
            symbols.update(page.symbols)
            cursor = page.cursor
            if cursor is None:
                return frozenset(symbols)
            if cursor in seen:
                raise ValueError(f"the instrument list repeats its page cursor {cursor!r}")
            seen.add(cursor)
    raise ValueError(f"the instrument list has more than {MAX_PAGES} pages")


def _refusal(response: httpx.Response) -> FetchFailed:
    """A non-2xx answer: its status, and the wait its ``Retry-After`` asks (a throttling answer
    without a usable one waits as the handshake gates do: a minute, or five after a ban)."""
    status = response.status_code
    text = response.headers.get("retry-after")
    retry_after = None if text is None else parse_retry_after(text, datetime.now(UTC))
    if retry_after is None and status in THROTTLING:
        retry_after = DEFAULT_BAN if status == 418 else DEFAULT_RETRY_AFTER
    what = f"HTTP {status} {response.reason_phrase or THROTTLING.get(status, '')}".rstrip()
    if text is not None:
        what += f" (Retry-After {text!r:.40})"
    return FetchFailed(what, None if retry_after is None else min(retry_after, MAX_WAIT))


async def fetch_instruments(
    venue: Venue, rest_url: str, proxy: ProxyURL | None = None
) -> frozenset[str] | FetchFailed:
    """One attempt at the whole list (every page) within :data:`ATTEMPT_TIMEOUT`, through
    ``proxy`` if given (the error then names it)."""
    url = rest_url.rstrip("/") + venue.instruments_path()
    if proxy is not None:
        url += f" through proxy {proxy.address}"
    with trio.move_on_after(ATTEMPT_TIMEOUT):
        try:
            symbols = await _fetch(venue, rest_url, proxy)
        except httpx.HTTPStatusError as exc:
            failed = _refusal(exc.response)
            return attrs.evolve(failed, error=f"instrument list from {url} unavailable: {failed.error}")
        except (httpx.HTTPError, ValueError) as exc:
            return FetchFailed(f"instrument list from {url} unavailable: {describe(exc)}")
        if not symbols:  # no exchange lists nothing: a glitch, not every symbol delisted
            return FetchFailed(f"instrument list from {url} unavailable: the list is empty")
        return symbols
    return FetchFailed(f"instrument list from {url} unavailable: no whole answer in {ATTEMPT_TIMEOUT:g} s")


def _store(venue_id: str, cache: Path, symbols: frozenset[str]) -> None:
    try:
        _write_cache(cache, symbols)
    except OSError as exc:
        log.warning("%s: cannot cache instrument list at %s: %s", venue_id, cache, describe(exc))


def cached_instruments(venue_id: str, cache_dir: str, error: str) -> Instruments:
    """The cached list after ``error`` (why REST gave none), or ``unavailable`` when there is none
    to read; logged either way."""
    cache = _cache_file(cache_dir, venue_id)
    try:
        symbols = _read_cache(cache)
        listed_at = cache.stat().st_mtime
    except FileNotFoundError:
        log.warning("%s: %s; no cached list either, symbols go unchecked", venue_id, error)
        return Instruments(None, "unavailable", error)
    except (OSError, ValueError) as exc:
        log.warning("%s: %s; cached list %s unreadable (%s)", venue_id, error, cache, describe(exc))
        return Instruments(None, "unavailable", error)
    age = age_text(time.time() - listed_at)
    log.warning("%s: %s; using the cached list (%d symbols, %s old)", venue_id, error, len(symbols), age)
    return Instruments(symbols, "cache", error, listed_at)


async def load_instruments(
    venue: Venue, rest_url: str, cache_dir: str, *, proxy: ProxyURL | None = None
) -> Instruments:
    """Fetch the venue's symbols over REST (every page), falling back to the on-disk cache."""
    fetched = await fetch_instruments(venue, rest_url, proxy)
    if isinstance(fetched, FetchFailed):
        return cached_instruments(venue.venue_id, cache_dir, fetched.error)
    _store(venue.venue_id, _cache_file(cache_dir, venue.venue_id), fetched)
    return Instruments(fetched, "rest", listed_at=time.time())


@attrs.frozen
class KeeperSettings:
    """How long a start waits for REST before taking the cache (``wait``), how often a good list
    is fetched again (``refresh``, None: never), and the retry backoff after a failed fetch."""

    wait: float = 3.0
    refresh: float | None = 6 * 3600.0
    retry_initial: float = 5.0
    retry_ceiling: float = 300.0


class InstrumentKeeper:
    """Gets a venue its instrument list at start within ``settings.wait``, then keeps it fresh.

    :meth:`run` reports started with the first list (``rest``, ``cache`` or ``unavailable``);
    every later one, from a background fetch that finally succeeded or a periodic refresh, goes
    to ``on_change``. The fetch that outlived the wait is not abandoned: it is the first of the
    background attempts. Failed attempts are retried with backoff (jittered, doubling from
    ``retry_initial`` to ``retry_ceiling``), never sooner than an answer's ``Retry-After``
    (Binance bans an address that keeps asking after 429: HTTP 418). A failed refresh keeps the
    list in hand and is retried the same way.
    """

    def __init__(
        self,
        venue: Venue,
        rest_url: str,
        cache_dir: str,
        settings: KeeperSettings,
        *,
        status: InstrumentsStatus | None = None,
        on_change: Callable[[Instruments], None] = lambda _: None,
        backoff: Backoff | None = None,
        proxy: ProxyURL | None = None,
    ) -> None:
        self.venue = venue
        self.proxy = proxy
        self.rest_url = rest_url
        self.cache = _cache_file(cache_dir, venue.venue_id)
        self.cache_dir = cache_dir
        self.settings = settings
        self.status = status or InstrumentsStatus()
        self.on_change = on_change
        self.backoff = backoff or Backoff(settings.retry_initial, settings.retry_ceiling)
        self.current = Instruments(None, "unchecked")
        #: set once the first list is in (the venue may start)
        self._started = False

    @property
    def venue_id(self) -> str:
        return self.venue.venue_id

    async def run(self, *, task_status: trio.TaskStatus[Instruments] = trio.TASK_STATUS_IGNORED) -> None:
        """Report started with the first list, then keep fetching until cancelled (or, with no
        refresh, until a fetch succeeded)."""
        self.status.source = "loading"
        first_answer = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_fresh, first_answer)
            with trio.move_on_after(self.settings.wait):
                await first_answer.wait()
            if not self._started:  # no list yet: the first fetch failed, or is still going
                why = self.status.last_error or (
                    f"instrument list from {self._url} unavailable: no answer in {self.settings.wait:g} s"
                    " (still asking)"
                )
                self._use(cached_instruments(self.venue_id, self.cache_dir, why))
            task_status.started(self.current)

    @property
    def _url(self) -> str:
        return self.rest_url.rstrip("/") + self.venue.instruments_path()

    def _use(self, instruments: Instruments) -> None:
        """``instruments`` become the venue's; the first is handed over by :meth:`run`, the
        later ones go to ``on_change``."""
        self.current = instruments
        status = self.status
        status.source = instruments.source
        status.symbols = None if instruments.symbols is None else len(instruments.symbols)
        status.listed_at = instruments.listed_at
        if self._started:
            self.on_change(instruments)
        self._started = True

    async def _keep_fresh(self, first_answer: trio.Event) -> None:
        status = self.status
        while True:
            status.next_fetch_at = None
            status.fetches += 1
            fetched = await fetch_instruments(self.venue, self.rest_url, self.proxy)
            if isinstance(fetched, FetchFailed):
                status.failures += 1
                status.consecutive_failures += 1
                status.last_error = fetched.error
                first_answer.set()
                delay = self.backoff.next_delay()
                if fetched.retry_after is not None:
                    delay = max(delay, fetched.retry_after)
                if self._started and first_of_run(status.consecutive_failures):
                    log.warning("%s: %s; keeping %s, asking again in %.0f s (failure %d)",
                                self.venue_id, fetched.error, self._kept(), delay,
                                status.consecutive_failures)
                else:
                    log.debug("%s: %s; asking again in %.1f s", self.venue_id, fetched.error, delay)
                status.next_fetch_at = trio.current_time() + delay
                await trio.sleep(delay)
                continue
            if status.consecutive_failures and self._started:
                log.info("%s: instrument list from %s fetched (%d symbols) after %d failed attempt(s)",
                         self.venue_id, self._url, len(fetched), status.consecutive_failures)
            status.consecutive_failures = 0
            status.last_error = None
            self.backoff.reset()
            _store(self.venue_id, self.cache, fetched)
            self._use(Instruments(fetched, "rest", listed_at=time.time()))
            first_answer.set()
            refresh = self.settings.refresh
            if refresh is None:
                return
            status.next_fetch_at = trio.current_time() + refresh
            await trio.sleep(refresh)

    def _kept(self) -> str:
        """What the venue goes on with, for the log: ``the cached list (2 symbols, 5 h old)``."""
        current = self.current
        if current.symbols is None:
            return "no list (symbols go unchecked)"
        age = "" if current.listed_at is None else f", {age_text(time.time() - current.listed_at)} old"
        kind = "cached" if current.source == "cache" else "fetched"
        return f"the {kind} list ({len(current.symbols)} symbols{age})"
