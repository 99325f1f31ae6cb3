"""Subscriptions changed through the API survive a restart; a bad state file never stops one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import trio
from harness import (
    API,
    TIMEOUT,
    Subscriber,
    running,
    simulator,
    subscribe_body,
    temporary_workdir,
    write_config,
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with temporary_workdir() as path:
        yield path


def set_aside(workdir: Path) -> list[Path]:
    return list(workdir.glob("subscriptions.json.corrupt-*"))


async def test_api_changes_survive_a_restart_merged_with_the_config(workdir: Path) -> None:
    async with simulator() as spot:
        config = write_config(workdir, spot)
        async with running(config) as (_, http):
            with trio.fail_after(TIMEOUT):
                added = await http.post(f"{API}/subscribe", content=subscribe_body("ETHUSDT", ["trades"]))
                removed = await http.delete(f"{API}/unsubscribe?exchange=binance&symbol=BTCUSDT"
                                            "&channels=ticker")
        assert added.json()["persisted"] and removed.json()["persisted"]
        saved = orjson.loads((workdir / "subscriptions.json").read_bytes())
        with trio.fail_after(TIMEOUT):
            await spot.wait_until(lambda: not spot.connections)  # the first daemon's is gone
        async with running(config) as (daemon, http):
            with trio.fail_after(TIMEOUT):
                await spot.wait_subscribed({"btcusdt@trade", "ethusdt@trade"})
                await daemon.initialize()
                listing = (await http.get(f"{API}/subscriptions")).json()["subscriptions"]
                client = await Subscriber.connect(daemon.config.unix.path)
                await client.until(lambda r: r.symbol == "ETHUSDT")
            streams = {s for conn in spot.connections for s in conn.streams}
    assert saved == {"version": 1, "venues": {"binance": {"subscribed": {"ETHUSDT": ["trades"]},
                                                         "unsubscribed": {"BTCUSDT": ["ticker"]}}}}
    assert [(s["symbol"], s["channels"]) for s in listing] == [
        ("BTCUSDT", ["trades"]),
        ("ETHUSDT", ["trades"]),
    ]
    assert streams == {"btcusdt@trade", "ethusdt@trade"}


async def test_a_corrupt_state_file_is_set_aside_and_reported_and_the_config_streams(workdir: Path) -> None:
    (workdir / "subscriptions.json").write_bytes(b'{"version": 1, "venues": {"binance": {"subscr')
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            record = await client.record()
            status = (await http.get(f"{API}/status")).json()
            answer = await http.post(f"{API}/subscribe", content=subscribe_body("ETHUSDT", ["ticker"]))
    [aside] = set_aside(workdir)
    assert aside.read_bytes() == b'{"version": 1, "venues": {"binance": {"subscr'
    problem = status["state_file"]["problem"]
    assert "not JSON" in problem and str(aside) in problem
    assert record.symbol == "BTCUSDT"
    assert answer.status_code == 200 and answer.json()["persisted"]
    saved = orjson.loads((workdir / "subscriptions.json").read_bytes())
    assert saved["venues"]["binance"]["subscribed"] == {"ETHUSDT": ["ticker"]}


async def test_state_for_a_venue_that_is_not_running_is_kept_untouched(workdir: Path) -> None:
    other = {"subscribed": {"SOLUSDT": ["trades"]}, "unsubscribed": {}}
    (workdir / "subscriptions.json").write_bytes(
        orjson.dumps({"version": 1, "venues": {"binance-usdm": other}})
    )
    async with simulator() as spot, running(write_config(workdir, spot)) as (daemon, http):
        with trio.fail_after(TIMEOUT):
            await daemon.initialize()
            answer = await http.post(f"{API}/subscribe", content=subscribe_body("ETHUSDT", ["trades"]))
    assert answer.status_code == 200
    saved = orjson.loads((workdir / "subscriptions.json").read_bytes())
    assert saved["venues"]["binance-usdm"] == other
    assert saved["venues"]["binance"]["subscribed"] == {"ETHUSDT": ["trades"]}
