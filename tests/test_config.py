"""Configuration: TOML into frozen attrs classes, environment overrides, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from feedd.cli import main
from feedd.config import ConfigError, apply_environment, load_config

GOOD = """
[feed]
reconnect_interval = 2
max_retries = 3

[unix]
path = "feedd.sock"

[exchanges.binance]
symbols = ["btcusdt", "ETHUSDT", "BTCUSDT"]
channels = ["trades"]
url = "ws://127.0.0.1:9001/stream"

[exchanges.binance-usdm]
symbols = ["BTCUSDT"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ=environ or {})
    return str(info.value)


def test_good_file_structures_into_frozen_classes(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), environ={})
    assert config.feed.reconnect_interval == 2.0
    assert config.feed.max_retries == 3
    assert config.feed.max_backoff == 300.0
    binance = config.exchanges["binance"]
    assert binance.symbols == ("BTCUSDT", "ETHUSDT")  # upper-cased, duplicates dropped
    assert binance.channels == ("trades",)
    assert config.exchanges["binance-usdm"].channels == ("trades", "ticker")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.feed.max_retries = 4  # type: ignore[misc]


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), environ={})
    assert config.unix.path == str(tmp_path / "feedd.sock")
    assert config.feed.cache_dir == str(tmp_path / "cache")


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config.toml.example"
    config = load_config(example, environ={})
    assert "binance" in config.exchanges


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[feed]\nreconect_interval = 1\n", "feed.reconect_interval: unknown key"),
        ("[feed]\nmax_retries = 'ten'\n", "feed.max_retries: expected int"),
        ("[feed]\nmax_retries = true\n", "feed.max_retries: expected int, got a boolean"),
        ("[feed]\nenabled = 'yes'\n", "feed.enabled: expected bool"),
        ("[feed]\nreconnect_interval = -1\n", "feed.reconnect_interval: must be a positive number"),
        ("[feed]\nmax_retries = -1\n", "feed.max_retries: must be 0 or more"),
        ("[feed]\nreconnect_interval = 10\nmax_backoff = 5\n", "max_backoff: must be at least"),
        ("[http]\nlisten = 'localhost'\n", "http.listen: expected HOST:PORT"),
        ("[exchanges.kraken]\nsymbols = ['XBTUSD']\n", "exchanges.kraken: unknown venue id"),
        ("[exchanges.binance]\nsymbols = 'BTCUSDT'\n", "exchanges.binance.symbols"),
        ("[exchanges.binance]\nchannels = ['trades', 'book']\n", "exchanges.binance.channels"),
        ("[exchanges.binance]\nsymbol = ['BTCUSDT']\n", "exchanges.binance.symbol: unknown key"),
        ("[exchanges.binance]\nsymbols = ['BTC USDT']\n", "exchanges.binance.symbols[0]: not a symbol"),
        ("[feeds]\nenabled = true\n", "feeds: unknown key"),
        ("[exchanges.binance-usdm]\nurl = 'wss://fstream.binance.com/stream'\n",
         "exchanges.binance-usdm.url: binance-usdm url"),
        ("[exchanges.binance]\nurl = 'https://stream.binance.com'\n", "exchanges.binance.url: expected a ws://"),
        ("[exchanges.binance]\nrest_url = 'api.binance.com'\n", "binance.rest_url: expected an http"),
        ("[feed\n", "not valid TOML"),
    ],
)
def test_bad_file_names_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(str(tmp_path / "config.toml") + ": ")
    assert expected in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml", environ={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, GOOD),
        environ={
            "ENABLE_WEBSOCKET_FEED": "0",
            "WEBSOCKET_RECONNECT_INTERVAL": "0.5",
            "MAX_WEBSOCKET_RETRIES": "0",
        },
    )
    assert config.feed.enabled is False
    assert config.feed.reconnect_interval == 0.5
    assert config.feed.max_retries == 0


def test_reconnect_interval_above_ceiling_lifts_the_ceiling(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), environ={"WEBSOCKET_RECONNECT_INTERVAL": "600"})
    assert config.feed.reconnect_interval == 600
    assert config.feed.max_backoff == 600


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ENABLE_WEBSOCKET_FEED", "maybe"),
        ("WEBSOCKET_RECONNECT_INTERVAL", "soon"),
        ("WEBSOCKET_RECONNECT_INTERVAL", "-3"),
        ("MAX_WEBSOCKET_RETRIES", "1.5"),
        ("MAX_WEBSOCKET_RETRIES", "-1"),
    ],
)
def test_bad_environment_value_names_the_variable(tmp_path: Path, name: str, value: str) -> None:
    config = load_config(write(tmp_path, GOOD), environ={})
    with pytest.raises(ConfigError, match=name):
        apply_environment(config, {name: value})


def test_run_exits_2_with_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[feed]\nmax_retries = 'x'\n")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: feed.max_retries" in err
    assert "Traceback" not in err


def test_check_config_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(write(tmp_path, GOOD))]) == 0
    assert "ok" in capsys.readouterr().out
