"""The README stays one screen per concern, and the documentation pages stay true: every link
resolves, every repository path they name exists, every block a test runs is run by that test,
and the contract page says what the code does."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
import trio
from tools import DOCS, README, ROOT

from feedd.exchanges import make_venue, venue_ids
from feedd.http.api import build_app
from feedd.model import MarketData

PAGES = [README, *sorted(DOCS.glob("*.md"))]
#: at most ~300 lines (issue 19): the rest belongs to docs/
README_MAX_LINES = 300

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
#: a repository path in backticks, e.g. `feedd/exchanges/base.py` or `tests/faults/`
REPO_PATH = re.compile(r"`((?:feedd|tests|bench|scripts|systemd|docs|\.ci)/[\w./-]*)`")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def prose(page: Path) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub makes them."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", prose(page), re.M):
        text = unicodedata.normalize("NFC", heading.strip().lower())
        found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


def test_the_readme_is_at_most_300_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move a concern to docs/"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves_to_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_repository_path_a_page_names_exists(page: Path) -> None:
    missing = [path for path in REPO_PATH.findall(page.read_text(encoding="utf-8"))
               if not (ROOT / path).exists()]
    assert missing == []


def test_the_screenshots_are_shown() -> None:
    shown = {(page.parent / target).resolve() for page in PAGES for target in LINK.findall(prose(page))}
    for image in sorted(DOCS.glob("*.png")):
        assert image in shown, f"{page_id(image)} is shown on no page"


def test_every_block_a_page_says_a_test_runs_is_read_by_that_test() -> None:
    markers = 0
    for page in PAGES:
        for test in re.findall(r"<!-- (tests/\S+\.py) runs", page.read_text(encoding="utf-8")):
            markers += 1
            source = (ROOT / test).read_text(encoding="utf-8")
            assert f'"{page.name}"' in source, f"{test} does not read {page_id(page)}"
    assert markers >= 2  # docs/python-api.md: the service's example, the client's two


# ---- the contract page says what the code does ------------------------------------------------


def contract_table(heading: str) -> list[list[str]]:
    """The rows of the first table under ``## heading`` in docs/contract.md, cells stripped."""
    text = (DOCS / "contract.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def code(cell: str) -> str:
    """The first `code` span of a table cell."""
    match = re.search(r"`([^`]+)`", cell)
    assert match is not None, cell
    return match.group(1)


def test_the_contracts_venues_are_the_adapters_with_their_default_endpoints() -> None:
    rows = contract_table("Venues")
    assert [code(row[0]) for row in rows] == [
        "binance", "binance-usdm", "binance-coinm", "bybit", "bybit-linear", "bybit-inverse", "bybit-option",
        "coinbase", "coinbase-exchange", "hyperliquid", "okx",
    ]
    assert sorted(code(row[0]) for row in rows) == venue_ids()
    for row in rows:
        venue = make_venue(code(row[0]))
        assert (code(row[2]), code(row[3])) == (venue.default_url, venue.default_rest_url), row


def test_the_contracts_record_fields_are_the_fields_of_marketdata() -> None:
    named = [name.strip() for row in contract_table("MarketData") for name in row[0].split(",")]
    assert named == [field.name for field in attrs.fields(MarketData)]


async def test_the_contracts_http_paths_are_served_with_their_methods() -> None:
    rows = contract_table("HTTP API")
    routes = [code(row[0]).split() for row in rows]
    assert len(routes) == 6
    service: Any = SimpleNamespace(config=SimpleNamespace(http=SimpleNamespace(token=None)))
    app = build_app(service)
    for method, path in routes:
        # a method the path does not serve is answered 405 without calling the service, where an
        # unknown path would be 404: so 405 says the path is routed, and the Allow header lists
        # the methods it is routed for
        status, headers = await asgi_status(app, "PATCH", path)
        assert status == 405, (method, path)
        assert method in headers.get("allow", "").split(", "), (method, path, headers)


async def asgi_status(app: Any, method: str, path: str) -> tuple[int, dict[str, str]]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": []}
    await app(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    headers = {key.decode().lower(): value.decode() for key, value in start.get("headers", [])}
    return start["status"], headers
