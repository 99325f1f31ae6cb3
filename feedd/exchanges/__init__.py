"""Exchange adapters, one module each, found by discovery.

Every module in this package that defines ``VENUES`` (a mapping of venue id to a zero-argument
factory returning a :class:`feedd.exchanges.base.Venue`) is registered; adding an exchange is
adding a module, with no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from functools import cache

from feedd.exchanges.base import Venue

VenueFactory = Callable[[], Venue]


@cache
def registry() -> dict[str, VenueFactory]:
    """Venue id → factory, from every adapter module in this package."""
    found: dict[str, VenueFactory] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for venue_id, factory in getattr(module, "VENUES", {}).items():
            if venue_id in found:
                raise RuntimeError(f"venue id {venue_id!r} is defined twice ({info.name})")
            found[venue_id] = factory
    return found


def venue_ids() -> list[str]:
    return sorted(registry())


def make_venue(venue_id: str) -> Venue:
    """A fresh adapter for ``venue_id``; KeyError names the unknown id."""
    try:
        factory = registry()[venue_id]
    except KeyError:
        raise KeyError(f"unknown venue id {venue_id!r} (known: {', '.join(venue_ids())})") from None
    return factory()
