"""sd_notify: datagrams to $NOTIFY_SOCKET, the watchdog that proves the hub alive, STATUS= upkeep.

A Unix datagram socket of the test's own stands in for systemd.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from processes import FakeSystemd
from trio.testing import MockClock, wait_all_tasks_blocked

from feedd.fanout.hub import Hub
from feedd.ops.notify import Notifier, keep_status, notify_address, watchdog, watchdog_interval


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="feedd-n-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_notify_socket_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@/org/freedesktop/systemd1/notify/1") == "\0/org/freedesktop/systemd1/notify/1"
    assert notify_address(None) is None
    assert notify_address("") is None
    assert notify_address("vsock:2:1234") is None  # not supported: treated as no socket


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_the_named_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


async def test_each_notification_is_one_datagram_of_key_value_lines(short_dir: Path) -> None:
    systemd = FakeSystemd(str(short_dir / "notify"))
    notifier = Notifier({"NOTIFY_SOCKET": systemd.env_value})
    assert notifier.enabled
    await notifier.ready("ok: 2/2 venue(s) connected")
    await notifier.status("line one\nline two")
    await notifier.reloading()
    await notifier.stopping()
    messages = [await systemd.message() for _ in range(4)]
    assert messages[0] == {"READY": "1", "STATUS": "ok: 2/2 venue(s) connected"}
    assert messages[1] == {"STATUS": "line one line two"}  # a newline would start a new field
    assert messages[2]["RELOADING"] == "1"
    assert int(messages[2]["MONOTONIC_USEC"]) > 0
    assert messages[3]["STOPPING"] == "1"
    notifier.close()


async def test_an_abstract_namespace_notify_socket_is_reached() -> None:
    systemd = FakeSystemd(f"\0feedd-test-{uuid.uuid4().hex}")
    notifier = Notifier({"NOTIFY_SOCKET": systemd.env_value})
    await notifier.ready("ok")
    assert await systemd.message() == {"READY": "1", "STATUS": "ok"}
    notifier.close()


async def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    await notifier.ready("ok")
    await notifier.stopping()
    assert notifier.sent == 0
    with trio.fail_after(1):  # the tasks return at once instead of running for nothing
        await watchdog(notifier, Hub())
        await keep_status(notifier, lambda: "ok")


async def test_a_notify_socket_that_is_gone_is_logged_once_and_never_raised(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(short_dir / "nobody")})
    with caplog.at_level(logging.WARNING, logger="feedd.ops.notify"):
        await notifier.ready("ok")
        await notifier.status("still ok")
    assert notifier.sent == 0
    (logged,) = [r.getMessage() for r in caplog.records]
    assert logged.startswith(f"cannot notify systemd at {short_dir / 'nobody'}: ")
    assert "No such file or directory" in logged


async def test_watchdog_pings_at_half_the_period_while_an_idle_hub_answers_its_probes(
    short_dir: Path, autojump_clock: MockClock
) -> None:
    systemd = FakeSystemd(str(short_dir / "notify"))
    notifier = Notifier({"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "20000000"})
    hub = Hub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await nursery.start(watchdog, notifier, hub)
        start = trio.current_time()
        pings = [await systemd.message() for _ in range(3)]
        assert trio.current_time() - start == pytest.approx(30.0)  # virtual time: 3 x 10 s
        nursery.cancel_scope.cancel()
    assert pings == [{"WATCHDOG": "1"}] * 3
    assert hub.records == 0  # the probes are empty batches: nothing reached a sink


async def test_watchdog_withholds_pings_while_the_hub_is_stuck_and_resumes_with_it(
    short_dir: Path, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    systemd = FakeSystemd(str(short_dir / "notify"))
    notifier = Notifier({"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "20000000"})
    hub = Hub()  # not running: nothing takes the probes off its ingress
    caplog.set_level(logging.INFO, logger="feedd.ops.notify")
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog, notifier, hub)
        await trio.sleep(60)  # six periods of a stuck hub
        assert systemd.pending() == []
        assert "withholding WATCHDOG=1" in caplog.text
        await nursery.start(hub.run)  # it recovers: the queued probes are handled
        assert await systemd.message() == {"WATCHDOG": "1"}
        nursery.cancel_scope.cancel()
    assert caplog.text.count("withholding WATCHDOG=1") == 1  # once per episode
    assert "making progress again" in caplog.text


async def test_status_is_kept_current_and_sent_only_when_it_changes(
    short_dir: Path, autojump_clock: MockClock
) -> None:
    systemd = FakeSystemd(str(short_dir / "notify"))
    notifier = Notifier({"NOTIFY_SOCKET": systemd.env_value})
    lines = iter(["connecting", "connecting", "connecting", "ok", "ok"])
    async with trio.open_nursery() as nursery:
        await nursery.start(keep_status, notifier, lambda: next(lines, "ok"))
        assert await systemd.message() == {"STATUS": "connecting"}
        assert await systemd.message() == {"STATUS": "ok"}
        await trio.sleep(60)
        await wait_all_tasks_blocked()
        assert systemd.pending() == []
        nursery.cancel_scope.cancel()
