"""Configuration: TOML into frozen attrs classes, environment overrides, errors naming the key."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import feedd.exchanges
import feedd.ops.daemon
from feedd.cli.main import main
from feedd.config import ConfigError, apply_environment, config_warnings, load_config
from feedd.exchanges.base import Subscription, Topic

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


@pytest.fixture(autouse=True)
def keep_logging_levels() -> Iterator[None]:
    """main() sets logger levels, as a command line does; other tests must not inherit them."""
    loggers = [logging.getLogger(), logging.getLogger("feedd")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


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
        ("[feed]\ninstruments_wait = -1\n", "feed.instruments_wait: must be 0 or a positive number"),
        ("[feed]\ninstruments_refresh = nan\n", "feed.instruments_refresh: must be 0 or a positive"),
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
        ("[exchanges.binance]\nurl = 'ws://127.0.0.1:99999/stream'\n", "exchanges.binance.url: port"),
        ("[exchanges.binance]\nurl = 'ws://127.0.0.1:abc/stream'\n", "exchanges.binance.url: port"),
        ("[exchanges.binance]\nurl = 'ws://127.0.0.1:0/stream'\n", "exchanges.binance.url: port"),
        ("[exchanges.binance]\nurl = 'ws://'\n", "exchanges.binance.url: no host"),
        ("[exchanges.binance]\nurl = 'ws:///stream'\n", "exchanges.binance.url: no host"),
        ("[exchanges.binance]\nurl = 'ws://:9001/stream'\n", "exchanges.binance.url: no host"),
        ("[exchanges.binance]\nurl = 'ws://[::1/stream'\n", "exchanges.binance.url: not a URL"),
        ("[exchanges.binance]\nurl = '[::1'\n", "exchanges.binance.url"),
        ("[exchanges.binance]\nurl = 'wss://stream binance.com/stream'\n", "url: a URL cannot contain"),
        ("[exchanges.binance]\nurl = \"wss://h\\u0000/stream\"\n", "binance.url: a URL cannot contain"),
        ("[exchanges.binance]\nsymbols = [\"BTC\\u0000\"]\n", "exchanges.binance.symbols[0]: not a symbol"),
        ("feed = []\n", "feed: expected a table, got list"),
        ("feed = 5\n", "feed: expected a table, got int"),
        ("exchanges = {binance = 5}\n", "exchanges.binance: expected a table, got int"),
        ("[unix]\npath = ''\n", "unix.path: expected a file path"),
        ("[unix]\npath = \"a\\u0000b\"\n", "unix.path: expected a file path"),
        ("[feed]\nstate_file = '~no-such-user-feedd/x'\n", "feed.state_file: cannot expand"),
        ("[exchanges.binance]\nrest_url = 'http://127.0.0.1:99999'\n", "exchanges.binance.rest_url: port"),
        ("[exchanges.binance]\nrest_url = 'https://api.binance.com:abc'\n", "binance.rest_url: port"),
        ("[exchanges.binance]\nrest_url = 'http://'\n", "exchanges.binance.rest_url: no host"),
        ("[exchanges.binance]\nrest_url = 'https://[::1'\n", "exchanges.binance.rest_url: not a URL"),
        ("[http]\nlisten = '[::1:8080'\n", "http.listen: expected HOST:PORT"),
        ("[http]\nlisten = '127.0.0.1:99999'\n", "http.listen: expected HOST:PORT"),
        (f"[unix]\npath = '/tmp/{'s' * 110}.sock'\n", "unix.path: longer than"),
        ("[exchanges.binance]\nrotate_after = -5\n", "exchanges.binance.rotate_after: must be 0 or more"),
        ("[exchanges.bybit]\nrotate_after = 'daily'\n", "exchanges.bybit.rotate_after"),
    ],
)
def test_bad_file_names_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(str(tmp_path / "config.toml") + ": ")
    assert expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[exchanges.binance]\nurl = 'ws://[::1]:9001/stream'\n", "ws://[::1]:9001/stream"),
        ("[exchanges.binance]\nurl = 'ws://127.0.0.1:65535/stream'\n", "ws://127.0.0.1:65535/stream"),
        ("[exchanges.binance]\nurl = 'wss://stream.binance.com/stream'\n", "wss://stream.binance.com/stream"),
    ],
)
def test_good_urls_pass(tmp_path: Path, text: str, expected: str) -> None:
    assert load_config(write(tmp_path, text), environ={}).exchanges["binance"].url == expected


def test_socket_path_is_checked_after_resolving_it_against_the_config_directory(tmp_path: Path) -> None:
    name = "s" * max(1, 108 - len(str(tmp_path)))  # short as written, too long once resolved
    message = error_of(tmp_path, f"[unix]\npath = '{name}'\n")
    assert f"{tmp_path / 'config.toml'}: unix.path: longer than 107 bytes" in message


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"[feed]\n# caf\xe9\nenabled = true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: not UTF-8")


class TradesOnly:
    """An adapter that has trades and no tickers, as a new exchange might."""

    venue_id = "trades-only"
    default_url = "wss://example.invalid/ws"
    default_rest_url = "https://example.invalid"
    max_streams_per_connection = 100
    max_messages_per_second = 5.0
    ping_interval = None
    uppercase_symbols = True

    def topics(self, subscription: Subscription) -> list[Topic]:
        if subscription.channel != "trades":
            raise ValueError(f"unknown channel {subscription.channel!r}")
        return [Topic("", f"{subscription.symbol}.trades")]

    def url(self, route: str, base_url: str) -> str:
        return base_url

    def new_session(self) -> Any:
        raise NotImplementedError("config checking never opens a session")

    def instruments_path(self) -> str:
        return "/instruments"

    def symbol_problem(self, symbol: str) -> str | None:
        return None

    def parse_instruments(self, body: Any) -> frozenset[str]:
        return frozenset()


@pytest.fixture
def trades_only(monkeypatch: pytest.MonkeyPatch) -> None:
    venues = {**feedd.exchanges.registry(), "trades-only": TradesOnly}
    monkeypatch.setattr(feedd.exchanges, "registry", lambda: venues)


@pytest.mark.usefixtures("trades_only")
def test_adapter_without_tickers_is_checked_only_for_the_channels_configured(tmp_path: Path) -> None:
    text = "[exchanges.trades-only]\nsymbols = ['ABC']\nchannels = ['trades']\n"
    config = load_config(write(tmp_path, text), environ={})
    assert config.exchanges["trades-only"].channels == ("trades",)


@pytest.mark.usefixtures("trades_only")
def test_unsupported_channel_is_refused_by_name(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[exchanges.trades-only]\nsymbols = ['ABC']\n")  # default: both channels
    assert message == (
        f"{tmp_path / 'config.toml'}: exchanges.trades-only.channels: trades-only does not support 'ticker'"
    )


def test_a_symbol_the_venue_would_stream_under_another_name_is_refused_at_load(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[exchanges.coinbase]\nsymbols = ['BTC-USD', 'eth-usdc']\n")
    assert message.startswith(f"{tmp_path / 'config.toml'}: exchanges.coinbase.symbols[1]: ETH-USDC ")
    assert "subscribe ETH-USD instead" in message
    assert "\n" not in message


def test_empty_symbol_list_loads_with_a_warning(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[exchanges.binance]\nsymbols = []\n"), environ={})
    assert config.exchanges["binance"].symbols == ()
    assert config_warnings(config) == [
        f"{tmp_path / 'config.toml'}: exchanges.binance.symbols: empty, so binance opens no connection"
    ]


def test_disabled_venue_without_symbols_is_no_warning(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[exchanges.binance]\nenabled = false\n"), environ={})
    assert config_warnings(config) == []


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
    captured = capsys.readouterr()
    assert "ok" in captured.out
    assert captured.err == ""


@pytest.mark.parametrize(
    "text",
    [
        "[exchanges.binance]\nurl = 'ws://127.0.0.1:99999/stream'\n",
        "[exchanges.binance]\nurl = 'ws://127.0.0.1:abc/stream'\n",
        "[exchanges.binance]\nrest_url = 'http://127.0.0.1:99999'\n",
        "[exchanges.binance]\nrest_url = 'http://127.0.0.1:abc'\n",
        "[exchanges.binance]\nurl = 'ws://'\n",
        "[exchanges.binance]\nurl = 'ws:///stream'\n",
        "[exchanges.binance]\nurl = 'ws://[::1/stream'\n",
        "[exchanges.binance]\nurl = '[::1'\n",
        f"[unix]\npath = '/tmp/{'s' * 110}.sock'\n",
    ],
)
def test_check_config_refuses_what_run_would_fail_on_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith(f"feedd: {path}: ")


def test_check_config_refuses_a_file_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe[feed]\n")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"feedd: {path}: not UTF-8") and len(err.splitlines()) == 1


def test_check_config_warns_of_an_empty_symbol_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[exchanges.binance]\nsymbols = []\n")
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "ok" in captured.out
    assert captured.err == (
        f"feedd: warning: {path}: exchanges.binance.symbols: empty, so binance opens no connection\n"
    )


def test_run_logs_the_warnings_of_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[Any] = []

    async def fake_run(config: Any, path: str | None = None) -> int:
        started.append(config)
        return 0

    monkeypatch.setattr(feedd.ops.daemon, "run_until_signalled", fake_run)
    path = write(tmp_path, "[exchanges.binance]\nsymbols = []\n")
    with caplog.at_level(logging.WARNING, logger="feedd"):
        assert main(["run", "--config", str(path)]) == 0
    assert len(started) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{path}: exchanges.binance.symbols: empty, so binance opens no connection"
    ]


def test_run_that_cannot_start_says_what_happened_even_when_the_error_has_no_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def failing_run(config: Any, path: str | None = None) -> int:
        raise ExceptionGroup("daemon", [ConnectionResetError()])

    monkeypatch.setattr(feedd.ops.daemon, "run_until_signalled", failing_run)
    with caplog.at_level(logging.ERROR, logger="feedd"):
        assert main(["run", "--config", str(write(tmp_path, GOOD))]) == 1
    assert [r.getMessage() for r in caplog.records] == ["cannot start: ConnectionResetError"]
