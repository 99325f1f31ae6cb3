"""The venue's instrument list: which symbols exist, so a typo is an error and not a silent hole.

Binance acknowledges a stream for a symbol that does not exist and then sends nothing (protocols
§2.2), so feedd asks the REST instrument list first. The list is cached on disk: a restart during
a REST outage still checks symbols against the last list seen, and still streams.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import attrs
import httpx
import orjson

from feedd.errors import describe
from feedd.exchanges.base import PostedInstruments, Venue
from feedd.wire.proxy import ProxyURL

log = logging.getLogger(__name__)

REST_TIMEOUT = 10.0


@attrs.frozen
class Instruments:
    """``symbols`` is None when neither REST nor the cache could say (symbols then go unchecked)."""

    symbols: frozenset[str] | None
    source: str  # "rest", "cache" or "unavailable"
    error: str | None = None


def _cache_file(cache_dir: str, venue_id: str) -> Path:
    return Path(cache_dir) / f"{venue_id}-instruments.json"


def _write_cache(path: Path, symbols: frozenset[str]) -> None:
    # Small file, written rarely (start-up): a blocking write is cheaper than a thread hop.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(sorted(symbols)))
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


async def load_instruments(
    venue: Venue,
    rest_url: str,
    cache_dir: str,
    *,
    proxy: ProxyURL | None = None,
) -> Instruments:
    """Fetch the venue's symbols over REST (every page), falling back to the on-disk cache."""
    url = rest_url.rstrip("/") + venue.instruments_path()
    cache = _cache_file(cache_dir, venue.venue_id)
    try:
        symbols = await _fetch(venue, rest_url, proxy)
    except (httpx.HTTPError, ValueError) as exc:
        via = "" if proxy is None else f" through proxy {proxy.address}"
        error = f"instrument list from {url}{via} unavailable: {describe(exc)}"
    else:
        try:
            _write_cache(cache, symbols)
        except OSError as exc:
            log.warning("%s: cannot cache instrument list at %s: %s", venue.venue_id, cache, describe(exc))
        return Instruments(symbols, "rest")
    try:
        symbols = _read_cache(cache)
    except FileNotFoundError:
        log.warning("%s: %s; no cached list either, symbols go unchecked", venue.venue_id, error)
        return Instruments(None, "unavailable", error)
    except (OSError, ValueError) as exc:
        log.warning("%s: %s; cached list %s unreadable (%s)", venue.venue_id, error, cache, describe(exc))
        return Instruments(None, "unavailable", error)
    log.warning("%s: %s; using the cached list (%d symbols)", venue.venue_id, error, len(symbols))
    return Instruments(symbols, "cache", error)

