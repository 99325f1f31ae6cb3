"""``feedd run`` with a recorder, stopped by SIGTERM: every file is finished and closed, and
replay gives back what the socket carried."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from endtoend import short_tempdir
from processes import feedd_run, simulator, write_config

from feedd.cli.replay import run_replay
from feedd.record.reader import RecordingFile

TIMEOUT = 30


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_tempdir("feedd-rs-") as path:
        yield path


async def test_sigterm_finishes_every_file_and_replay_gives_back_the_socket(workdir: Path) -> None:
    async with simulator() as sim:
        config = write_config(workdir, {"binance": (sim.ws_url, sim.rest_url)}, ("BTCUSDT", "ETHUSDT"))
        config.write_text(config.read_text() + '\n[record]\ndir = "rec"\n')
        async with feedd_run(config) as run:
            with trio.fail_after(TIMEOUT):
                await run.wait_for_log("feedd running")
                stream = await trio.open_unix_socket(str(workdir / "feedd.sock"))
                await stream.send_all(b"{}\n")
                received = b""
                while received.count(b"\n") < 300:
                    received += await stream.receive_some(65536)
                code = await run.stop(signal.SIGTERM)
                while data := await stream.receive_some(65536):
                    received += data
    assert code == 0, run.text
    files = sorted((workdir / "rec").rglob("*.zst"))
    assert files
    for path in files:
        file = RecordingFile(path)
        assert sum(1 for _ in file.lines()) > 0 and file.problem is None  # finished, not cut
    out = io.BytesIO()
    errors: list[str] = []
    assert run_replay([str(workdir / "rec")], venues=[], symbols=[], kinds=[], since=None, until=None,
                      speed=None, socket=None, nats=None, out=out, err=errors.append) == 0
    assert errors == []
    lines = out.getvalue().splitlines(keepends=True)
    start = lines.index(received.splitlines(keepends=True)[0])
    assert b"".join(lines[start:]) == received
