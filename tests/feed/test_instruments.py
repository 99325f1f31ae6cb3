"""Instrument lists: every page of a venue's list, with the on-disk cache as fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from feedd.exchanges.base import InstrumentPage
from feedd.exchanges.binance import BinanceSpot
from feedd.feed import instruments
from feedd.feed.instruments import load_instruments

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
