"""The README stays one screen per concern, and every page it and docs/ link to exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from pages import DOCS, README, ROOT, marked_blocks

from feedd import WebSocketService

#: the README's budget: what feedd is, the two commands, a record, the config most need, links
MAX_README_LINES = 300

PAGES = [README, *sorted(DOCS.glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_fits_its_budget() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in the page itself
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.name} links to missing files: {broken}"


def test_the_readme_links_every_docs_page() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [p.name for p in DOCS.glob("*.md") if f"docs/{p.name}" not in text]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_readme_example_calls_what_the_service_has() -> None:
    [code] = marked_blocks(README, "tests/test_docs.py checks this block")
    tree = ast.parse(code)  # it is valid Python
    called = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
              and n.value.id == "ws"}
    assert called, "the example uses the service"
    assert all(callable(getattr(WebSocketService, name, None)) for name in called), called
