"""Recorded exchange frames bundled with the package, and their pacing.

A recording is two parallel text files under ``feedd/sim/data/<venue>/``: ``<name>.ndjson`` with
one WebSocket frame per line, verbatim as the exchange sent it, and ``<name>.recv_ts`` with the
recorder's receive time of the same line. Simulators replay the frames' payloads in a loop,
sleeping the recorded inter-arrival gaps (divided by a speed factor) between them, so the traffic
has the burstiness of the real feed rather than a metronome's. :func:`play` is that loop; the
simulator's emit function gives each payload fresh ids and timestamps.

Pacing uses trio's clock (so tests can run it under ``MockClock``); payload timestamps are the
simulator's business and use the wall clock, because clients validate them against real time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache, partial
from importlib import resources
from typing import Any

import attrs
import orjson
import trio


@attrs.frozen(slots=True)
class Recording:
    """The payloads of one recorded stream and the gap (seconds) that preceded each.

    A payload is the frame's ``data`` when the frame is a combined-stream envelope
    (``{"stream": ..., "data": ...}``), else the whole frame.

    ``gaps[0]`` is the pause used when the replay wraps from the last frame back to the first:
    the recording's mean gap, so the loop keeps the recorded rate.
    """

    name: str
    payloads: tuple[Mapping[str, Any], ...]
    gaps: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.payloads)


def _payload(frame: Mapping[str, Any]) -> Mapping[str, Any]:
    data = frame.get("data")
    if "stream" in frame and isinstance(data, Mapping):
        return data
    return frame


def _seconds(stamp: str) -> float:
    """A recv_ts value in seconds: float seconds (cryptofeed) or integer nanoseconds (hftbacktest)."""
    return float(stamp) if "." in stamp else int(stamp) / 1e9


def parse_recording(name: str, frames_text: str, recv_ts_text: str) -> Recording:
    """Build a :class:`Recording` from the two files' contents (pure; used by the loader and tests)."""
    lines = [line for line in frames_text.splitlines() if line.strip()]
    stamps = [_seconds(line.strip()) for line in recv_ts_text.splitlines() if line.strip()]
    if len(lines) != len(stamps):
        raise ValueError(f"recording {name!r}: {len(lines)} frames but {len(stamps)} timestamps")
    if not lines:
        raise ValueError(f"recording {name!r} is empty")
    return paced(name, [_payload(orjson.loads(line)) for line in lines], stamps)


def paced(name: str, payloads: Sequence[Mapping[str, Any]], times: Sequence[float]) -> Recording:
    """A :class:`Recording` of ``payloads`` that happened at ``times`` (seconds): paced by their
    differences, wrapping after the mean gap. A simulator builds one from a recording's frames
    (a selection of them, or their own exchange times)."""
    # Clamp negative gaps: receive stamps can step back by a few ns when a recorder's clock slews.
    gaps = [max(0.0, later - earlier) for earlier, later in itertools.pairwise(times)]
    wrap = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1.0
    return Recording(name=name, payloads=tuple(payloads), gaps=(max(wrap, 0.0), *gaps))


def times(recording: Recording) -> list[float]:
    """Each frame's time in seconds from the first (the running sum of its gaps)."""
    return list(itertools.accumulate(recording.gaps[1:], initial=0.0))


#: tapes supplied in place of bundled ones, by (data folder, name): ``feedd demo --recording``
#: turns a feedd recording's frames into them (:func:`supply`)
_SUPPLIED: dict[tuple[str, str], Recording] = {}


def supply(venue: str, name: str, recording: Recording | None) -> None:
    """From now on, :func:`load_recording` of ``venue``/``name`` gives ``recording`` (None: the
    bundled one again). Simulators made afterwards play it; supply before making them."""
    if recording is None:
        _SUPPLIED.pop((venue, name), None)
    else:
        _SUPPLIED[(venue, name)] = recording


def load_recording(venue: str, name: str) -> Recording:
    """The tape ``venue``/``name``: one :func:`supply` gave, else the bundled one."""
    supplied = _SUPPLIED.get((venue, name))
    return supplied if supplied is not None else bundled_recording(venue, name)


@cache
def bundled_recording(venue: str, name: str) -> Recording:
    """The bundled recording ``feedd/sim/data/<venue>/<name>.{ndjson,recv_ts}`` (read once)."""
    folder = resources.files("feedd.sim").joinpath("data").joinpath(venue)
    frames_text = folder.joinpath(f"{name}.ndjson").read_text(encoding="utf-8")
    recv_ts_text = folder.joinpath(f"{name}.recv_ts").read_text(encoding="utf-8")
    return parse_recording(f"{venue}/{name}", frames_text, recv_ts_text)


class Demand:
    """How many subscriptions want a replay, and an event set while there is at least one, so a
    replay nobody listens to costs nothing."""

    def __init__(self) -> None:
        self.count = 0
        self.wanted = trio.Event()

    def add(self, delta: int) -> None:
        self.count += delta
        if self.count > 0:
            self.wanted.set()
        elif self.wanted.is_set():
            self.wanted = trio.Event()


class Demands:
    """A :class:`Demand` for each of a market's tapes, from the channels taken: a channel wants
    the tapes its frames are made of (``feeds``: channel kind → tape names), so a tape that makes
    only frames nobody takes stands still, as a whole market nobody takes already does. Binance's
    book ticker tape (80 frames a second) plays only for its own stream and the 24 h ticker, not
    for a subscriber of the trades alone."""

    def __init__(self, feeds: Mapping[str, Iterable[str]]) -> None:
        self._feeds = {kind: tuple(tapes) for kind, tapes in feeds.items()}
        self._tapes = {tape: Demand() for tapes in self._feeds.values() for tape in tapes}

    def __getitem__(self, tape: str) -> Demand:
        return self._tapes[tape]

    def add(self, kind: str, delta: int) -> None:
        """``delta`` more (or fewer) subscriptions of a ``kind`` channel."""
        for tape in self._feeds[kind]:
            self._tapes[tape].add(delta)

    def add_all(self, delta: int) -> None:
        """``delta`` more wanting every tape (a simulator's ``keep_trading``)."""
        for demand in self._tapes.values():
            demand.add(delta)


async def play(
    recording: Recording,
    emit: Callable[[Mapping[str, Any]], None],
    *,
    demand: Demand,
    speed: float = 1.0,
    start: int = 0,
) -> None:
    """Call ``emit`` with each payload of ``recording`` in a loop, from index ``start``, at the
    recorded pace divided by ``speed``, while ``demand`` wants it. Never bursts more than one
    second of backlog to catch up."""
    count = len(recording)
    index = start % count
    deadline = trio.current_time()
    since_checkpoint = 0
    while True:
        if not demand.wanted.is_set():
            await demand.wanted.wait()
            deadline = trio.current_time()
        deadline += recording.gaps[index] / speed
        now = trio.current_time()
        if deadline > now:
            await trio.sleep_until(deadline)
            since_checkpoint = 0
        else:
            deadline = max(deadline, now - 1.0)
            since_checkpoint += 1
            if since_checkpoint >= 64:
                await trio.lowlevel.checkpoint()
                since_checkpoint = 0
        emit(recording.payloads[index])
        index = (index + 1) % count


def play_staggered(
    nursery: trio.Nursery,
    feeds: Iterable[tuple[Recording, Callable[[Mapping[str, Any]], None], Demand]],
    *,
    speed: float = 1.0,
) -> None:
    """Start :func:`play` for each ``(recording, emit, demand)``; the feeds that share a recording
    start at evenly spaced points of it, so symbols replaying one tape do not move in lockstep."""
    sharing: dict[int, list[tuple[Recording, Callable[[Mapping[str, Any]], None], Demand]]] = {}
    for feed in feeds:
        sharing.setdefault(id(feed[0]), []).append(feed)
    for group in sharing.values():
        for rank, (recording, emit, demand) in enumerate(group):
            start = rank * len(recording) // len(group)
            nursery.start_soon(partial(play, recording, emit, demand=demand, speed=speed, start=start))
