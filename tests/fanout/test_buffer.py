"""DropOldest: the sinks' one overflow policy."""

from __future__ import annotations

import pytest

from feedd.fanout.buffer import DropOldest


def test_a_batch_that_overflows_drops_the_oldest_and_says_how_many() -> None:
    buffer: DropOldest[int] = DropOldest(3)
    assert buffer.add([1, 2], 2) == 0
    assert buffer.add(iter([3, 4, 5]), 3) == 2
    assert list(buffer) == [3, 4, 5] and len(buffer) == 3


def test_one_item_into_a_full_buffer_drops_one() -> None:
    buffer: DropOldest[int] = DropOldest(2)
    assert (buffer.add_one(1), buffer.add_one(2), buffer.add_one(3)) == (0, 0, 1)
    assert list(buffer.items) == [2, 3]


def test_take_all_empties_it_and_keeps_the_bound() -> None:
    buffer: DropOldest[int] = DropOldest(2)
    buffer.add([1, 2], 2)
    assert list(buffer.take_all()) == [1, 2]
    assert not buffer
    assert buffer.add([7, 8, 9], 3) == 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        DropOldest(0)
