"""The benchmarked stack, as in production: simulator, daemon and subscriber in three processes.

The simulator serves wss with a throwaway CA (trustme); the daemon (`feedd run`) trusts it via
SSL_CERT_FILE; the benchmark itself is the Unix-socket subscriber. Used by flood.py and
latency.py; `python bench/stack.py sim ...` is the simulator child.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")


@attrs.frozen
class Running:
    daemon_pid: int
    socket_path: Path


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_seconds(pid: int) -> float:
    """The system (kernel) part of :func:`cpu_seconds`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def subscribe(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    client.connect(str(path))
    client.sendall(b"{}\n")  # no filter: start at once
    return client


@contextmanager
def stack(
    *, symbols: int, flood: bool, speed: float = 1.0, transport: str = "native", frames_per_write: int = 1,
    extra_config: str = "",
) -> Iterator[Running]:
    """``extra_config`` is appended to the daemon's config (bench/nats.py adds a [nats] table)."""
    import trustme

    work = Path(tempfile.mkdtemp(prefix="feedd-bench-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(work / "ca.pem"))
        server = ca.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(work / "server.pem"))
        server.private_key_pem.write_to_path(str(work / "server.key"))
        names = SYMBOLS[:symbols]

        address = work / "sim.addr"
        sim = [sys.executable, __file__, "sim", str(address), str(work), ",".join(names), str(speed),
               str(frames_per_write)]
        procs.append(subprocess.Popen([*sim, "--flood"] if flood else sim))
        wait_for(lambda: address.exists() and address.read_text().count("\n") == 2, 20, "simulator")
        ws_url, rest_url = address.read_text().split()

        socket_path = work / "feedd.sock"
        quoted = ", ".join(f'"{s}"' for s in names)
        (work / "config.toml").write_text(f"""
[feed]
cache_dir = "{work / 'cache'}"
transport = "{transport}"

[unix]
path = "{socket_path}"
client_buffer = 1000000

[exchanges.binance]
symbols = [{quoted}]
channels = ["trades"]
url = "{ws_url}"
rest_url = "{rest_url}"
{extra_config}
""")
        env = dict(os.environ, SSL_CERT_FILE=str(work / "ca.pem"))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "feedd", "run", "--config", str(work / "config.toml")], env=env
        )
        procs.append(daemon)
        wait_for(socket_path.exists, 20, "the daemon's socket")
        yield Running(daemon.pid, socket_path)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def _serve_simulator(
    address: str, cert_dir: str, symbols: str, speed: float, frames_per_write: int, flood: bool
) -> None:
    import trio

    from feedd.sim import BinanceSimulator

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(f"{cert_dir}/server.pem", f"{cert_dir}/server.key")
    sim = BinanceSimulator(symbols=symbols.split(","), flood=flood, speed=speed, ssl_context=context,
                           frames_per_write=frames_per_write)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.serve)
            await trio.Path(address).write_text(f"{sim.ws_url}\n{sim.rest_url}\n")

    trio.run(main)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["sim"])
    parser.add_argument("address")
    parser.add_argument("cert_dir")
    parser.add_argument("symbols")
    parser.add_argument("speed", type=float)
    parser.add_argument("frames_per_write", type=int)
    parser.add_argument("--flood", action="store_true")
    args = parser.parse_args()
    _serve_simulator(args.address, args.cert_dir, args.symbols, args.speed, args.frames_per_write, args.flood)
