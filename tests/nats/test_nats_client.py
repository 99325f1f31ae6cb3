"""feedd's NATS client against a real server: logins, requests, and ``feedd tail --nats``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from nats_server import NatsServer, free_port, nats_server_fixture, server_binary

from feedd.cli.main import main
from feedd.cli.tail_nats import filter_subjects, parse_since, tail_nats
from feedd.config import ConfigError, parse_config
from feedd.control.reload import plan_reload
from feedd.errors import NatsError, NoResponders, TailError
from feedd.nats.auth import encode_public, encode_seed
from feedd.nats.client import Credentials, open_client
from feedd.nats.servers import parse_server
from feedd.sim import BinanceSimulator

TIMEOUT = 30


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    yield from nats_server_fixture(tmp_path)


def started(tmp_path: Path, *extra: str) -> NatsServer:
    binary = server_binary()
    if binary is None:
        pytest.skip("nats-server not installed")
    server = NatsServer(binary, tmp_path / "js", *extra)
    server.start()
    return server


async def test_a_token_logs_in_and_a_wrong_one_is_refused_by_name(tmp_path: Path) -> None:
    server = started(tmp_path, "--auth", "s3cret")
    try:
        address = parse_server(server.url)
        with trio.fail_after(TIMEOUT):
            async with open_client(address, Credentials(token="s3cret")) as client:
                assert client.info.fields["auth_required"] is True
            async with open_client(parse_server(f"nats://s3cret@127.0.0.1:{server.port}")):
                pass
            with pytest.raises(NatsError, match="refused: Authorization Violation"):
                async with open_client(address, Credentials(token="wrong")):
                    pass
    finally:
        server.stop()


async def test_an_nkey_seed_file_signs_the_nonce_and_logs_in(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    user = 20 << 3
    seed = bytes(range(1, 33))
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    public = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    conf = tmp_path / "server.conf"
    conf.write_text(f'authorization {{ users = [ {{ nkey: "{encode_public(user, public)}" }} ] }}\n')
    creds = tmp_path / "user.creds"
    creds.write_text(f"-----BEGIN USER NKEY SEED-----\n{encode_seed(user, seed)}\n"
                     "------END USER NKEY SEED------\n")
    other = tmp_path / "other.creds"
    other.write_text(f"-----BEGIN USER NKEY SEED-----\n{encode_seed(user, bytes(32))}\n"
                     "------END USER NKEY SEED------\n")
    server = started(tmp_path, "-c", str(conf))
    try:
        address = parse_server(server.url)
        with trio.fail_after(TIMEOUT):
            async with open_client(address, Credentials(credentials_file=str(creds))) as client:
                await client.publish("logged.in", b"")  # the server took the signature
            with pytest.raises(NatsError, match="Authorization Violation"):
                async with open_client(address, Credentials(credentials_file=str(other))):
                    pass
    finally:
        server.stop()


async def test_tls_is_used_when_asked_for_or_when_the_server_requires_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    import trustme

    from feedd.nats import client as client_module

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    monkeypatch.setattr(client_module, "_ssl_context", lambda: context)
    server = started(tmp_path, "--tls", "--tlscert", str(tmp_path / "cert.pem"),
                     "--tlskey", str(tmp_path / "key.pem"))
    try:
        with trio.fail_after(TIMEOUT):
            for url in (f"tls://127.0.0.1:{server.port}", server.url):  # the second: INFO says so
                async with open_client(parse_server(url)) as client:
                    assert isinstance(client._stream, trio.SSLStream)
                    with pytest.raises(NoResponders):
                        await client.request("nobody.listens")
            monkeypatch.setattr(client_module, "_ssl_context", ssl.create_default_context)
            with pytest.raises(NatsError, match=r"handshake failed: .*CERTIFICATE_VERIFY_FAILED"):
                async with open_client(parse_server(server.url)):
                    pass
    finally:
        server.stop()


async def test_a_request_nobody_answers_is_no_responders(nats_server: NatsServer) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_client(parse_server(nats_server.url)) as client:
            with pytest.raises(NoResponders):
                await client.request("nobody.listens")


async def test_a_closed_port_is_a_connect_error_naming_the_server() -> None:
    port = free_port()
    with pytest.raises(NatsError, match=f"nats://127.0.0.1:{port}: cannot connect"):
        async with open_client(parse_server(f"127.0.0.1:{port}")):
            pass


async def test_tail_replays_the_filtered_records_from_a_time(nats_server: NatsServer, tmp_path: Path) -> None:
    from feedd.control.service import WebSocketService

    sim = BinanceSimulator(speed=20.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        config = parse_config({
            "feed": {"state_file": str(tmp_path / "s.json"), "cache_dir": str(tmp_path / "cache")},
            "nats": {"servers": [nats_server.url]},
            "exchanges": {"binance": {"symbols": ["BTCUSDT", "ETHUSDT"], "url": sim.ws_url,
                                      "rest_url": sim.rest_url}},
        })
        with trio.fail_after(TIMEOUT):
            async with WebSocketService(config) as ws:
                sink = ws.nats
                assert sink is not None
                while sink.acked < 200:
                    await sink.progressed()
        nursery.cancel_scope.cancel()
    out = io.StringIO()
    with trio.fail_after(TIMEOUT):
        count = await tail_nats(nats_server.url, symbols=["ethusdt"], kinds=["trades"],
                                since=datetime.now(UTC) - timedelta(hours=1), limit=20, out=out)
    lines = out.getvalue().splitlines()
    assert count == len(lines) == 20
    assert all(" ETHUSDT " in line and " trade " in line for line in lines)
    with pytest.raises(TailError, match="stream not found"):
        await tail_nats(nats_server.url, stream="NOPE", limit=1, out=io.StringIO())


def test_the_cli_says_since_needs_nats_and_names_an_absent_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "--since", "10m"]) == 2
    assert "--since needs --nats" in capsys.readouterr().err
    port = free_port()
    assert main(["tail", "--nats", f"nats://127.0.0.1:{port}", "--since", "1h"]) == 1
    assert f"nats://127.0.0.1:{port}: cannot connect" in capsys.readouterr().err
    assert main(["tail", "--nats", "nats://127.0.0.1:4222", "--since", "soon"]) == 2
    assert "--since: expected a duration" in capsys.readouterr().err


def test_since_takes_durations_and_times() -> None:
    now = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    assert parse_since("10m", now) == now - timedelta(minutes=10)
    assert parse_since("1.5h", now) == now - timedelta(minutes=90)
    assert parse_since("2026-12-03T09:00:00Z", now) == datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="expected a duration"):
        parse_since("yesterday", now)


def test_filters_become_subjects_with_wildcards_for_what_is_not_given() -> None:
    assert filter_subjects("feedd", [], [], []) == ["feedd.*.*.*"]
    assert filter_subjects("feedd", ["Binance"], ["trades"], ["btcusdt", "X.Y"]) == [
        "feedd.binance.trade.BTCUSDT", "feedd.binance.trade.X_Y"]


@pytest.mark.parametrize(("table", "message"), [
    ({"servers": []}, "nats.servers: must list at least one server URL"),
    ({"servers": ["http://x:4222"]}, "nats.servers: item 0: expected a nats:// or tls:// URL"),
    ({"token": "t", "credentials": "/x.creds"}, "nats.token: set credentials or token, not both"),
    ({"subject_prefix": "a.*"}, "nats.subject_prefix: expected subject tokens"),
    ({"stream": "FE.EDD"}, "nats.stream: a stream name without spaces, dots"),
    ({"max_bytes": 0}, "nats.max_bytes: must be positive, or -1 for no limit"),
    ({"buffer": 0}, "nats.buffer: must be a positive number"),
    ({"subjects": ["x"]}, "nats.subjects: unknown key"),
])
def test_a_bad_nats_table_names_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("*", r"\*")):
        parse_config({"nats": table}, "f.toml")


def test_a_nats_change_on_reload_needs_a_restart() -> None:
    old = parse_config({"nats": {}})
    new = parse_config({"nats": {"stream": "OTHER"}})
    plan = plan_reload(old, new)
    assert plan.needs_restart == ("nats: changed",)
    assert plan.config.nats == old.nats


def test_the_example_configs_nats_table_loads_once_uncommented() -> None:
    import tomllib

    text = (Path(__file__).parents[2] / "config.toml.example").read_text(encoding="utf-8")
    table = text[text.index("# [nats]"):].splitlines()
    logins = ("# token", "# credentials")  # one or the other: both given is an error
    lines = [line[2:] for line in table if line.startswith("# ") and not line.startswith(logins)]
    nats = parse_config(tomllib.loads("\n".join(lines))).nats
    assert nats is not None and nats.servers == ("nats://nats1:4222", "nats://nats2:4222")


def test_connect_names_feedds_version_without_importing_the_facade() -> None:
    import feedd
    from feedd.nats.client import _feedd_version

    assert _feedd_version() == feedd.__version__
