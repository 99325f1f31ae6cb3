"""When a connection rotates and when a failed rotation is tried again, without trio."""

from __future__ import annotations

import math

from feedd.feed.rotation import Rotations, due, planned_delay


def test_a_rotation_is_due_at_rotate_after_plus_the_shards_offset() -> None:
    assert due(10.0, 100.0, 7.0) == 117.0
    assert due(10.0, None, 7.0) == math.inf  # only when the venue announces a shutdown


def test_rotations_are_never_closer_than_reconnect_interval() -> None:
    rotations = Rotations()
    assert rotations.earliest(5.0) == -math.inf
    rotations.started(100.0)
    assert rotations.earliest(5.0) == 105.0


def test_failed_rotations_wait_twice_as_long_each_up_to_max_backoff_and_a_success_starts_over() -> None:
    rotations = Rotations()
    assert [rotations.failed(5.0, 60.0) for _ in range(6)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    rotations.succeeded()
    assert rotations.failures == 0 and rotations.failed(5.0, 60.0) == 5.0


def test_a_planned_reconnect_waits_only_what_keeps_them_reconnect_interval_apart() -> None:
    assert planned_delay(-math.inf, 100.0, 5.0) == 0.0
    assert planned_delay(98.0, 100.0, 5.0) == 3.0
    assert planned_delay(90.0, 100.0, 5.0) == 0.0
