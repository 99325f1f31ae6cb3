"""``feedd run`` in its own process, fed by ``python -m feedd.sim``: fuzzed requests, the command
line's ``status`` / ``subscribe`` / ``unsubscribe``, and start-up failures of the HTTP API.

Synchronous on purpose: Hypothesis drives one request per example with a blocking client, which
needs the daemon in another process. Every wait reads a pipe or a socket with a deadline.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import attrs
import httpx
import orjson
import pytest
from harness import API, temporary_workdir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedd.cli.main import main
from feedd.fanout.lines import decode_record
from feedd.sim.binance import BREAK_SYMBOL, DEFAULT_SYMBOLS

TIMEOUT = 20.0
#: symbols a fuzzed request must not name: subscribing one would succeed, and change the state
LISTED = {s.upper() for s in (*DEFAULT_SYMBOLS, BREAK_SYMBOL)}


class Lines:
    """Lines of a child's pipe as they arrive: ``select`` with a deadline, never a sleep."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.fd = stream.fileno()
        self.buffer = b""
        self.seen: list[str] = []

    def until(self, wanted: Callable[[str], bool], deadline: float) -> str:
        """The first line ``wanted`` accepts."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.fd, selectors.EVENT_READ)
            while True:
                while b"\n" in self.buffer:
                    raw, self.buffer = self.buffer.split(b"\n", 1)
                    line = raw.decode(errors="replace")
                    self.seen.append(line)
                    if wanted(line):
                        return line
                left = deadline - time.monotonic()
                said = "\n".join(self.seen)
                assert left > 0 and selector.select(left), f"not seen in time; got:\n{said}"
                data = os.read(self.fd, 65536)
                assert data, f"the process ended; it said:\n{said}"
                self.buffer += data


@attrs.frozen
class Running:
    url: str
    socket_path: str
    workdir: Path
    daemon: subprocess.Popen[bytes]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    with temporary_workdir() as workdir:
        deadline = time.monotonic() + TIMEOUT
        sim = subprocess.Popen([sys.executable, "-m", "feedd.sim", "binance", "--speed", "20"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert sim.stdout is not None
            said = Lines(sim.stdout)
            ws_url = said.until(lambda s: s.startswith("ws_url "), deadline).split()[1]
            rest_url = said.until(lambda s: s.startswith("rest_url "), deadline).split()[1]
            (workdir / "config.toml").write_text(f"""
[feed]
cache_dir = "cache"
[http]
listen = "127.0.0.1:0"
[unix]
path = "feedd.sock"
[exchanges.binance]
symbols = ["BTCUSDT"]
url = "{ws_url}"
rest_url = "{rest_url}"
""", encoding="utf-8")
            command = [sys.executable, "-m", "feedd", "run", "-c", str(workdir / "config.toml")]
            daemon = subprocess.Popen(command, stderr=subprocess.PIPE)
            try:
                assert daemon.stderr is not None
                line = Lines(daemon.stderr).until(lambda s: "HTTP API http://" in s, deadline)
                url = line.split("HTTP API ")[1].split()[0].rstrip(",")
                yield Running(url, str(workdir / "feedd.sock"), workdir, daemon)
            finally:
                _stop(daemon)
        finally:
            _stop(sim)


@pytest.fixture(scope="module")
def api(running: Running) -> Iterator[httpx.Client]:
    """One client for every example: a new one costs more than the request."""
    with httpx.Client(base_url=running.url, timeout=TIMEOUT) as client:
        yield client


def record_after(socket_path: str, moment: datetime) -> dict[str, Any]:
    """A record the daemon read after ``moment``: proof it still streams."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect(socket_path)
        client.sendall(b"{}\n")
        buffer = b""
        while True:
            while b"\n" not in buffer:
                data = client.recv(65536)
                assert data, "the daemon closed the socket"
                buffer += data
            line, buffer = buffer.split(b"\n", 1)
            record = decode_record(line)
            if record.received_at > moment:
                return orjson.loads(line)  # type: ignore[no-any-return]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
unlisted = st.text(max_size=70).filter(lambda s: s.upper() not in LISTED)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "exchange": st.sampled_from(["binance", "binance-usdm", "kraken", "", "BINANCE"]) | json_values,
        "symbol": unlisted | json_values,
        "channels": st.lists(st.sampled_from(["trades", "ticker", "book", ""]), max_size=3) | json_values,
        "extra": json_values,
    },
)
bodies = st.binary(max_size=200) | json_values.map(orjson.dumps) | near_valid.map(orjson.dumps)
queries = st.dictionaries(st.sampled_from(["exchange", "symbol", "channels", "limit"]), unlisted, max_size=4)
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def check_refused(answer: httpx.Response) -> None:
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    error = answer.json()["error"]
    assert isinstance(error, str) and error


class TestFuzzedRequests:
    """Run in order: the fuzzing first, then the proof that nothing it sent did harm."""

    @FUZZ
    @given(body=bodies)
    def test_fuzzed_subscribe_bodies_get_a_4xx(self, api: httpx.Client, body: bytes) -> None:
        check_refused(api.post(f"{API}/subscribe", content=body))

    @FUZZ
    @given(body=bodies | st.just(b""), query=queries)
    def test_fuzzed_unsubscribes_get_a_4xx(
        self, api: httpx.Client, body: bytes, query: dict[str, str]
    ) -> None:
        check_refused(api.request("DELETE", f"{API}/unsubscribe", params=query, content=body))

    def test_after_the_fuzzing_the_daemon_streams_with_its_subscriptions_intact(
        self, running: Running
    ) -> None:
        fuzzed = datetime.now(UTC)
        record = record_after(running.socket_path, fuzzed)
        status = httpx.get(f"{running.url}{API}/status", timeout=TIMEOUT).json()
        assert running.daemon.poll() is None
        assert record["exchange"] == "binance" and record["symbol"] == "BTCUSDT"
        binance = status["exchanges"]["binance"]
        assert [s["symbol"] for s in binance["subscriptions"]] == ["BTCUSDT"]
        assert binance["reconnects"] == 0
        assert status["state_file"]["problem"] is None


def feedd(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_feedd_status_prints_a_table_and_json(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    code, table, _ = feedd(capsys, "status", "--url", running.url)
    assert code == 0
    lines = table.splitlines()
    assert lines[0].startswith(f"feedd at {running.url}: ")
    assert lines[1].split()[:4] == ["VENUE", "STATE", "CONNS", "SUBS"]
    row = next(line for line in lines if line.startswith("binance "))
    assert row.split()[1] == "connected" and row.split()[3] == "2"
    assert "binance: BTCUSDT (trades+ticker)" in table
    code, text, _ = feedd(capsys, "status", "--url", running.url, "--json")
    assert code == 0 and orjson.loads(text)["exchanges"]["binance"]["state"] == "connected"


def test_feedd_subscribe_and_unsubscribe_change_the_running_daemon(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ("--url", running.url)
    code, out, _ = feedd(capsys, "subscribe", "binance", "solusdt", "--channels", "trades", *url)
    assert (code, out) == (0, "binance SOLUSDT: subscribed trades; now: trades\n")
    code, out, _ = feedd(capsys, "subscribe", "binance", "SOLUSDT", "--channels", "trades", *url)
    assert (code, out) == (0, "binance SOLUSDT: subscribed nothing new (already so); now: trades\n")
    code, out, _ = feedd(capsys, "unsubscribe", "binance", "SOLUSDT", "--url", running.url, "--json")
    assert code == 0 and orjson.loads(out)["removed"] == ["trades"]
    code, _, err = feedd(capsys, "unsubscribe", "binance", "SOLUSDT", "--url", running.url)
    assert code == 1 and err == "feedd unsubscribe: HTTP 404: binance: SOLUSDT is not subscribed\n"
    code, _, err = feedd(capsys, "subscribe", "binance", "NOPEUSDT", "--url", running.url)
    assert code == 1 and "HTTP 404: binance: unknown symbol 'NOPEUSDT'" in err


def test_feedd_status_takes_the_address_from_a_config_file(
    running: Running, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = running.url.rpartition(":")[2]
    (tmp_path / "c.toml").write_text(f'[http]\nlisten = "127.0.0.1:{port}"\n', encoding="utf-8")
    code, out, _ = feedd(capsys, "status", "--config", str(tmp_path / "c.toml"))
    assert code == 0 and out.startswith(f"feedd at http://127.0.0.1:{port}: ")
    (tmp_path / "zero.toml").write_text('[http]\nlisten = "127.0.0.1:0"\n', encoding="utf-8")
    code, _, err = feedd(capsys, "status", "--config", str(tmp_path / "zero.toml"))
    assert code == 2 and "port 0" in err and "--url" in err


def test_feedd_status_says_which_address_it_could_not_reach(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as unused:  # bound, not listening: connecting is refused
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
        code, out, err = feedd(capsys, "status", "--url", url)
    assert code == 1 and out == ""
    assert err.startswith(f"feedd status: cannot connect to the feedd HTTP API at {url} (connection refused)")


def test_a_taken_http_port_stops_feedd_run_with_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(f'[http]\nlisten = "127.0.0.1:{port}"\n[unix]\npath = "{tmp_path}/s.sock"\n'
                          '[exchanges.binance]\nsymbols = ["BTCUSDT"]\ncheck_symbols = false\n'
                          'url = "ws://127.0.0.1:9/stream"\n', encoding="utf-8")
        result = subprocess.run([sys.executable, "-m", "feedd", "run", "-c", str(config)],
                                capture_output=True, text=True, timeout=TIMEOUT, check=False,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 1
    assert f"cannot start: cannot listen on 127.0.0.1:{port} ([http] listen): " in result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.sock").exists()
