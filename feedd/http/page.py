"""The status page (``GET /``): one self-contained HTML file shipped as package data.

Everything it needs (script, style, the chart drawn on a canvas) is inline, so it works with no
network beyond the daemon's own API; it polls ``status`` and ``history`` once a second.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def status_page() -> bytes:
    return files("feedd.http").joinpath("page.html").read_bytes()
