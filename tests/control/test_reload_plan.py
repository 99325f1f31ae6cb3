"""What a reload changes: the plan from the running config to the new one (pure)."""

from __future__ import annotations

from typing import Any

from feedd.config import Config, parse_config
from feedd.control.reload import ReloadOutcome, plan_reload


def config(**sections: Any) -> Config:
    data: dict[str, Any] = {"exchanges": {"binance": {"symbols": ["BTCUSDT", "ETHUSDT"]}}}
    for key, value in sections.items():
        data[key] = value
    return parse_config(data, "test.toml")


def venues(**exchanges: Any) -> dict[str, Any]:
    return exchanges


def test_nothing_changed_plans_nothing() -> None:
    plan = plan_reload(config(), config())
    assert plan.venues == ()
    assert plan.applied == ()
    assert plan.needs_restart == ()
    assert plan.config == config()


def test_added_and_removed_symbols_and_channels_become_live_subscribes_and_unsubscribes() -> None:
    old = config(exchanges=venues(
        binance={"symbols": ["BTCUSDT", "ETHUSDT"], "channels": ["trades", "ticker"]}
    ))
    new = config(exchanges=venues(binance={"symbols": ["BTCUSDT", "BNBUSDT"], "channels": ["trades"]}))
    (step,) = plan_reload(old, new).venues
    assert step.venue == "binance"
    assert step.action == "update"
    assert step.subscribe == {"BNBUSDT": ("trades",)}
    assert step.unsubscribe == {"BTCUSDT": ("ticker",), "ETHUSDT": ("trades", "ticker")}


def test_symbols_are_compared_as_the_venue_spells_them() -> None:
    old = config(exchanges=venues(binance={"symbols": ["BTCUSDT"]}))
    new = config(exchanges=venues(binance={"symbols": ["btcusdt"]}))
    assert plan_reload(old, new).venues == ()


def test_venues_start_stop_and_restart_as_the_config_says() -> None:
    old = config(exchanges=venues(
        binance={"symbols": ["BTCUSDT"]},
        bybit={"symbols": ["BTCUSDT"]},
        coinbase={"symbols": ["BTC-USD"]},
        **{"binance-usdm": {"symbols": ["BTCUSDT"], "enabled": False}},
    ))
    new = config(exchanges=venues(
        binance={"symbols": ["BTCUSDT"], "url": "ws://127.0.0.1:9001/stream"},
        bybit={"symbols": ["BTCUSDT"], "enabled": False},
        **{"binance-usdm": {"symbols": ["BTCUSDT"]}, "bybit-linear": {"symbols": ["BTCUSDT"]}},
    ))
    steps = {s.venue: (s.action, s.why) for s in plan_reload(old, new).venues}
    assert steps == {
        "binance": ("restart", "url: None → 'ws://127.0.0.1:9001/stream'"),
        "bybit": ("stop", "enabled = false"),
        "coinbase": ("stop", "removed from the config"),
        "binance-usdm": ("start", "enabled"),
        "bybit-linear": ("start", "added to the config"),
    }


def test_disabling_the_feed_stops_every_venue_and_enabling_it_starts_them() -> None:
    on = config()
    off = config(feed={"enabled": False})
    assert [(s.venue, s.action, s.why) for s in plan_reload(on, off).venues] == [
        ("binance", "stop", "the feed is disabled")
    ]
    assert [(s.venue, s.action) for s in plan_reload(off, on).venues] == [("binance", "start")]
    assert "feed.enabled: True → False" in plan_reload(on, off).applied


def test_settings_that_need_a_restart_are_reported_and_kept_as_they_run() -> None:
    old = config(unix={"path": "/run/feedd/feedd.sock"}, http={"listen": "127.0.0.1:8080", "token": "old"})
    new = config(
        unix={"path": "/run/feedd/other.sock"},
        http={"listen": "127.0.0.1:9090", "token": "new-secret"},
        feed={"transport": "trio-websocket", "state_file": "/var/lib/x.json", "cache_dir": "/var/cache/x"},
    )
    plan = plan_reload(old, new)
    assert plan.needs_restart == (
        "unix.path: '/run/feedd/feedd.sock' → '/run/feedd/other.sock'",
        "http.listen: '127.0.0.1:8080' → '127.0.0.1:9090'",
        "http.token: changed",
        "feed.transport: 'native' → 'trio-websocket'",
        "feed.state_file: 'subscriptions.json' → '/var/lib/x.json'",
        "feed.cache_dir: 'cache' → '/var/cache/x'",
    )
    assert "new-secret" not in repr(plan.needs_restart)
    assert plan.config.unix.path == "/run/feedd/feedd.sock"
    assert plan.config.http == old.http
    assert (plan.config.feed.transport, plan.config.feed.state_file, plan.config.feed.cache_dir) == (
        "native", "subscriptions.json", "cache"
    )


def test_settings_that_change_live_are_applied_and_say_how_far() -> None:
    old = config()
    new = config(feed={"stale_after": 10.0, "reconnect_interval": 1.0}, unix={"client_buffer": 500})
    plan = plan_reload(old, new)
    assert plan.applied == (
        "feed.reconnect_interval: 5.0 → 1.0 (from each connection's next attempt)",
        "feed.stale_after: 30.0 → 10.0 (health at once, connections from their next attempt)",
        "unix.client_buffer: 10000 → 500 (for subscribers connecting from now on)",
    )
    assert plan.config.feed.stale_after == 10.0
    assert plan.needs_restart == ()


def test_quote_max_age_is_a_live_venue_update_without_subscription_changes() -> None:
    old = config()
    new = config(exchanges=venues(binance={"symbols": ["BTCUSDT", "ETHUSDT"], "quote_max_age": 2.0}))
    plan = plan_reload(old, new)
    (step,) = plan.venues
    assert (step.action, step.subscribe, step.unsubscribe) == ("update", {}, {})
    assert step.why == "quote_max_age: 5.0 → 2.0"
    assert plan.applied == ("exchanges.binance.quote_max_age: 5.0 → 2.0 (at once)",)


def test_an_outcome_sums_itself_up_in_one_line() -> None:
    refused = ReloadOutcome("c.toml", error="c.toml: feed.max_retries: expected int")
    assert refused.summary() == (
        "reload failed, running on the previous config: c.toml: feed.max_retries: expected int"
    )
    assert not refused.ok
    done = ReloadOutcome(
        "c.toml",
        applied=("binance: BNBUSDT trades: subscribed",),
        needs_restart=("unix.path: 'a' → 'b'", "http.listen: 'x' → 'y'"),
        problems=("binance: NOPE trades: not subscribed: unknown symbol 'NOPE'",),
    )
    assert done.summary() == (
        "1 change(s) applied; 1 problem(s): binance: NOPE trades: not subscribed: unknown symbol 'NOPE'; "
        "needs a restart: unix.path, http.listen"
    )
    assert done.snapshot()["ok"] is False
