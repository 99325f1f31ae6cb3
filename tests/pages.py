"""The documentation pages tests read: the code blocks they run, the figures they check."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def marked_blocks(page: Path, marker: str, count: int = 1, language: str = "python") -> list[str]:
    """The first ``count`` fenced ``language`` blocks after the HTML comment ``<!-- marker``."""
    text = page.read_text(encoding="utf-8")
    start = text.index(f"<!-- {marker}")
    blocks = re.findall(rf"```{language}\n(.*?)```", text[start:], re.DOTALL)[:count]
    assert len(blocks) == count, f"{page.name}: fewer than {count} {language} blocks after {marker!r}"
    return blocks
