"""The state file: API changes relative to the config, merged at start, written atomically, and a
bad file set aside rather than fatal or lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import feedd.control.state
from feedd.control.state import StateError, StateFile, VenueChanges, decode_state, encode_state
from feedd.exchanges.base import Subscription

BTC_TRADES = Subscription("BTCUSDT", "trades")
BTC_TICKER = Subscription("BTCUSDT", "ticker")
ETH_TRADES = Subscription("ETHUSDT", "trades")


def test_changes_are_kept_relative_to_the_configured_subscriptions() -> None:
    base = {BTC_TRADES, BTC_TICKER}
    changes = VenueChanges()
    assert changes.record(base, base | {ETH_TRADES}, base)
    assert changes.record(base | {ETH_TRADES}, {BTC_TRADES, ETH_TRADES}, base)
    assert changes == VenueChanges(subscribed={ETH_TRADES}, unsubscribed={BTC_TICKER})
    # undoing both leaves nothing to remember
    assert changes.record({BTC_TRADES, ETH_TRADES}, base, base)
    assert changes == VenueChanges()
    assert not changes.record(base, base, base)


def test_merge_adds_subscribed_and_removes_unsubscribed_keeping_the_config_order() -> None:
    changes = VenueChanges(subscribed={ETH_TRADES, Subscription("ADAUSDT", "ticker")},
                           unsubscribed={BTC_TICKER, Subscription("SOLUSDT", "trades")})
    configured = {"SOLUSDT": ("trades",), "BTCUSDT": ("trades", "ticker")}
    assert changes.merge(configured) == {
        "BTCUSDT": ("trades",),
        "ADAUSDT": ("ticker",),
        "ETHUSDT": ("trades",),
    }


def test_a_state_document_round_trips() -> None:
    venues = {"binance": VenueChanges({ETH_TRADES}, {BTC_TICKER}), "binance-usdm": VenueChanges()}
    data = encode_state(venues)
    assert decode_state(data) == {"binance": venues["binance"]}  # empty venues are not written
    assert b'\n        "ETHUSDT": [\n          "trades"\n' in data  # indented: a person may read it


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"{", "not JSON"),
        (b"[]", '"version": 1'),
        (b'{"version": 2, "venues": {}}', '"version": 1'),
        (b'{"version": 1, "venues": [], "extra": 1}', "expected only"),
        (b'{"version": 1, "venues": {"binance": {"subscribed": []}}}', "venues.binance.subscribed"),
        (b'{"version": 1, "venues": {"binance": {"added": {}}}}', "venues.binance: expected"),
        (b'{"version": 1, "venues": {"binance": {"subscribed": {"BTCUSDT": ["book"]}}}}', "'book'"),
        (b'{"version": 1, "venues": {"binance": {"subscribed": {"BTCUSDT": []}}}}', "non-empty list"),
        (b'{"version": 1, "venues": {"binance": {"subscribed": {"BTC USDT": ["trades"]}}}}', "not a symbol"),
    ],
)
def test_a_bad_state_document_is_an_error_saying_where(data: bytes, words: str) -> None:
    with pytest.raises(StateError, match=words):
        decode_state(data)


def test_a_missing_file_is_an_empty_state(tmp_path: Path) -> None:
    state = StateFile(str(tmp_path / "subscriptions.json"))
    assert state.load() == {}
    assert state.problem is None


def test_a_corrupt_file_is_set_aside_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "subscriptions.json"
    path.write_bytes(b'{"version": 1, "venues": {"binance": ')
    state = StateFile(str(path))
    assert state.load() == {}
    [aside] = tmp_path.glob("subscriptions.json.corrupt-*")
    assert aside.read_bytes() == b'{"version": 1, "venues": {"binance": '
    assert not path.exists()
    assert state.problem is not None
    assert "not JSON" in state.problem and str(aside) in state.problem
    assert state.writable


def test_an_unreadable_file_is_set_aside_too(tmp_path: Path) -> None:
    path = tmp_path / "subscriptions.json"
    path.mkdir()  # reading it fails whoever we are (root reads a mode-000 file)
    state = StateFile(str(path))
    assert state.load() == {}
    assert state.problem is not None and "IsADirectoryError" in state.problem
    assert len(list(tmp_path.glob("subscriptions.json.corrupt-*"))) == 1


async def test_a_bad_file_that_cannot_be_moved_is_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "subscriptions.json"
    path.write_bytes(b"garbage")

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(feedd.control.state.os, "replace", refuse)
    state = StateFile(str(path))
    state.load()
    state.changes("binance").subscribed.add(ETH_TRADES)
    assert not await state.save()
    assert path.read_bytes() == b"garbage"
    assert state.problem is not None and "not saved this run" in state.problem


async def test_save_writes_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "subscriptions.json"  # the directory is made on the first save
    state = StateFile(str(path))
    state.changes("binance").subscribed.add(ETH_TRADES)
    assert await state.save()
    assert decode_state(path.read_bytes()) == {"binance": VenueChanges({ETH_TRADES})}
    assert os.listdir(path.parent) == ["subscriptions.json"]


async def test_a_failed_save_is_reported_and_the_old_file_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "subscriptions.json"
    state = StateFile(str(path))
    state.changes("binance").subscribed.add(ETH_TRADES)
    assert await state.save()
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(feedd.control.state.os, "fsync", full)
    state.changes("binance").subscribed.add(BTC_TRADES)
    assert not await state.save()
    assert path.read_bytes() == before
    assert state.problem is not None and "No space left" in state.problem
    assert os.listdir(tmp_path) == ["subscriptions.json"]
    monkeypatch.undo()
    assert await state.save()
    assert state.problem is None
