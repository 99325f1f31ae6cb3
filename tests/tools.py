"""System tools some tests drive (tmux, Chromium): found, or skipped on a workstation and a
failure under CI (``$CI``), whose .ci/run installs them."""

from __future__ import annotations

import os
import shutil

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
