"""What ``WebSocketService()`` runs when given no config: ``$FEEDD_CONFIG``, the daemon's file,
else built-in defaults; the environment's overrides; a bad file's one error."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedd import WebSocketService
from feedd.config import Config, ConfigError
from feedd.control import defaults
from feedd.exchanges import make_venue, venue_ids

SECTION = '[exchanges.binance]\nsymbols = ["BTCUSDT"]\n'


@pytest.fixture(autouse=True)
def no_system_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The daemon's file is a path in this test's directory (absent unless a test writes it)."""
    path = tmp_path / "etc-feedd-config.toml"
    monkeypatch.setattr(defaults, "SYSTEM_CONFIG", path)
    for name in ("FEEDD_CONFIG", "ENABLE_WEBSOCKET_FEED", "WEBSOCKET_RECONNECT_INTERVAL",
                 "MAX_WEBSOCKET_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    return path


def test_without_a_file_every_venue_runs_with_no_symbols_at_its_real_endpoints() -> None:
    config = defaults.discover_config({})
    assert config.source == "<built-in defaults>"
    assert sorted(config.exchanges) == sorted(venue_ids())
    for venue_id, exchange in config.exchanges.items():
        assert exchange.enabled and exchange.symbols == ()
        assert exchange.url is None and exchange.rest_url is None  # the venue's own endpoints
        assert make_venue(venue_id).default_url.startswith("wss://")
    assert config.nats is None


def test_the_built_in_defaults_keep_their_files_in_the_users_state_and_cache_dirs() -> None:
    xdg = defaults.builtin_config({"XDG_STATE_HOME": "/x/state", "XDG_CACHE_HOME": "/x/cache"})
    assert xdg.feed.state_file == "/x/state/feedd/subscriptions.json"
    assert xdg.feed.cache_dir == "/x/cache/feedd"
    home = defaults.builtin_config({"XDG_STATE_HOME": "relative/ignored"})
    assert home.feed.state_file == str(Path.home() / ".local/state/feedd/subscriptions.json")
    assert home.feed.cache_dir == str(Path.home() / ".cache/feedd")


def test_the_environment_overrides_the_built_in_defaults_as_for_the_daemon() -> None:
    config = defaults.builtin_config({"ENABLE_WEBSOCKET_FEED": "false", "WEBSOCKET_RECONNECT_INTERVAL": "2.5",
                                      "MAX_WEBSOCKET_RETRIES": "3"})
    assert (config.feed.enabled, config.feed.reconnect_interval, config.feed.max_retries) == (False, 2.5, 3)


def test_feedd_config_names_the_file_and_the_environment_overrides_it(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(SECTION, encoding="utf-8")
    config = defaults.discover_config({"FEEDD_CONFIG": str(path), "MAX_WEBSOCKET_RETRIES": "4"})
    assert config.source == str(path) and list(config.exchanges) == ["binance"]
    assert config.feed.max_retries == 4


def test_the_daemons_file_is_used_when_it_exists_and_feedd_config_is_not_set(no_system_file: Path) -> None:
    no_system_file.write_text(SECTION, encoding="utf-8")
    assert defaults.discover_config({}).source == str(no_system_file)
    other = no_system_file.with_name("other.toml")
    other.write_text("", encoding="utf-8")
    assert defaults.discover_config({"FEEDD_CONFIG": str(other)}).source == str(other)


def test_a_bad_file_raises_one_error_naming_the_file_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[feed]\nreconnect_interval = "soon"\n', encoding="utf-8")
    monkeypatch.setenv("FEEDD_CONFIG", str(path))
    with pytest.raises(ConfigError) as raised:
        WebSocketService()
    assert str(raised.value).startswith(f"{path}: feed.reconnect_interval: ")
    with pytest.raises(ConfigError, match=r"bad\.toml: feed\.reconnect_interval"):
        WebSocketService(path)


def test_a_path_or_a_config_is_taken_as_given(tmp_path: Path) -> None:
    path = tmp_path / "given.toml"
    path.write_text(SECTION, encoding="utf-8")
    assert WebSocketService(str(path)).config.source == str(path)
    assert WebSocketService(path).config.exchanges["binance"].symbols == ("BTCUSDT",)
    config = Config()
    assert WebSocketService(config).config is config
    with pytest.raises(TypeError, match=r"expected a feedd\.config\.Config, a path or None"):
        WebSocketService(42)  # type: ignore[arg-type]


def test_an_empty_feedd_config_counts_as_unset() -> None:
    assert defaults.discover_config({"FEEDD_CONFIG": " "}).source == "<built-in defaults>"
