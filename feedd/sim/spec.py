"""What a venue's simulator module declares, so that every tool finds it without a list.

A module in :mod:`feedd.sim` that defines ``SIMULATOR`` (a :class:`SimSpec`) is a venue's
simulator, found by :func:`feedd.sim.registry` as :func:`feedd.exchanges.registry` finds the
adapters. The spec says which exchange venue ids the module's simulator serves and what the
tools that run it need: ``python -m feedd.sim`` (its command-line options), ``feedd demo`` and
the fault-injection harness (a simulator per group of venue ids, each venue id's URL, the
symbols a config subscribes, a spare symbol, a tape speed, the config section).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from feedd.sim.server import SimServer


def _main_url(sim: SimServer[Any], venue_id: str) -> str:
    del venue_id
    return sim.ws_url


def _no_options(parser: argparse.ArgumentParser) -> None:
    del parser


@attrs.frozen(kw_only=True)
class SimSpec:
    """One venue's simulator module, as the tools see it (``SIMULATOR`` in the module)."""

    #: ``python -m feedd.sim NAME``
    name: str
    #: one line for ``python -m feedd.sim --help``
    help: str
    #: the exchange venue ids served, grouped by simulator: the ids of a group share one
    #: simulator (Bybit's three endpoints), different groups run one each (Binance spot, USD-M).
    #: The first id is the venue's main one (the fault harness runs that one).
    groups: tuple[tuple[str, ...], ...]
    #: a simulator serving the venue ids of one group, its tapes at ``speed``; its data covers
    #: :attr:`symbols` and :attr:`spare` of those ids
    make: Callable[[tuple[str, ...], float], SimServer[Any]]
    #: the symbols a config subscribes by default, per venue id (as the venue spells them)
    symbols: Mapping[str, tuple[str, ...]]
    #: a symbol the main venue id lists (with trades) that :attr:`symbols` leaves out: for
    #: live subscribes
    spare: str
    #: a tape speed giving each symbol a few trades per second (tapes differ in density)
    speed: float = 1.0
    #: the WebSocket URL of ``venue_id`` on a running simulator (default: its ``ws_url``)
    url: Callable[[Any, str], str] = _main_url
    #: adds the module's own options to its ``python -m feedd.sim NAME`` parser
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_options
    #: the simulator ``python -m feedd.sim NAME`` serves, from the parsed options (``host``,
    #: ``port`` and ``speed`` are common to every venue)
    from_args: Callable[[argparse.Namespace], SimServer[Any]] | None = None
    #: extra TOML lines of a venue id's ``[exchanges.<id>]`` section, if the venue needs any
    config_lines: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    #: which of the module's tapes a frame one of its venue ids sent belongs to: (data folder,
    #: tape name, instrument), the instrument naming the frames that form one tape when the tape
    #: is one instrument's (else ""); None for a frame no tape holds. ``feedd demo --recording``
    #: plays a feedd recording's frames so (None here: the venue's recordings cannot be played)
    tape_of: Callable[[str, Mapping[str, Any]], tuple[str, str, str] | None] | None = None

    def __attrs_post_init__(self) -> None:
        if not self.groups or not all(self.groups):
            raise ValueError(f"simulator {self.name!r} serves no venue id")
        missing = [v for v in self.venue_ids if v not in self.symbols]
        if missing:
            raise ValueError(f"simulator {self.name!r} names no symbols for {', '.join(missing)}")

    @property
    def venue_ids(self) -> tuple[str, ...]:
        """Every venue id served, main one first."""
        return tuple(venue_id for group in self.groups for venue_id in group)

    @property
    def main(self) -> str:
        """The main venue id."""
        return self.groups[0][0]

    def simulator(self, args: argparse.Namespace) -> SimServer[Any]:
        """What ``python -m feedd.sim NAME`` serves: :attr:`from_args`, else the first group's."""
        if self.from_args is not None:
            return self.from_args(args)
        return self.make(self.groups[0], args.speed)

    def config_section(
        self, venue_id: str, sim: SimServer[Any], symbols: Iterable[str] | None = None, *extra: str
    ) -> str:
        """The ``[exchanges.<venue_id>]`` table pointing a daemon at ``sim`` for ``symbols``
        (default: :attr:`symbols`), with ``extra`` TOML lines."""
        listed = ", ".join(f'"{s}"' for s in (self.symbols[venue_id] if symbols is None else symbols))
        lines = "\n".join((*self.config_lines.get(venue_id, ()), *extra))
        return (
            f'\n[exchanges.{venue_id}]\nsymbols = [{listed}]\nurl = "{self.url(sim, venue_id)}"\n'
            f'rest_url = "{sim.rest_url}"\n{lines}\n'
        )


def symbol_list(text: str) -> list[str]:
    """Symbols from a comma-separated command-line option."""
    return [s.strip() for s in text.split(",") if s.strip()]
