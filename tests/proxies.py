"""Real proxy servers for the tests, started on a free port each, from Debian's packages:
tinyproxy (HTTP CONNECT and plain HTTP forwarding, Basic authentication, allowed CONNECT ports),
microsocks (SOCKS5 with username/password) and Dante (SOCKS5 with pass/block rules).

On a workstation without them the tests skip; under CI (``$CI``) they fail: .ci/run installs the
packages. Each server is ready when its port accepts a connection (bounded); its log, where it
keeps one, tells which connections it made, which is how the tests see that the proxy carried them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nats_server import free_port
from tools import require_tool

#: a bound against a server that never starts, not a measurement
START_BOUND = 10.0


def _wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, log: Path | None) -> None:
    deadline = time.monotonic() + START_BOUND
    while True:
        if process.poll() is not None:
            said = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{name} exited with {process.returncode} before listening: {said}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    f"{name} did not listen on 127.0.0.1:{port} in {START_BOUND:g} s"
                ) from None
            time.sleep(0.02)  # an outside process starting: nothing to wait on but its port


class ProxyServer:
    """One proxy process: :attr:`port`, :attr:`address` (``127.0.0.1:port``) and its log's text."""

    def __init__(self, name: str, args: Sequence[str], port: int, log: Path | None) -> None:
        self.name = name
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.log_path = log
        self.process = subprocess.Popen(
            list(args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_port(port, self.process, name, log)

    def log(self) -> str:
        return "" if self.log_path is None else self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _as_root() -> bool:
    return os.geteuid() == 0


@contextmanager
def tinyproxy(
    workdir: Path, *, auth: tuple[str, str] | None = None, connect_ports: Sequence[int] = ()
) -> Iterator[ProxyServer]:
    """tinyproxy on 127.0.0.1: ``auth`` demands Basic credentials (407 without them), a non-empty
    ``connect_ports`` allows CONNECT to those ports only (403 to any other)."""
    binary = require_tool("tinyproxy", package="tinyproxy")
    port = free_port()
    log = workdir / f"tinyproxy-{port}.log"
    log.touch()
    log.chmod(0o666)  # tinyproxy opens it as root, but may reopen it as nobody
    lines = [
        f"Port {port}", "Listen 127.0.0.1", "Timeout 30", f'LogFile "{log}"', "LogLevel Info",
        "MaxClients 50", "Allow 127.0.0.1", "DisableViaHeader Yes",
    ]
    if _as_root():
        lines += ["User nobody", "Group nogroup"]
    if auth is not None:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    lines += [f"ConnectPort {p}" for p in connect_ports]
    conf = workdir / f"tinyproxy-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    server = ProxyServer("tinyproxy", [binary, "-d", "-c", str(conf)], port, log)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def microsocks(*, auth: tuple[str, str] | None = None, bind: str | None = None) -> Iterator[ProxyServer]:
    """microsocks on 127.0.0.1 (it keeps no log): ``auth`` demands RFC 1929 credentials, ``bind``
    is the address its outgoing connections come from (so the target can tell them apart)."""
    binary = require_tool("microsocks", package="microsocks")
    port = free_port()
    args = [binary, "-i", "127.0.0.1", "-p", str(port)]
    if auth is not None:
        args += ["-u", auth[0], "-P", auth[1]]
    if bind is not None:
        args += ["-b", bind]
    server = ProxyServer("microsocks", args, port, None)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def dante(workdir: Path, *, block: bool = False) -> Iterator[ProxyServer]:
    """Dante's SOCKS5 server on 127.0.0.1, without authentication; ``block`` refuses every CONNECT
    by its rules (RFC 1928 reply 2). Its log names every connection it passed or blocked."""
    # /usr/sbin may be off a user's PATH
    binary = "/usr/sbin/danted" if os.access("/usr/sbin/danted", os.X_OK) else require_tool(
        "danted", "sockd", package="dante-server"
    )
    port = free_port()
    log = workdir / f"dante-{port}.log"
    lines = [
        f"logoutput: {log}", f"internal: 127.0.0.1 port = {port}", "external: 127.0.0.1",
        "socksmethod: none", "clientmethod: none",
    ]
    if _as_root():
        lines += ["user.privileged: root", "user.unprivileged: nobody"]
    lines += [
        "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }",
        f"socks {'block' if block else 'pass'} {{ from: 0.0.0.0/0 to: 0.0.0.0/0 log: connect error }}",
    ]
    conf = workdir / f"dante-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    server = ProxyServer("dante", [binary, "-f", str(conf), "-N", "1"], port, log)
    try:
        yield server
    finally:
        server.stop()


def established_from(port: int) -> set[str]:
    """The peer addresses of the established TCP connections to local ``port`` (IPv4, from the
    kernel's table): which address a server's clients came from."""
    peers = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state != "01" or int(local.split(":")[1], 16) != port:
            continue
        raw = bytes.fromhex(remote.split(":")[0])
        peers.add(".".join(str(b) for b in reversed(raw)))
    return peers
