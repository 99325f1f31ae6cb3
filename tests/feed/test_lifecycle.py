"""An attempt's lifecycle table, without trio: every legal move, and an error for the rest."""

from __future__ import annotations

import itertools

import pytest

from feedd.feed.lifecycle import FINAL, TRANSITIONS, Lifecycle, LifecycleError, State, Trigger, next_state


def test_a_first_connection_starts_current_and_a_replacement_on_standby() -> None:
    assert Lifecycle(current=True).state is State.CURRENT
    assert Lifecycle(current=False).state is State.STANDBY


def test_a_rotation_moves_the_replacement_to_current_and_the_old_connection_to_replaced() -> None:
    old, new = Lifecycle(current=True), Lifecycle(current=False)
    assert new.state is State.STANDBY
    assert new.fire(Trigger.READY) is State.READY
    assert new.fire(Trigger.READY) is State.READY  # more data: still ready
    assert old.fire(Trigger.HAND_OVER) is State.REPLACED and old.final
    assert new.fire(Trigger.TAKE_OVER) is State.CURRENT and not new.final


def test_a_replacement_takes_over_unready_when_the_old_connection_is_cut_first() -> None:
    new = Lifecycle(current=False)
    assert new.fire(Trigger.TAKE_OVER) is State.CURRENT


@pytest.mark.parametrize("start", [State.STANDBY, State.READY])
def test_a_replacement_given_up_is_abandoned_for_good(start: State) -> None:
    state = next_state(start, Trigger.ABANDON)
    assert state is State.ABANDONED and state in FINAL
    for trigger in Trigger:
        with pytest.raises(LifecycleError):
            next_state(state, trigger)


def test_a_current_connections_first_data_changes_nothing() -> None:
    assert next_state(State.CURRENT, Trigger.READY) is State.CURRENT


@pytest.mark.parametrize(
    ("state", "trigger"),
    [pair for pair in itertools.product(State, Trigger) if pair not in TRANSITIONS],
)
def test_every_move_the_table_does_not_list_is_an_error(state: State, trigger: Trigger) -> None:
    with pytest.raises(LifecycleError, match=f"{trigger.value} in state {state.value}") as caught:
        next_state(state, trigger)
    assert (caught.value.state, caught.value.trigger) == (state, trigger)


def test_an_illegal_move_leaves_the_state_as_it_was() -> None:
    lifecycle = Lifecycle(current=True)
    with pytest.raises(LifecycleError):
        lifecycle.fire(Trigger.ABANDON)  # the current connection is never abandoned
    with pytest.raises(LifecycleError):
        lifecycle.fire(Trigger.TAKE_OVER)  # nor does it take over from itself
    assert lifecycle.state is State.CURRENT


def test_final_states_have_no_way_out() -> None:
    assert {state for state, _ in TRANSITIONS} & FINAL == set()
