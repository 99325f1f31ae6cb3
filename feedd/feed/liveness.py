"""Is the feed alive? The watchdog's rules, pure: times in, a verdict out (no trio, no I/O).

A connection's socket may be alive while its feed is not. Data frames and proofs of the feed (a
heartbeat channel, an idle probe's answer) count as life, not pongs or acknowledgements, which
prove only the socket. The proofs keep a sparse feed (an illiquid symbol) open; a *busy* feed
that falls silent is stalled, heartbeats or not (:func:`busy`).

A venue with neither (Bybit: its pongs prove only the socket) cannot tell a quiet feed from a
stalled one: when the feed is silent while pongs keep coming and every stream is acknowledged, it
may be an illiquid symbol. That verdict is *quiet*: a planned cut, not a failure, and the next
attempt waits twice as long (:func:`next_quiet_factor`, up to ``QUIET_MAX_FACTOR`` times), so a
quiet symbol never makes a reconnect loop while a stall is still noticed.
"""

from __future__ import annotations

from typing import Literal

import attrs

#: reads with data it takes (besides a steady flow) to call a feed busy: its silence is then a
#: stall even while heartbeats come
BUSY_READS = 10
#: the most a quiet feed's stale_after is stretched
QUIET_MAX_FACTOR = 8


@attrs.define
class Activity:
    """What one attempt has seen of its feed, in trio times (the reader updates it per read)."""

    #: the last data frame (records, kept or refused) and the last proof that the feed (not just
    #: the socket) is alive
    last_data_at: float | None = None
    last_proof_at: float | None = None
    #: when the first data frame came, how many reads brought data and the longest silence
    #: between two of them
    first_data_at: float | None = None
    data_reads: int = 0
    longest_silence: float = 0.0
    #: the last pong the venue owed (its socket answers, whatever the feed does)
    last_pong_at: float | None = None

    def data(self, at: float) -> None:
        """A read at ``at`` brought data."""
        last = self.last_data_at
        if last is None:
            self.first_data_at = at
        elif at - last > self.longest_silence:
            self.longest_silence = at - last
        self.last_data_at = at
        self.data_reads += 1


def busy(feed: Activity, stale_after: float) -> bool:
    """For at least ``stale_after`` and ``BUSY_READS`` reads, data never paused longer than a
    third of ``stale_after``: then a whole ``stale_after`` without data is a stall, whatever the
    heartbeats say. A sparse or bursty feed's silence may be its market's (the heartbeats count)."""
    if feed.data_reads < BUSY_READS or feed.first_data_at is None or feed.last_data_at is None:
        return False
    observed = feed.last_data_at - feed.first_data_at
    return observed >= stale_after and feed.longest_silence * 3 <= stale_after


#: the part of ``stale_after`` before a verdict in which a message shows the socket still alive
ALIVE_WITHIN = 0.5


def deadline(feed: Activity, start: float, stale_after: float) -> float:
    """When the feed, silent since its last data (or proof, unless it is busy), is stale."""
    proof = None if busy(feed, stale_after) else feed.last_proof_at
    return max(feed.last_data_at or start, proof or start) + stale_after


@attrs.frozen
class Verdict:
    """A silent feed's verdict: ``quiet`` (maybe an illiquid symbol: a planned cut) or ``stale``
    (a failure; ``socket_alive``: frames still came, heartbeats without data)."""

    kind: Literal["quiet", "stale"]
    socket_alive: bool = False


def verdict(feed: Activity, *, now: float, stale_after: float, last_message_at: float | None,
            all_acked: bool) -> Verdict:
    """Why a feed silent past its :func:`deadline` ends: quiet when pongs still come, nothing
    ever arrived (no data, no proof) and the venue acknowledged every topic; else stale."""
    pongs = feed.last_pong_at is not None and now - feed.last_pong_at < stale_after
    if pongs and feed.last_data_at is None and feed.last_proof_at is None and all_acked:
        return Verdict("quiet")
    # alive: messages kept coming through the silence, the last in its latter half; one stray
    # heartbeat just after the last data, then nothing, is a dead socket (a half-open one)
    socket_alive = last_message_at is not None and now - last_message_at < stale_after * ALIVE_WITHIN
    return Verdict("stale", socket_alive)


def next_quiet_factor(factor: int) -> int:
    """The stale_after multiplier after a quiet verdict: twice, up to ``QUIET_MAX_FACTOR``."""
    return min(QUIET_MAX_FACTOR, factor * 2)
