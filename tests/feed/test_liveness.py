"""The watchdog's verdicts (stale, quiet, busy), without trio: plain times in, a verdict out."""

from __future__ import annotations

from feedd.feed.liveness import (
    BUSY_READS,
    QUIET_MAX_FACTOR,
    Activity,
    Verdict,
    busy,
    deadline,
    next_quiet_factor,
    verdict,
)


def steady(reads: int, every: float, start: float = 0.0) -> Activity:
    feed = Activity()
    for n in range(reads):
        feed.data(start + n * every)
    return feed


def test_the_reader_notes_first_and_last_data_and_the_longest_silence() -> None:
    feed = Activity()
    for at in (1.0, 2.0, 7.0, 8.0):
        feed.data(at)
    assert (feed.first_data_at, feed.last_data_at) == (1.0, 8.0)
    assert (feed.data_reads, feed.longest_silence) == (4, 5.0)


def test_a_silent_feed_is_stale_after_stale_after_from_its_last_data_or_the_connect() -> None:
    assert deadline(Activity(), start=100.0, stale_after=30.0) == 130.0
    assert deadline(steady(3, 1.0, start=110.0), start=100.0, stale_after=30.0) == 142.0


def test_a_heartbeat_keeps_a_sparse_feed_open() -> None:
    feed = steady(3, 5.0)
    feed.last_proof_at = 50.0
    assert deadline(feed, start=0.0, stale_after=30.0) == 80.0


def test_a_busy_feed_that_falls_silent_is_stale_whatever_its_heartbeats_say() -> None:
    feed = steady(BUSY_READS + 30, 1.0)  # 39 s of data, never a pause over 1 s
    feed.last_proof_at = 100.0
    assert busy(feed, stale_after=30.0)
    assert deadline(feed, start=0.0, stale_after=30.0) == feed.last_data_at + 30.0


def test_a_feed_is_busy_only_after_enough_reads_and_time_without_long_pauses() -> None:
    assert not busy(Activity(), 30.0)
    assert not busy(steady(BUSY_READS - 1, 10.0), 30.0)  # too few reads
    assert not busy(steady(BUSY_READS, 1.0), 30.0)  # not observed for stale_after yet
    bursty = steady(BUSY_READS + 30, 1.0)
    bursty.data(bursty.last_data_at + 11.0)  # a pause over a third of stale_after
    assert not busy(bursty, 30.0)
    assert busy(steady(BUSY_READS + 30, 10.0), 30.0)  # pauses of exactly a third still count


def test_pongs_without_any_data_on_an_acknowledged_feed_are_a_quiet_verdict() -> None:
    feed = Activity(last_pong_at=95.0)
    seen = verdict(feed, now=100.0, stale_after=30.0, last_message_at=95.0, all_acked=True)
    assert seen == Verdict("quiet")


def test_a_silence_is_stale_when_anything_says_the_feed_is_not_merely_quiet() -> None:
    def of(feed: Activity, *, all_acked: bool = True, last_message_at: float | None = 95.0) -> Verdict:
        return verdict(
            feed, now=100.0, stale_after=30.0, last_message_at=last_message_at, all_acked=all_acked
        )

    assert of(Activity(last_pong_at=95.0), all_acked=False) == Verdict("stale", socket_alive=True)
    assert of(Activity(last_pong_at=60.0)) == Verdict("stale", socket_alive=True)  # pongs stopped
    assert of(Activity(last_pong_at=95.0, last_data_at=10.0)) == Verdict("stale", socket_alive=True)
    assert of(Activity(last_pong_at=95.0, last_proof_at=10.0)) == Verdict("stale", socket_alive=True)
    assert of(Activity(), last_message_at=None) == Verdict("stale", socket_alive=False)
    assert of(Activity(), last_message_at=60.0) == Verdict("stale", socket_alive=False)


def test_a_quiet_feed_is_checked_ever_less_often_up_to_a_ceiling() -> None:
    factors = [1]
    for _ in range(5):
        factors.append(next_quiet_factor(factors[-1]))
    assert factors == [1, 2, 4, 8, 8, 8] and QUIET_MAX_FACTOR == 8


def test_one_message_just_after_the_last_data_then_nothing_is_a_dead_socket() -> None:
    """A half-open connection: a heartbeat that came right after the last data, then silence.
    Messages that kept coming through the silence (its latter half) mean the socket is alive."""
    feed = Activity(last_data_at=70.0)
    dead = verdict(feed, now=100.0, stale_after=30.0, last_message_at=70.5, all_acked=True)
    alive = verdict(feed, now=100.0, stale_after=30.0, last_message_at=95.0, all_acked=True)
    assert dead == Verdict("stale", socket_alive=False)
    assert alive == Verdict("stale", socket_alive=True)
