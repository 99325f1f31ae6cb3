"""Live reload of the configuration (what SIGHUP does), driven in-process against the simulators.

Every wait is on an event (a record read, a simulator state change) bounded by ``fail_after``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import trio
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section

from feedd.config import Config
from feedd.model import MarketData
from feedd.sim import BinanceSimulator

TIMEOUT = 20


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-r-") as path:
        yield path


def spot_config(workdir: Path, sim: BinanceSimulator, *symbols: str) -> Config:
    text = FAST_FEED + venue_section("binance", sim.ws_url, sim.rest_url, symbols, 'channels = ["trades"]')
    return load_text(workdir, text)


def consecutive(records: list[MarketData], symbol: str) -> list[int]:
    """The trade ids of ``symbol``, asserted without a hole: the simulator numbers each trade."""
    ids = [int(r.trade_id or 0) for r in records if r.symbol == symbol and r.kind == "trade"]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a gap in the trade ids"
    return ids


async def test_reload_adds_and_removes_symbols_live_while_an_untouched_stream_never_gaps(
    workdir: Path,
) -> None:
    sim = BinanceSimulator(speed=20.0)
    async with serving(sim), running(spot_config(workdir, sim, "BTCUSDT", "ETHUSDT")) as daemon:
        with trio.fail_after(TIMEOUT):
            client = await Subscriber.connect(daemon.config.unix.path)
            seen = await client.until(lambda r: r.symbol == "ETHUSDT")
            seen += await client.until(lambda r: r.symbol == "BTCUSDT")
            accepted = sim.connections_accepted

            outcome = await daemon.reload(spot_config(workdir, sim, "BTCUSDT", "BNBUSDT"))
            reloaded = datetime.now(UTC)
            seen += await client.until(lambda r: r.symbol == "BNBUSDT")
            for _ in range(20):  # and BTCUSDT goes on
                seen += await client.until(lambda r: r.symbol == "BTCUSDT")
        listing = await daemon.list_subscriptions()
        reconnects = [c.reconnects for c in daemon.statuses["binance"].connections.values()]
    assert outcome.ok, outcome
    assert sorted(outcome.applied) == [
        "binance: BNBUSDT trades: subscribed",
        "binance: ETHUSDT trades: unsubscribed",
    ]
    assert [(s["symbol"], s["channels"], s["state"]) for s in listing] == [
        ("BNBUSDT", ["trades"], "active"),
        ("BTCUSDT", ["trades"], "active"),
    ]
    assert len(consecutive(seen, "BTCUSDT")) > 20  # from before the reload to well after it
    assert not [r for r in seen if r.symbol == "ETHUSDT" and r.received_at > reloaded]
    assert sim.connections_accepted == accepted  # nothing reconnected
    assert reconnects == [0]


async def test_reload_starts_added_venues_and_stops_removed_or_disabled_ones_without_touching_the_others(
    workdir: Path,
) -> None:
    spot, futures = BinanceSimulator(speed=20.0), BinanceSimulator(futures=True, speed=20.0)

    def config(*sections: str) -> Config:
        return load_text(workdir, FAST_FEED + "".join(sections))

    async with serving(spot, futures):
        binance = venue_section("binance", spot.ws_url, spot.rest_url, ("BTCUSDT",))
        usdm = venue_section("binance-usdm", futures.ws_url, futures.rest_url, ("BTCUSDT",))
        async with running(config(binance)) as daemon:
            with trio.fail_after(TIMEOUT):
                client = await Subscriber.connect(daemon.config.unix.path)
                await client.until(lambda r: r.exchange == "binance")
                spot_accepted = spot.connections_accepted

                added = await daemon.reload(config(binance, usdm))
                await client.until(lambda r: r.exchange == "binance-usdm")
                assert spot.connections_accepted == spot_accepted
                futures_accepted = futures.connections_accepted

                removed = await daemon.reload(config(usdm))
                assert "binance" not in daemon.statuses and "binance" not in daemon.venues
                await spot.wait_until(lambda: not spot.connections)  # closed, not left hanging
                stopped_at = datetime.now(UTC)
                await client.until(lambda r: r.exchange == "binance-usdm" and r.received_at > stopped_at)

                disabled = await daemon.reload(config(usdm + "enabled = false\n"))
                status = await daemon.get_connection_status()
                assert status["exchanges"]["binance-usdm"]["state"] == "disabled"
                await futures.wait_until(lambda: not futures.connections)
                enabled = await daemon.reload(config(usdm))
                await futures.wait_until(lambda: len(futures.connections) > 0)
    assert added.applied == ("binance-usdm: started (added to the config)",)
    assert removed.applied == ("binance: stopped (removed from the config)",)
    assert disabled.applied == ("binance-usdm: stopped (enabled = false)",)
    assert enabled.applied == ("binance-usdm: started (enabled)",)
    assert futures.connections_accepted > futures_accepted


async def test_reload_with_a_new_url_moves_only_that_venue(workdir: Path) -> None:
    first, second = BinanceSimulator(speed=20.0), BinanceSimulator(speed=20.0)
    futures = BinanceSimulator(futures=True, speed=20.0)
    async with serving(first, second, futures):
        usdm = venue_section("binance-usdm", futures.ws_url, futures.rest_url, ("BTCUSDT",))
        before = load_text(workdir, FAST_FEED + usdm + venue_section("binance", first.ws_url, first.rest_url,
                                                                      ("BTCUSDT",)))
        async with running(before) as daemon:
            with trio.fail_after(TIMEOUT):
                await first.wait_until(lambda: len(first.connections) > 0)
                await futures.wait_until(lambda: len(futures.connections) > 0)
                futures_accepted = futures.connections_accepted
                moved = venue_section("binance", second.ws_url, second.rest_url, ("BTCUSDT",))
                after = FAST_FEED + usdm + moved
                outcome = await daemon.reload(load_text(workdir, after))
                await second.wait_subscribed("btcusdt@trade")
                await first.wait_until(lambda: not first.connections)
    (line,) = outcome.applied
    assert line.startswith("binance: restarted (url: ")
    assert futures.connections_accepted == futures_accepted


async def test_a_venue_restarted_by_a_reload_keeps_counting_from_where_it_was(workdir: Path) -> None:
    first, second = BinanceSimulator(speed=20.0), BinanceSimulator(speed=20.0)
    async with serving(first, second), running(spot_config(workdir, first, "BTCUSDT")) as daemon:
        with trio.fail_after(TIMEOUT):
            await first.wait_subscribed("btcusdt@trade")
            first.drop_connections()
            await first.wait_until(lambda: first.connections_accepted >= 2)
            client = await Subscriber.connect(daemon.config.unix.path)
            await client.record()
            old = daemon.statuses["binance"]
            before = (old.reconnects, old.messages, old.records)
            outcome = await daemon.reload(spot_config(workdir, second, "BTCUSDT"))
            await second.wait_subscribed("btcusdt@trade")
            new = daemon.statuses["binance"]
            after = (new.reconnects, new.messages, new.records)
    assert outcome.applied[0].startswith("binance: restarted (url: ")
    assert new is not old and before[0] >= 1
    assert all(a >= b for a, b in zip(after, before, strict=True)), (before, after)


async def test_config_symbols_never_reach_the_state_file_and_api_changes_survive_reloads(
    workdir: Path,
) -> None:
    sim = BinanceSimulator(speed=20.0)
    state = workdir / "subscriptions.json"

    def saved() -> object:
        return orjson.loads(state.read_bytes())["venues"]

    async with serving(sim), running(spot_config(workdir, sim, "BTCUSDT", "ETHUSDT")) as daemon:
        with trio.fail_after(TIMEOUT):
            await daemon.initialize()
            await daemon.subscribe_to_symbol("binance", "SOLUSDT", ["trades"])
            await daemon.unsubscribe_from_symbol("binance", "ETHUSDT")
            assert saved() == {"binance": {"subscribed": {"SOLUSDT": ["trades"]},
                                           "unsubscribed": {"ETHUSDT": ["trades"]}}}

            # an edit that touches neither keeps both API changes in force and on file
            untouched = await daemon.reload(spot_config(workdir, sim, "BTCUSDT", "ETHUSDT", "BNBUSDT"))
            assert [s.symbol for s in daemon.venues["binance"].subscriptions()] == [
                "BNBUSDT", "BTCUSDT", "SOLUSDT"
            ]
            assert saved() == {"binance": {"subscribed": {"SOLUSDT": ["trades"]},
                                           "unsubscribed": {"ETHUSDT": ["trades"]}}}

            # the config takes SOLUSDT over, and drops ETHUSDT: both API entries are moot
            taken = await daemon.reload(spot_config(workdir, sim, "BTCUSDT", "BNBUSDT", "SOLUSDT"))
            assert saved() == {}
            assert [s.symbol for s in daemon.venues["binance"].subscriptions()] == [
                "BNBUSDT", "BTCUSDT", "SOLUSDT"
            ]
    assert untouched.applied == ("binance: BNBUSDT trades: subscribed",)
    assert taken.applied == ()  # SOLUSDT was subscribed already, ETHUSDT was not any more


async def test_reload_applies_live_settings_and_reports_those_that_need_a_restart(workdir: Path) -> None:
    sim = BinanceSimulator(speed=20.0)
    async with serving(sim), running(spot_config(workdir, sim, "BTCUSDT")) as daemon:
        with trio.fail_after(TIMEOUT):
            await daemon.initialize()
            socket_path = daemon.config.unix.path
            text = FAST_FEED.replace("stale_after = 5.0", 'stale_after = 7.0\ntransport = "trio-websocket"')
            unix = 'path = "other.sock"\nclient_buffer = 77\nmax_clients = 3'
            text = text.replace('path = "feedd.sock"', unix)
            text += venue_section("binance", sim.ws_url, sim.rest_url, ("BTCUSDT",), 'channels = ["trades"]')
            outcome = await daemon.reload(load_text(workdir, text))
            runner_settings = {r.settings.stale_after for r in daemon.venues["binance"].runners()}
            status = (await daemon.get_connection_status())["reload"]
            socket_kept = await trio.Path(socket_path).exists()
            socket_kept &= not await trio.Path(workdir / "other.sock").exists()
            summary = daemon.summary()
    assert outcome.ok
    assert outcome.needs_restart == (
        f"unix.path: {socket_path!r} → {str(workdir / 'other.sock')!r}",
        "feed.transport: 'native' → 'trio-websocket'",
    )
    assert outcome.applied == (
        "feed.stale_after: 5.0 → 7.0 (health at once, connections from their next attempt)",
        "unix.client_buffer: 10000 → 77 (for subscribers connecting from now on)",
        "unix.max_clients: 256 → 3 (at once)",
    )
    assert runner_settings == {7.0}
    assert daemon.config.unix.path == socket_path and daemon.config.feed.transport == "native"
    assert (daemon.publisher.client_buffer, daemon.publisher.max_clients) == (77, 3)
    assert socket_kept
    assert status is not None and status["ok"] and status["needs_restart"] == list(outcome.needs_restart)
    assert summary.endswith("; last reload: 3 change(s) applied; needs a restart: unix.path, feed.transport")


async def test_an_unknown_symbol_in_a_reload_is_reported_while_the_rest_applies(workdir: Path) -> None:
    sim = BinanceSimulator(speed=20.0)
    async with serving(sim), running(spot_config(workdir, sim, "BTCUSDT")) as daemon:
        with trio.fail_after(TIMEOUT):
            await daemon.initialize()
            outcome = await daemon.reload(spot_config(workdir, sim, "BTCUSDT", "NOPEUSDT", "BNBUSDT"))
        subscribed = [s.symbol for s in daemon.venues["binance"].subscriptions()]
    assert outcome.applied == ("binance: BNBUSDT trades: subscribed",)
    (problem,) = outcome.problems
    assert problem.startswith("binance: NOPEUSDT trades: not subscribed: unknown symbol 'NOPEUSDT'")
    assert not outcome.ok
    assert subscribed == ["BNBUSDT", "BTCUSDT"]


async def test_a_reload_while_a_venue_still_loads_its_instrument_list_changes_what_it_will_subscribe(
    workdir: Path,
) -> None:
    sim = BinanceSimulator(speed=20.0)
    rest = trio.socket.socket()  # accepts, answers nothing until the test hangs up
    await rest.bind(("127.0.0.1", 0))
    rest.listen()
    host, port = rest.getsockname()
    with rest:
        async with serving(sim):
            rest_url = f"http://{host}:{port}"
            text = FAST_FEED + venue_section("binance", sim.ws_url, rest_url, ("BTCUSDT", "ETHUSDT"),
                                             'channels = ["trades"]')
            async with running(load_text(workdir, text)) as daemon:
                with trio.fail_after(TIMEOUT):
                    loading, _ = await rest.accept()  # the venue waits for its instrument list
                    outcome = await daemon.reload(load_text(workdir, text.replace('"ETHUSDT"', '"BNBUSDT"')))
                    loading.close()  # no list after all: the symbols go unchecked
                    await daemon.initialize()
                    await sim.wait_subscribed({"btcusdt@trade", "bnbusdt@trade"})
                streams = {s for conn in sim.connections for s in conn.streams}
    assert outcome.applied == (
        "binance: symbols: ('BTCUSDT', 'ETHUSDT') → ('BTCUSDT', 'BNBUSDT') "
        "(applied once its instrument list is in)",
    )
    assert streams == {"btcusdt@trade", "bnbusdt@trade"}
