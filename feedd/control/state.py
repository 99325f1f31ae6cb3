"""Runtime subscriptions that survive a restart: the API's changes, kept in ``[feed] state_file``.

The file holds *changes relative to the config file*, per venue: what the API subscribed beyond
the configured symbols, and which configured subscriptions it removed. At start they are merged
with the config (configured + subscribed - unsubscribed), so editing the config still works and
an API change survives a restart either way.

It is written atomically (temporary file, fsync, rename, fsync of the directory), so a crash
leaves the old file or the new one, never half of one. A file that cannot be read or parsed is
never fatal and never silently lost: it is renamed aside (``<name>.corrupt-<time>``), reported,
and the daemon starts from the config. If it cannot even be moved, nothing is written this run,
so it is not overwritten either. Entries for venues that are not running (not configured, or
disabled) are carried over untouched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio

from feedd.config import symbol_problem
from feedd.errors import describe
from feedd.exchanges.base import ALL_CHANNELS, Channel, Subscription

log = logging.getLogger(__name__)

VERSION = 1
#: a state file larger than this is not ours (or not sane): set aside like a corrupt one
MAX_STATE_BYTES = 16 * 1024 * 1024

#: venue -> symbol -> channels
Table = dict[str, dict[str, set[Channel]]]


class StateError(ValueError):
    """The state file's content is not a state document; the message says where."""


@attrs.define
class VenueChanges:
    """One venue's API changes relative to its configured subscriptions."""

    subscribed: set[Subscription] = attrs.field(factory=set)
    unsubscribed: set[Subscription] = attrs.field(factory=set)

    def merge(self, configured: Mapping[str, Iterable[Channel]]) -> dict[str, tuple[Channel, ...]]:
        """configured + subscribed - unsubscribed, as symbol -> channels (configured order first)."""
        subs = {Subscription(symbol, c) for symbol, channels in configured.items() for c in channels}
        subs = (subs | self.subscribed) - self.unsubscribed
        merged: dict[str, tuple[Channel, ...]] = {}
        for symbol in [*configured, *sorted({s.symbol for s in subs} - set(configured))]:
            channels = tuple(c for c in ALL_CHANNELS if Subscription(symbol, c) in subs)
            if channels:
                merged[symbol] = channels
        return merged

    def record(self, before: set[Subscription], after: set[Subscription], base: set[Subscription]) -> bool:
        """Fold one live change into the deltas; whether anything changed."""
        old = (set(self.subscribed), set(self.unsubscribed))
        for sub in after - before:
            self.unsubscribed.discard(sub)
            if sub not in base:
                self.subscribed.add(sub)
        for sub in before - after:
            self.subscribed.discard(sub)
            if sub in base:
                self.unsubscribed.add(sub)
        return (self.subscribed, self.unsubscribed) != old


def _table(subs: Iterable[Subscription]) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for sub in sorted(subs, key=lambda s: (s.symbol, ALL_CHANNELS.index(s.channel))):
        table.setdefault(sub.symbol, []).append(sub.channel)
    return table


def encode_state(venues: Mapping[str, VenueChanges]) -> bytes:
    document = {
        "version": VERSION,
        "venues": {
            venue: {"subscribed": _table(c.subscribed), "unsubscribed": _table(c.unsubscribed)}
            for venue, c in sorted(venues.items())
            if c.subscribed or c.unsubscribed
        },
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def _subscriptions(value: Any, where: str) -> set[Subscription]:
    if not isinstance(value, dict):
        raise StateError(f"{where}: expected an object of symbol -> channels")
    subs = set()
    for symbol, channels in value.items():
        if (problem := symbol_problem(symbol)) is not None:
            raise StateError(f"{where}: {problem}")
        if not isinstance(channels, list) or not channels:
            raise StateError(f"{where}.{symbol}: expected a non-empty list of channels")
        for channel in channels:
            if channel not in ALL_CHANNELS:
                raise StateError(f"{where}.{symbol}: unknown channel {channel!r}")
            subs.add(Subscription(symbol, channel))
    return subs


def decode_state(data: bytes) -> dict[str, VenueChanges]:
    """Parse a state document; StateError names what is wrong."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise StateError(f"expected an object with \"version\": {VERSION}")
    venues = document.get("venues", {})
    if not isinstance(venues, dict) or set(document) - {"version", "venues"}:
        raise StateError("expected only \"version\" and \"venues\" (an object of venue -> changes)")
    changes = {}
    for venue, entry in venues.items():
        if not isinstance(entry, dict) or set(entry) - {"subscribed", "unsubscribed"}:
            raise StateError(f"venues.{venue}: expected an object with subscribed, unsubscribed")
        changes[venue] = VenueChanges(
            _subscriptions(entry.get("subscribed", {}), f"venues.{venue}.subscribed"),
            _subscriptions(entry.get("unsubscribed", {}), f"venues.{venue}.unsubscribed"),
        )
    return changes


def write_atomically(path: Path, data: bytes) -> None:
    """Temporary file in the same directory, fsync, rename over ``path``, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class StateFile:
    """The state file of one service: loaded once at start, saved after every API change.

    ``problem`` says what went wrong with it (shown in the status), None while all is well.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.venues: dict[str, VenueChanges] = {}
        self.problem: str | None = None
        #: False when an unreadable file could not be moved aside: it must not be overwritten
        self.writable = True
        self._lock = trio.Lock()
        self.saves = 0

    def load(self) -> dict[str, VenueChanges]:
        """Read the file (a missing one is an empty state); a bad one is set aside and reported.

        A blocking read at start-up, before any venue runs: the file is small.
        """
        try:
            size = self.path.stat().st_size
            if size > MAX_STATE_BYTES:
                raise StateError(f"larger than {MAX_STATE_BYTES} bytes ({size})")
            self.venues = decode_state(self.path.read_bytes())
        except FileNotFoundError:
            self.venues = {}
        except (OSError, StateError) as exc:
            self._set_aside(describe(exc) if isinstance(exc, OSError) else str(exc))
            self.venues = {}
        return self.venues

    def _set_aside(self, why: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            self.writable = False
            self.problem = (
                f"state file {self.path} unusable ({why}) and cannot be moved aside ({describe(exc)}): "
                "runtime subscriptions are not saved this run"
            )
        else:
            self.problem = f"state file {self.path} unusable ({why}); set aside as {aside}"
        log.error("%s; starting from the config file's subscriptions", self.problem)

    def changes(self, venue: str) -> VenueChanges:
        return self.venues.setdefault(venue, VenueChanges())

    async def save(self) -> bool:
        """Write the current state; False (logged, and kept in :attr:`problem`) when it failed.

        fsync can block for many milliseconds on a busy disk; like trio's own file API, the
        write runs in trio's worker thread so the feed does not wait for the disk.
        """
        if not self.writable:
            return False
        async with self._lock:
            data = encode_state(self.venues)
            try:
                await trio.to_thread.run_sync(write_atomically, self.path, data)
            except OSError as exc:
                self.problem = f"cannot save runtime subscriptions to {self.path}: {describe(exc)}"
                log.error("%s", self.problem)
                return False
            self.saves += 1
            if self.problem is not None and self.problem.startswith("cannot save"):
                self.problem = None
            return True
