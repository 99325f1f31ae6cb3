"""End to end through real proxies (tests/proxies.py): Binance's simulator → proxy → daemon → a
Unix-socket subscriber, with the venue's REST instrument list fetched through the same proxy.

HTTP CONNECT through tinyproxy (with Basic credentials; wss with TLS end to end through the
tunnel, the certificate the exchange host's; refusing with 403 and 407), SOCKS5 through
microsocks (with RFC 1929 credentials, and refusing them) and Dante (no authentication; refusing
by its rules), and a proxy that is down. The proxy's own log (tinyproxy, Dante), or the address
its connections come from (microsocks binds 127.0.0.2), shows it carried the connections.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import trio
import trustme
from endtoend import FAST_FEED, Subscriber, load_text, running, serving, short_tempdir, venue_section
from nats_server import free_port
from proxies import dante, established_from, microsocks, tinyproxy

import feedd.wire.transport as transport_module
from feedd.config import Config
from feedd.control.service import WebSocketService
from feedd.feed.status import ConnectionStatus
from feedd.sim import BinanceSimulator

TIMEOUT = 15
SECRET = "s3cr3t-pw"
USER = "feedd-user"


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-p-") as path:
        path.chmod(0o755)
        yield path


def config_for(workdir: Path, sim: BinanceSimulator, proxy: str | None, *, url: str | None = None) -> Config:
    extra = () if proxy is None else (f'proxy = "{proxy}"',)
    return load_text(
        workdir,
        FAST_FEED + venue_section("binance", url or sim.ws_url, sim.rest_url, ("BTCUSDT", "ETHUSDT"), *extra),
    )


async def stream_some(daemon: WebSocketService, count: int = 20) -> None:
    """``count`` records of both kinds reach a subscriber."""
    client = await Subscriber.connect(daemon.config.unix.path)
    kinds: set[str] = set()
    seen = 0

    def enough(record: object) -> bool:
        nonlocal seen
        seen += 1
        kinds.add(getattr(record, "kind", ""))
        return seen >= count and kinds == {"trade", "ticker"}

    await client.until(enough)  # type: ignore[arg-type]


class Failures(logging.Handler):
    """Counts the runner's "reconnecting in" warnings as they are logged (in trio's thread) and
    wakes the test at each: waiting for failures is waiting on an event, not polling."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "reconnecting in" in record.getMessage():
            self.count += 1
            self.changed.set()
            self.changed = trio.Event()


@pytest.fixture
def failures() -> Iterator[Failures]:
    handler = Failures()
    logging.getLogger("feedd").addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger("feedd").removeHandler(handler)


async def failing_connection(
    daemon: WebSocketService, failures: Failures, count: int = 2
) -> ConnectionStatus:
    """The venue's connection once it has failed ``count`` times in a row."""
    while failures.count < count:
        await failures.changed.wait()
    return next(iter(daemon.statuses["binance"].connections.values()))


def no_secret_anywhere(daemon: WebSocketService, caplog: pytest.LogCaptureFixture) -> None:
    """Neither the logs nor the status report shows the proxy's password or user name."""
    report = orjson.dumps(daemon.statuses["binance"].snapshot()).decode()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for text in (report, logged):
        assert SECRET not in text and USER not in text


# ---- HTTP CONNECT (tinyproxy) -----------------------------------------------------------------


async def test_a_venue_streams_through_an_http_proxy_with_credentials_and_fetches_its_list_there(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = BinanceSimulator(speed=20.0)
    with tinyproxy(workdir, auth=(USER, SECRET)) as proxy:
        async with serving(sim), running(
            config_for(workdir, sim, f"http://{USER}:{SECRET}@{proxy.address}")
        ) as daemon:
            with trio.fail_after(TIMEOUT):
                await stream_some(daemon)
            status = daemon.statuses["binance"]
            snapshot = status.snapshot()
            no_secret_anywhere(daemon, caplog)
            instruments = daemon.venues["binance"].instruments
        seen = proxy.log()
    ws_port, rest_port = sim.ws_url.split(":")[2].split("/")[0], sim.rest_url.rsplit(":", 1)[1]
    assert f"CONNECT 127.0.0.1:{ws_port} HTTP/1.1" in seen
    assert f"GET http://127.0.0.1:{rest_port}/api/v3/exchangeInfo" in seen
    assert instruments.source == "rest"
    assert snapshot["proxy"] == snapshot["rest_proxy"] == f"http://{proxy.address}"
    assert snapshot["connections"][0]["proxy"] == f"http://{proxy.address}"
    assert status.reconnects == 0


@pytest.fixture
def localhost_tls(monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context whose certificate is for the name ``localhost`` only (not 127.0.0.1), and
    a client context trusting its CA: a connection that checks any other name fails."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    monkeypatch.setattr(transport_module, "_default_ssl_context", lambda: client)
    return server


async def test_wss_runs_tls_end_to_end_through_the_tunnel_with_the_exchange_hosts_certificate(
    workdir: Path, localhost_tls: ssl.SSLContext
) -> None:
    sim = BinanceSimulator(speed=20.0, ssl_context=localhost_tls)
    with tinyproxy(workdir) as proxy:
        async with serving(sim):
            url = sim.ws_url.replace("127.0.0.1", "localhost")
            async with running(config_for(workdir, sim, f"http://{proxy.address}", url=url)) as daemon:
                with trio.fail_after(TIMEOUT):
                    await stream_some(daemon)
                reconnects = daemon.statuses["binance"].reconnects
        seen = proxy.log()
    assert url.startswith("wss://localhost:")
    assert f"CONNECT localhost:{url.split(':')[2].split('/')[0]} HTTP/1.1" in seen  # the proxy resolves
    assert sim.tls_failures == 0 and reconnects == 0


async def test_a_proxy_refusing_connect_is_a_connection_failure_naming_it(
    workdir: Path, caplog: pytest.LogCaptureFixture, failures: Failures
) -> None:
    sim = BinanceSimulator(speed=20.0)
    with tinyproxy(workdir, connect_ports=(1,)) as proxy:  # CONNECT to port 1 only
        async with serving(sim), running(config_for(workdir, sim, f"http://{proxy.address}")) as daemon:
            with trio.fail_after(TIMEOUT):
                conn = await failing_connection(daemon, failures)
            state = daemon.statuses["binance"].state
    target = sim.ws_url.split("/")[2]
    assert conn.last_error == f"proxy {proxy.address} refused CONNECT {target}: 403 Access violation"
    assert state in ("backoff", "connecting")
    assert sim.connections_accepted == 0
    logged = [r.getMessage() for r in caplog.records if "refused CONNECT" in r.getMessage()]
    assert logged and all("reconnecting in" in line for line in logged)
    assert len(logged) <= conn.consecutive_failures + 1  # one line per failed attempt


async def test_a_proxy_asking_for_credentials_is_a_failure_that_says_so(
    workdir: Path, caplog: pytest.LogCaptureFixture, failures: Failures
) -> None:
    sim = BinanceSimulator(speed=20.0)
    with tinyproxy(workdir, auth=(USER, SECRET)) as proxy:
        async with serving(sim):
            async with running(config_for(workdir, sim, f"http://{proxy.address}")) as daemon:
                with trio.fail_after(TIMEOUT):
                    conn = await failing_connection(daemon, failures)
            assert conn.last_error is not None
            assert "407 Proxy Authentication Required; no credentials configured" in conn.last_error
            async with running(
                config_for(workdir, sim, f"http://{USER}:wrong-{SECRET}@{proxy.address}")
            ) as daemon:
                with trio.fail_after(TIMEOUT):
                    conn = await failing_connection(daemon, failures, failures.count + 2)
                no_secret_anywhere(daemon, caplog)
    assert conn.last_error is not None
    # tinyproxy answers wrong credentials 401 (not 407): either way, the credentials are named
    assert conn.last_error.endswith("401 Unauthorized; the credentials were not accepted")
    assert conn.last_error.startswith(f"proxy {proxy.address} refused CONNECT 127.0.0.1:")


async def test_a_proxy_that_is_down_is_a_connection_failure_naming_it(
    workdir: Path, failures: Failures
) -> None:
    sim = BinanceSimulator(speed=20.0)
    nothing = f"127.0.0.1:{free_port()}"
    async with serving(sim), running(config_for(workdir, sim, f"http://{nothing}")) as daemon:
        with trio.fail_after(TIMEOUT):
            conn = await failing_connection(daemon, failures)
        instruments = daemon.venues["binance"].instruments
    assert conn.last_error is not None
    assert conn.last_error.startswith(f"cannot reach proxy {nothing}: ConnectionRefusedError")
    assert instruments.source != "rest"  # the REST call went to the proxy too, and failed
    assert instruments.error is not None


async def test_the_environments_http_proxy_is_honoured_when_nothing_is_configured(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = BinanceSimulator(speed=20.0)
    with tinyproxy(workdir) as proxy:
        monkeypatch.setenv("http_proxy", f"http://{proxy.address}")
        async with serving(sim), running(config_for(workdir, sim, None)) as daemon:
            with trio.fail_after(TIMEOUT):
                await stream_some(daemon)
            snapshot = daemon.statuses["binance"].snapshot()
        seen = proxy.log()
    assert snapshot["proxy"] == f"env http_proxy: http://{proxy.address}"
    assert f"CONNECT {sim.ws_url.split('/')[2]} HTTP/1.1" in seen
    assert "/api/v3/exchangeInfo" in seen


async def test_an_empty_proxy_goes_direct_whatever_the_environment_says(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = BinanceSimulator(speed=20.0)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    async with serving(sim), running(config_for(workdir, sim, "")) as daemon:
        with trio.fail_after(TIMEOUT):
            await stream_some(daemon)
        snapshot = daemon.statuses["binance"].snapshot()
        instruments = daemon.venues["binance"].instruments
    assert snapshot["proxy"] == "direct" and instruments.source == "rest"


# ---- SOCKS5 (microsocks, Dante) ---------------------------------------------------------------


async def test_a_venue_streams_through_a_socks5_proxy_with_credentials(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = BinanceSimulator(speed=20.0)
    with microsocks(auth=(USER, SECRET), bind="127.0.0.2") as proxy:
        async with serving(sim), running(
            config_for(workdir, sim, f"socks5h://{USER}:{SECRET}@{proxy.address}")
        ) as daemon:
            with trio.fail_after(TIMEOUT):
                await stream_some(daemon)
            peers = established_from(int(sim.ws_url.split(":")[2].split("/")[0]))
            snapshot = daemon.statuses["binance"].snapshot()
            instruments = daemon.venues["binance"].instruments
            no_secret_anywhere(daemon, caplog)
    assert peers == {"127.0.0.2"}  # the proxy's outgoing address, not ours
    assert snapshot["proxy"] == f"socks5://{proxy.address}" and snapshot["reconnects"] == 0
    assert instruments.source == "rest"


async def test_a_socks5_proxy_rejecting_the_credentials_is_a_failure_naming_it(
    workdir: Path, caplog: pytest.LogCaptureFixture, failures: Failures
) -> None:
    sim = BinanceSimulator(speed=20.0)
    with microsocks(auth=(USER, SECRET)) as proxy:
        async with serving(sim), running(
            config_for(workdir, sim, f"socks5://{USER}:wrong-{SECRET}@{proxy.address}")
        ) as daemon:
            with trio.fail_after(TIMEOUT):
                conn = await failing_connection(daemon, failures)
            no_secret_anywhere(daemon, caplog)
    assert conn.last_error is not None
    assert conn.last_error.startswith(f"proxy {proxy.address} refused CONNECT 127.0.0.1:")
    assert conn.last_error.endswith("username/password authentication failed (status 2)")


async def test_a_venue_streams_through_dante_and_fetches_its_list_there(workdir: Path) -> None:
    sim = BinanceSimulator(speed=20.0)
    with dante(workdir) as proxy:
        async with serving(sim), running(config_for(workdir, sim, f"socks5://{proxy.address}")) as daemon:
            with trio.fail_after(TIMEOUT):
                await stream_some(daemon)
            instruments = daemon.venues["binance"].instruments
        seen = proxy.log()
    ws_port, rest_port = sim.ws_url.split(":")[2].split("/")[0], sim.rest_url.rsplit(":", 1)[1]
    assert f"127.0.0.1.{ws_port}" in seen and f"127.0.0.1.{rest_port}" in seen
    assert instruments.source == "rest"


async def test_a_socks5_proxy_refusing_by_its_rules_is_a_failure_in_rfc_1928_words(
    workdir: Path, failures: Failures
) -> None:
    sim = BinanceSimulator(speed=20.0)
    with dante(workdir, block=True) as proxy:
        async with serving(sim), running(config_for(workdir, sim, f"socks5://{proxy.address}")) as daemon:
            with trio.fail_after(TIMEOUT):
                conn = await failing_connection(daemon, failures)
    assert conn.last_error == (
        f"proxy {proxy.address} refused CONNECT {sim.ws_url.split('/')[2]}: connection not allowed by "
        "ruleset (SOCKS5 reply 2)"
    )
    assert sim.connections_accepted == 0
