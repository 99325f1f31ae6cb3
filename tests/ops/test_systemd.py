"""``feedd run`` as systemd runs it: notifications, SIGHUP reloads, stops, the journal, the socket.

The daemon runs in its own process against an in-test simulator; a Unix datagram socket of the
test's own plays systemd's ``$NOTIFY_SOCKET``. Every wait is on the log, a socket or the process,
bounded by ``fail_after``; no wait is a sleep.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from processes import STOP_BOUND, FakeSystemd, FeeddRun, Subscriber, feedd_run, simulator, write_config

from feedd.control.service import STOP_GRACE
from feedd.fanout.lines import decode_record
from feedd.model import MarketData
from feedd.sim import BinanceSimulator

TIMEOUT = 20
NOTIFY_KEYS = ("READY", "RELOADING", "STOPPING", "WATCHDOG")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # short: AF_UNIX paths are limited to ~107 bytes, and pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="feedd-y-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick, released for the daemon to take)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def consecutive(records: list[MarketData], symbol: str) -> list[int]:
    """The trade ids of ``symbol``, asserted without a hole: the simulator numbers each trade."""
    ids = [int(r.trade_id or 0) for r in records if r.symbol == symbol and r.kind == "trade"]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a gap in the trade ids"
    return ids


async def until(client: Subscriber, predicate: object, seen: list[MarketData]) -> None:
    while not predicate(record := await client.record()):  # type: ignore[operator]
        seen.append(record)
    seen.append(record)


async def test_systemd_hears_ready_status_watchdog_reloading_and_stopping_in_order(workdir: Path) -> None:
    systemd = FakeSystemd(f"\0feedd-test-{uuid.uuid4().hex}")  # the abstract namespace, as systemd uses
    env = {"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "200000", "INVOCATION_ID": uuid.uuid4().hex}
    http_address = f"127.0.0.1:{free_port()}"  # known before the daemon says it
    at_ready: dict[str, int] = {}

    async def when_ready(message: dict[str, str]) -> None:
        """The first READY=1 promises consumers can connect: try both doors as it arrives."""
        if "READY" not in message or at_ready:
            return
        stream = await trio.open_unix_socket(str(workdir / "feedd.sock"))
        at_ready["socket"] = 1
        async with httpx.AsyncClient(base_url=f"http://{http_address}") as http:
            at_ready["http"] = (await http.get("/api/v1/websocket/status")).status_code
        await stream.aclose()

    async with simulator() as sim, trio.open_nursery() as nursery:
        nursery.start_soon(systemd.collect, when_ready)
        config = write_config(workdir, {"binance": (sim.ws_url, sim.rest_url)})
        config.write_text(config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "{http_address}"'))
        async with feedd_run(config, env) as run:
            with trio.fail_after(TIMEOUT):
                ready = await systemd.wait_for(lambda m: "READY" in m)
                await systemd.wait_for(lambda m: "WATCHDOG" in m, ready)
                await systemd.wait_for(lambda m: m.get("STATUS", "").startswith("ok: 1/1 venue(s) connected"))
                run.process.send_signal(signal.SIGHUP)
                reloading = await systemd.wait_for(lambda m: "RELOADING" in m)
                await systemd.wait_for(lambda m: "READY" in m, reloading)
            code = await run.stop(signal.SIGTERM)
        with trio.fail_after(TIMEOUT):
            await systemd.wait_for(lambda m: "STOPPING" in m)
        nursery.cancel_scope.cancel()
    systemd.close()
    assert code == 0, run.text
    names = [key for message in systemd.messages for key in NOTIFY_KEYS if key in message]
    assert names[0] == "READY"
    assert at_ready == {"socket": 1, "http": 200}
    assert names[-1] == "STOPPING"
    before_reload = names[1: names.index("RELOADING")]
    assert "WATCHDOG" in before_reload
    assert set(before_reload) == {"WATCHDOG"}  # READY=1 once, not again until a reload
    after_reload = [n for n in names[names.index("RELOADING") + 1:] if n != "WATCHDOG"]
    assert after_reload == ["READY", "STOPPING"]
    reload_message = next(m for m in systemd.messages if "RELOADING" in m)
    assert int(reload_message["MONOTONIC_USEC"]) > 0
    assert re.fullmatch(r"(ok|degraded|down): [01]/1 venue\(s\) connected, [01] subscription\(s\), "
                        r"0 socket subscriber\(s\)", systemd.messages[0]["STATUS"])
    # under systemd the log is the journal's: a priority on every line, no timestamp
    lines = run.text.splitlines()
    assert lines and all(re.match(r"<[0-7]>\S", line) for line in lines), run.text
    assert any(line.startswith("<6>feedd.control.service: feedd running: 1 venue(s)") for line in lines)
    assert not re.search(r"^<\d>\d{4}-\d\d-\d\d", run.text, re.MULTILINE)


async def test_sighup_after_a_config_edit_adds_and_removes_streams_while_an_untouched_stream_never_gaps(
    workdir: Path,
) -> None:
    seen: list[MarketData] = []
    async with simulator() as sim:
        venues = {"binance": (sim.ws_url, sim.rest_url)}
        config = write_config(workdir, venues, ("BTCUSDT", "ETHUSDT"), 'channels = ["trades"]')
        async with feedd_run(config) as run:
            with trio.fail_after(TIMEOUT):
                await run.wait_for_log("feedd running")
                client = await Subscriber.connect(workdir / "feedd.sock")
                await until(client, lambda r: r.symbol == "ETHUSDT", seen)
                await until(client, lambda r: r.symbol == "BTCUSDT", seen)
                accepted = sim.connections_accepted

                write_config(workdir, venues, ("BTCUSDT", "BNBUSDT"), 'channels = ["trades"]')
                run.process.send_signal(signal.SIGHUP)
                await run.wait_for_log("reloaded ")
                reloaded = datetime.now(UTC)
                await until(client, lambda r: r.symbol == "BNBUSDT", seen)
                for _ in range(20):  # and BTCUSDT goes on
                    await until(client, lambda r: r.symbol == "BTCUSDT", seen)
            code = await run.stop()
    assert code == 0, run.text
    assert "reload: binance: BNBUSDT trades: subscribed" in run.text
    assert "reload: binance: ETHUSDT trades: unsubscribed" in run.text
    assert len(consecutive(seen, "BTCUSDT")) > 20  # from before the reload to well after it
    assert not [r for r in seen if r.symbol == "ETHUSDT" and r.received_at > reloaded]
    assert sim.connections_accepted == accepted  # nothing reconnected
    assert "reconnecting" not in run.text


async def test_sighup_applies_the_environments_override_again_over_the_edited_file(workdir: Path) -> None:
    """``ENABLE_WEBSOCKET_FEED=1`` overrides the file's ``enabled = false``: after an edit and a
    SIGHUP the edit applies and the override still does (a reload that read the file alone
    would stop the venue)."""
    seen: list[MarketData] = []
    async with simulator() as sim:
        venues = {"binance": (sim.ws_url, sim.rest_url)}

        def write(symbols: tuple[str, ...]) -> Path:
            config = write_config(workdir, venues, symbols, 'channels = ["trades"]')
            config.write_text(config.read_text().replace("[feed]\n", "[feed]\nenabled = false\n", 1))
            return config

        config = write(("BTCUSDT",))
        async with feedd_run(config, {"ENABLE_WEBSOCKET_FEED": "1"}) as run:
            with trio.fail_after(TIMEOUT):
                await run.wait_for_log("feedd running: 1 venue(s)")
                client = await Subscriber.connect(workdir / "feedd.sock")
                await until(client, lambda r: r.symbol == "BTCUSDT", seen)
                write(("BTCUSDT", "ETHUSDT"))
                run.process.send_signal(signal.SIGHUP)
                await run.wait_for_log("reloaded ")
                assert "reload: binance: stopped" not in run.text, run.text
                await until(client, lambda r: r.symbol == "ETHUSDT", seen)
                for _ in range(5):  # and BTCUSDT goes on
                    await until(client, lambda r: r.symbol == "BTCUSDT", seen)
            code = await run.stop()
    assert code == 0, run.text
    assert "reload: binance: ETHUSDT trades: subscribed" in run.text
    assert "the feed is disabled" not in run.text
    consecutive(seen, "BTCUSDT")
    assert sim.connections_accepted == 1


async def test_sighup_with_an_invalid_config_keeps_the_old_one_running_and_reports_it(workdir: Path) -> None:
    systemd = FakeSystemd(str(workdir / "notify"))
    async with simulator() as sim, trio.open_nursery() as nursery:
        nursery.start_soon(systemd.collect)
        config = write_config(workdir, {"binance": (sim.ws_url, sim.rest_url)})
        good = config.read_text()
        async with feedd_run(config, {"NOTIFY_SOCKET": systemd.env_value}) as run:
            with trio.fail_after(TIMEOUT):
                await run.wait_for_log("feedd running")
                client = await Subscriber.connect(workdir / "feedd.sock")
                await client.record()
                config.write_text(good.replace("max_backoff = 0.5", 'max_backoff = "long"'))
                run.process.send_signal(signal.SIGHUP)
                await run.wait_for_log("reload failed")
                failed = datetime.now(UTC)
                await client.record_received_after(failed)  # still streaming, on the old config
                await systemd.wait_for(lambda m: "reload failed" in m.get("STATUS", ""))
                async with httpx.AsyncClient(base_url=run.http_url) as http:
                    status = (await http.get("/api/v1/websocket/status")).json()
            code = await run.stop()
        nursery.cancel_scope.cancel()
    systemd.close()
    assert code == 0, run.text
    assert f"reload failed, still running on the previous configuration: {config}: feed.max_backoff: " in (
        run.text
    )
    assert status["reload"]["ok"] is False
    assert "feed.max_backoff" in status["reload"]["error"]
    assert status["exchanges"]["binance"]["state"] == "connected"


def write_flood_config(workdir: Path, sim: BinanceSimulator) -> Path:
    """BTCUSDT trades from a flooding simulator, and a subscriber buffer nothing overflows here:
    a subscriber that does not read holds every record from its full socket on."""
    config = write_config(workdir, {"binance": (sim.ws_url, sim.rest_url)}, extra='channels = ["trades"]')
    text = config.read_text().replace('path = "feedd.sock"', 'path = "feedd.sock"\nclient_buffer = 1000000')
    config.write_text(text)
    return config


async def subscriber_status(run: FeeddRun, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=run.http_url) as http:
        status = (await http.get("/api/v1/websocket/status")).json()
    (found,) = [s for s in status["subscribers"] if s["name"] == name]
    return found


async def stuck_subscriber(run: FeeddRun, socket_path: Path) -> Subscriber:
    """The daemon's first subscriber, which never reads, once its socket is full: the daemon has
    written to it (``delivered``) and queues what follows behind a write the socket did not
    take whole (``pending``). Each check is one answer from the daemon, no sleep in between."""
    stuck = await Subscriber.connect(socket_path)
    while True:
        status = await subscriber_status(run, "unix#1")
        if status["delivered"] and status["pending"]:
            return stuck


async def test_sigterm_writes_out_every_record_queued_for_a_slow_subscriber_closes_politely_and_exits_0(
    workdir: Path,
) -> None:
    socket_path = workdir / "feedd.sock"
    async with simulator(flood=True) as sim:
        config = write_flood_config(workdir, sim)
        async with feedd_run(config) as run:
            with trio.fail_after(TIMEOUT):
                await run.wait_for_log("feedd running")
                slow = await stuck_subscriber(run, socket_path)
                probe = await Subscriber.connect(socket_path)
                sim.set_silent(True)  # the venue stops sending: the last trade is known
                last = sim.last_trade_id("BTCUSDT")
                while int((await probe.record()).trade_id or 0) < last:
                    pass  # the hub has handed everything to the publisher, the slow one's share too
                await probe.stream.aclose()
                held = await subscriber_status(run, "unix#1")
            run.process.send_signal(signal.SIGTERM)
            with trio.fail_after(STOP_BOUND):
                # the venue is closed and the hub drained: what the slow one gets now is the flush
                await run.wait_for_log("stopping: waiting for 1 subscriber(s)")
                tail = b""
                while data := await slow.stream.receive_some(65536):  # to the end: EOF, no reset
                    tail += data
                code = await run.process.wait()
        with trio.fail_after(TIMEOUT):
            await sim.wait_until(lambda: sum(sim.client_close_codes.values()) == 1)
    assert code == 0, run.text
    assert held["pending"] > 0  # queued behind the full socket when the stop began
    assert tail.endswith(b"\n")  # no line cut in half
    records = [decode_record(line) for line in tail.split(b"\n")[:-1]]  # a gap line would not decode
    ids = [int(r.trade_id or 0) for r in records]
    assert {(r.symbol, r.kind) for r in records} == {("BTCUSDT", "trade")}
    assert ids == list(range(ids[0], last + 1))  # in order, none lost, up to the venue's last
    assert len(ids) >= held["delivered"] + held["pending"]
    assert sim.client_close_codes == {1000: 1}  # the venue got a close frame: a polite close
    assert sim.connections_accepted == 1
    assert not socket_path.exists()
    assert "stopping took longer" not in run.text
    assert run.text.rstrip().endswith("stopped")
    assert "Traceback" not in run.text


async def test_sigterm_gives_up_on_a_subscriber_that_does_not_read_after_the_grace_and_exits_0_within_5_s(
    workdir: Path,
) -> None:
    socket_path = workdir / "feedd.sock"
    async with simulator(flood=True) as sim:
        config = write_flood_config(workdir, sim)
        async with feedd_run(config) as run:
            with trio.fail_after(TIMEOUT):
                await run.wait_for_log("feedd running")
                stuck = await stuck_subscriber(run, socket_path)
            run.process.send_signal(signal.SIGTERM)
            with trio.fail_after(STOP_BOUND):  # the promise: exit 0 within 5 s of SIGTERM
                code = await run.process.wait()
        await stuck.stream.aclose()
    assert code == 0, run.text
    assert "stopping: waiting for 1 subscriber(s)" in run.text
    assert f"stopping took longer than {STOP_GRACE:.0f} s: cancelling what is left" in run.text
    assert not socket_path.exists()
    assert run.text.rstrip().endswith("stopped")
    assert "Traceback" not in run.text


async def test_a_second_stop_signal_ends_a_stop_that_waits_for_a_subscriber_at_once(workdir: Path) -> None:
    socket_path = workdir / "feedd.sock"
    async with simulator(flood=True) as sim:
        config = write_flood_config(workdir, sim)
        async with feedd_run(config) as run:
            with trio.fail_after(TIMEOUT):
                await run.wait_for_log("feedd running")
                stuck = await stuck_subscriber(run, socket_path)
                run.process.send_signal(signal.SIGTERM)
                await run.wait_for_log("stopping: waiting for 1 subscriber(s)")
            assert run.process.returncode is None  # the stop is held up by the subscriber
            run.process.send_signal(signal.SIGTERM)
            with trio.fail_after(STOP_BOUND):
                code = await run.process.wait()
        await stuck.stream.aclose()
    assert code == 128 + signal.SIGTERM, run.text
    assert "received SIGTERM again: stopping at once" in run.text
    assert "stopping took longer" not in run.text  # it did not wait out the grace period
    assert not socket_path.exists()


async def test_a_second_daemon_on_the_same_socket_refuses_and_a_killed_ones_socket_is_replaced(
    workdir: Path,
) -> None:
    socket_path = workdir / "feedd.sock"
    async with simulator() as sim:
        config = write_config(workdir, {"binance": (sim.ws_url, sim.rest_url)})
        async with feedd_run(config) as first:
            with trio.fail_after(TIMEOUT):
                await first.wait_for_log("feedd running")
                async with feedd_run(config) as second:
                    second_code = await second.process.wait()
                client = await Subscriber.connect(socket_path)  # the first is undisturbed
                await client.record_received_after(datetime.now(UTC))
                await client.stream.aclose()
            first.process.kill()  # no clean-up: the socket file stays behind
            await first.process.wait()
        assert socket_path.exists()
        async with feedd_run(config) as third:
            with trio.fail_after(TIMEOUT):
                await third.wait_for_log("feedd running")
                client = await Subscriber.connect(socket_path)
                await client.record()
                await client.stream.aclose()
            code = await third.stop()
    assert second_code == 1, second.text
    assert f"cannot start: {socket_path} is in use: another feedd owns it" in second.text
    assert "Traceback" not in second.text
    assert f"removing stale socket {socket_path}" in third.text
    assert code == 0
    assert not socket_path.exists()
