"""What several tests share: the system tools some drive (tmux, Chromium: found, or skipped on
a workstation and a failure under CI, ``$CI``, whose .ci/run installs them), and the code blocks
of the documentation pages that tests run."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest


def require_tool(*names: str, package: str) -> str:
    """The path of the first of ``names`` on PATH."""
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    if os.environ.get("CI"):
        pytest.fail(f"{names[0]} is missing under CI: .ci/run must install {package} (apt)")
    pytest.skip(f"{names[0]} is not installed (apt-get install {package})")


#: the repository's root, its README and its documentation pages
ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def docs_blocks(page: Path, marker: str, count: int = 1, language: str = "python") -> list[str]:
    """The first ``count`` fenced ``language`` blocks after the HTML comment ``<!-- marker``
    in ``page`` (a docs page whose code a test runs)."""
    text = page.read_text(encoding="utf-8")
    start = text.find(f"<!-- {marker}")
    assert start >= 0, f"{page.relative_to(ROOT)}: no marker <!-- {marker}"
    blocks = re.findall(rf"```{language}\n(.*?)```", text[start:], re.DOTALL)[:count]
    assert len(blocks) == count, f"{page.relative_to(ROOT)}: {count} {language} block(s) after the marker"
    return blocks
