"""Local simulators of the exchanges' real WebSocket and REST protocols (design.md, Simulators).

Tests, the benchmark and ``feedd demo`` run these instead of the real venues: each serves its
venue's wire protocol on localhost, replays recorded traffic, and injects faults on demand.
:mod:`feedd.sim.server` is the venue-neutral server (with :mod:`~feedd.sim.protocol`,
:mod:`~feedd.sim.session`, :mod:`~feedd.sim.switches` and :mod:`~feedd.sim.waits`); a venue
module holds its protocol and data.

Venue modules are found by discovery, as :mod:`feedd.exchanges` finds the adapters: every
module here that defines ``SIMULATOR`` (a :class:`~feedd.sim.spec.SimSpec`) is one, and the
names in its ``__all__`` are importable from this package (``from feedd.sim import
BinanceSimulator``); adding a venue's simulator is adding a module, with no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType
from typing import Any

from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection, SimProtocol, frame_header
from feedd.sim.replay import Recording, load_recording, parse_recording
from feedd.sim.rest import HttpRequest, HttpResponse, JsonHttpServer
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec

__all__ = [
    "Accept",
    "Answer",
    "HttpRequest",
    "HttpResponse",
    "JsonHttpServer",
    "Liveness",
    "Recording",
    "Reject",
    "SimConnection",
    "SimProtocol",
    "SimServer",
    "SimSpec",
    "frame_header",
    "load_recording",
    "parse_recording",
    "registry",
    "simulator_for",
    "venue_ids",
]


@cache
def _venue_modules() -> tuple[ModuleType, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "SIMULATOR", None), SimSpec):
            found.append(module)
    return tuple(found)


@cache
def registry() -> dict[str, SimSpec]:
    """Simulator name → spec, from every venue module in this package (in name order)."""
    found: dict[str, SimSpec] = {}
    served: dict[str, str] = {}
    for module in _venue_modules():
        spec: SimSpec = module.SIMULATOR
        if spec.name in found:
            raise RuntimeError(f"simulator {spec.name!r} is defined twice ({module.__name__})")
        for venue_id in spec.venue_ids:
            if venue_id in served:
                raise RuntimeError(f"venue id {venue_id!r} is served by {served[venue_id]} and {spec.name}")
            served[venue_id] = spec.name
        found[spec.name] = spec
    return found


def venue_ids() -> list[str]:
    """Every exchange venue id some simulator serves."""
    return sorted(venue_id for spec in registry().values() for venue_id in spec.venue_ids)


def simulator_for(venue_id: str) -> SimSpec:
    """The spec of the simulator serving ``venue_id``; KeyError names the unknown id."""
    for spec in registry().values():
        if venue_id in spec.venue_ids:
            return spec
    raise KeyError(f"no simulator serves venue id {venue_id!r} (served: {', '.join(venue_ids())})")


def __getattr__(name: str) -> Any:
    """A venue module's public name (``BinanceSimulator``), imported on first use."""
    for module in _venue_modules():
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *(n for m in _venue_modules() for n in getattr(m, "__all__", ()))})
