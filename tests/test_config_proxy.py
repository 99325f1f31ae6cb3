"""The proxy keys: ``[feed] proxy`` and ``[exchanges.<venue>] proxy``, parsed once at load; what
``check-config`` refuses; the environment read only when nothing is configured; a reload that
changes a venue's proxy restarts that venue; the supervisor's routes in the status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from feedd.config import ConfigError, load_config, parse_config, proxy_of
from feedd.control.reload import plan_reload
from feedd.exchanges import make_venue
from feedd.feed.runner import RunnerSettings
from feedd.feed.supervisor import VenueSupervisor
from feedd.model import Ingress
from feedd.wire.proxy import Credentials, ProxyURL

BINANCE = {"symbols": ["BTCUSDT"]}


def parse(feed: dict[str, Any] | None = None, **exchanges: dict[str, Any]) -> Any:
    data: dict[str, Any] = {"exchanges": exchanges or {"binance": BINANCE}}
    if feed is not None:
        data["feed"] = feed
    return parse_config(data, "test.toml")


def test_the_feeds_proxy_is_every_venues_and_a_venue_may_have_its_own_or_none() -> None:
    config = parse(
        {"proxy": "http://alice:pw@127.0.0.1:3128"},
        binance=BINANCE,
        bybit={"symbols": ["BTCUSDT"], "proxy": "socks5h://10.0.0.1:1080"},
        coinbase={"symbols": ["BTC-USD"], "proxy": ""},
    )
    assert config.feed.proxy == ProxyURL("http", "127.0.0.1", 3128, Credentials("alice", "pw"))
    assert proxy_of(config, "binance") == config.feed.proxy
    assert proxy_of(config, "bybit") == ProxyURL("socks5", "10.0.0.1", 1080)
    assert proxy_of(config, "coinbase") == ""
    assert proxy_of(parse(), "binance") is None  # nothing configured: the environment's


@pytest.mark.parametrize(
    ("where", "value", "line"),
    [
        ("feed", "https://127.0.0.1:3128",
         "test.toml: feed.proxy: expected http://[user:pass@]host:port or socks5://[user:pass@]host:port, "
         "got 'https://127.0.0.1:3128'"),
        ("binance", "http://127.0.0.1", "test.toml: exchanges.binance.proxy: no port in 'http://127.0.0.1' "
         "(a proxy URL names its port)"),
        ("feed", 3128, "test.toml: feed.proxy: expected a proxy URL string, got int"),
    ],
)
def test_a_malformed_proxy_is_refused_in_one_line_naming_the_key(where: str, value: Any, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        if where == "feed":
            parse({"proxy": value})
        else:
            parse(binance={**BINANCE, "proxy": value})
    assert str(caught.value) == line


def test_a_refused_proxy_url_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"proxy": "ftp://alice:hunter2@127.0.0.1:21"})
    assert "hunter2" not in str(caught.value) and "'ftp://***@127.0.0.1:21'" in str(caught.value)


def test_check_config_refuses_a_malformed_proxy_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[feed]\nproxy = 'socks4://u:secret@127.0.0.1:1080'\n[exchanges.binance]\nsymbols = ['BTCUSDT']\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "feedd", "check-config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"feedd: {config}: feed.proxy: expected http://[user:pass@]host:port or "
        "socks5://[user:pass@]host:port, got 'socks4://***@127.0.0.1:1080'"
    ]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_an_unusable_environment_proxy_fails_the_load_naming_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[exchanges.binance]\nsymbols = ['BTCUSDT']\n")
    with pytest.raises(ConfigError, match=r"^environment: HTTPS_PROXY: expected http://.* \(used by binance: "
                                          r"no proxy configured\)$"):
        load_config(path, environ={"HTTPS_PROXY": "https://proxy.corp:443"})


def test_a_configured_proxy_leaves_the_environment_unread(tmp_path: Path) -> None:
    for setting in ("''", "'http://127.0.0.1:3128'"):
        path = write(tmp_path, f"[feed]\nproxy = {setting}\n[exchanges.binance]\nsymbols = ['BTCUSDT']\n")
        load_config(path, environ={"HTTPS_PROXY": "https://proxy.corp:443"})  # no error


def test_the_trio_websocket_transport_with_a_proxy_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[feed]\ntransport = 'trio-websocket'\nproxy = 'http://127.0.0.1:3128'\n"
                           "[exchanges.binance]\nsymbols = ['BTCUSDT']\n")
    refused = r"feed\.proxy: the trio-websocket transport cannot go through a proxy"
    with pytest.raises(ConfigError, match=refused):
        load_config(path, environ={})
    path = write(tmp_path, "[feed]\ntransport = 'trio-websocket'\n"
                           "[exchanges.binance]\nsymbols = ['BTCUSDT']\n")
    with pytest.raises(ConfigError, match=r"environment: ALL_PROXY: the trio-websocket transport"):
        load_config(path, environ={"ALL_PROXY": "socks5://127.0.0.1:1080"})


def test_a_reload_changing_a_venues_proxy_restarts_that_venue_without_showing_credentials() -> None:
    old = parse(binance=BINANCE, bybit={"symbols": ["BTCUSDT"], "proxy": ""})
    new = parse({"proxy": "http://alice:hunter2@127.0.0.1:3128"}, binance=BINANCE,
                bybit={"symbols": ["BTCUSDT"], "proxy": ""})
    (step,) = plan_reload(old, new).venues
    assert (step.venue, step.action) == ("binance", "restart")  # bybit keeps its own: none
    assert step.why == "proxy: the environment's → http://127.0.0.1:3128"


def supervisor(proxy: Any, environ: dict[str, str]) -> VenueSupervisor:
    records: trio.MemorySendChannel[Ingress] = trio.open_memory_channel[Ingress](1)[0]
    config = parse(binance=BINANCE).exchanges["binance"]
    return VenueSupervisor(make_venue("binance"), config, RunnerSettings(), cache_dir="cache",
                           records=records, proxy=proxy, environ=environ)


async def test_the_status_shows_the_route_of_the_streams_and_of_rest_without_credentials() -> None:
    configured = supervisor(ProxyURL("http", "127.0.0.1", 3128, Credentials("alice", "pw")), {})
    assert (configured.status.proxy, configured.status.rest_proxy) == ("http://127.0.0.1:3128",) * 2
    env = {"HTTPS_PROXY": "socks5://alice:pw@10.0.0.1:1080", "NO_PROXY": "api.binance.com"}
    from_env = supervisor(None, env)
    assert from_env.status.proxy == "env HTTPS_PROXY: socks5://10.0.0.1:1080"
    assert from_env.status.rest_proxy == "direct (NO_PROXY)"
    assert supervisor("", env).status.snapshot()["proxy"] == "direct"


def test_an_unusable_environment_proxy_outside_load_is_logged_and_goes_direct(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = supervisor(None, {"HTTPS_PROXY": "https://proxy.corp:443"})
    assert sup.status.proxy == "direct (unusable environment proxy)"
    assert any("ignoring the environment's proxy" in r.getMessage() for r in caplog.records)
