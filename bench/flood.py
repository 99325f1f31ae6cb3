"""Throughput of the whole hot path: simulator flood over TLS → daemon → one Unix subscriber.

Three processes, as in production: the simulator (a flood of Binance @trade frames over wss, with
a throwaway CA from trustme), the daemon (`feedd run`, trusting that CA via SSL_CERT_FILE), and
this script as the subscriber counting lines. Prints records/s and the daemon's CPU time per
record (user+sys from /proc), with ratios to the reference figures measured on this 2-core
machine. A benchmark, not a test: run it a few times and read the spread.

    .venv/bin/python bench/flood.py [--seconds 10] [--symbols 2] [--transport native|trio-websocket]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# reference figures (records/s, CPU µs per record) measured on this machine, from the issue
CRYPTOFEED = (85_000, 9.0)
NAIVE_TRIO_WEBSOCKET = (19_000, 53.0)
TRANSPORT_CEILING = 50_000  # trio-websocket alone, frames/s
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")


def run_simulator(port_file: str, cert_dir: str, symbols: str) -> None:
    """Child process: serve the flooding simulator over TLS until terminated."""
    import trio

    from feedd.sim import BinanceSimulator

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(f"{cert_dir}/server.pem", f"{cert_dir}/server.key")
    sim = BinanceSimulator(symbols=symbols.split(","), flood=True, ssl_context=context)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.serve)
            await trio.Path(port_file).write_text(f"{sim.ws_url}\n{sim.rest_url}\n")

    trio.run(main)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--symbols", type=int, default=2, choices=range(1, len(SYMBOLS) + 1))
    parser.add_argument("--transport", default="native", choices=["native", "trio-websocket"])
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--cert-dir", help=argparse.SUPPRESS)
    parser.add_argument("--symbol-list", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sim":
        run_simulator(args.port_file, args.cert_dir, args.symbol_list)
        return

    import trustme

    work = Path(tempfile.mkdtemp(prefix="feedd-bench-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(work / "ca.pem"))
        server = ca.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(work / "server.pem"))
        server.private_key_pem.write_to_path(str(work / "server.key"))
        symbols = SYMBOLS[: args.symbols]

        port_file = work / "sim.addr"
        procs.append(subprocess.Popen([
            sys.executable, __file__, "--role", "sim", "--port-file", str(port_file),
            "--cert-dir", str(work), "--symbol-list", ",".join(symbols),
        ]))
        wait_for(lambda: port_file.exists() and port_file.read_text().count("\n") == 2, 20, "simulator")
        ws_url, rest_url = port_file.read_text().split()

        socket_path = work / "feedd.sock"
        quoted = ", ".join(f'"{s}"' for s in symbols)
        (work / "config.toml").write_text(f"""
[feed]
cache_dir = "{work / 'cache'}"
stale_after = 30.0
transport = "{args.transport}"

[unix]
path = "{socket_path}"
client_buffer = 1000000

[exchanges.binance]
symbols = [{quoted}]
channels = ["trades"]
url = "{ws_url}"
rest_url = "{rest_url}"
""")
        env = dict(os.environ, SSL_CERT_FILE=str(work / "ca.pem"))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "feedd", "run", "--config", str(work / "config.toml")], env=env
        )
        procs.append(daemon)
        wait_for(socket_path.exists, 20, "the daemon's socket")

        import socket

        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(socket_path))
        client.sendall(b"{}\n")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        buf = bytearray(1 << 20)

        def count_for(seconds: float) -> tuple[int, int]:
            records = gaps = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                n = client.recv_into(buf)
                if not n:
                    raise SystemExit("the daemon closed the socket")
                chunk = bytes(buf[:n])
                records += chunk.count(b"\n")
                gaps += chunk.count(b'"gap"')
            return records, gaps

        count_for(args.warmup)
        if os.environ.get("FEEDD_BENCH_PROFILE"):
            subprocess.Popen(["py-spy", "record", "-p", str(daemon.pid), "-d", str(int(args.seconds)),
                              "-f", "raw", "-o", os.environ["FEEDD_BENCH_PROFILE"], "-r", "200"])
        cpu_start, wall_start = cpu_seconds(daemon.pid), time.monotonic()
        records, gaps = count_for(args.seconds)
        cpu = cpu_seconds(daemon.pid) - cpu_start
        wall = time.monotonic() - wall_start
        client.close()

        rate = records / wall
        us_per_record = cpu / records * 1e6 if records else float("inf")
        print(f"symbols:                 {len(symbols)} x @trade, wss (TLS) from the simulator, "
              f"transport {args.transport}")
        print(f"records received:        {records} in {wall:.1f} s ({gaps} gap notices)")
        print(f"throughput:              {rate:,.0f} records/s")
        print(f"daemon CPU:              {cpu:.2f} s = {100 * cpu / wall:.0f}% of one core, "
              f"{us_per_record:.1f} µs per record")
        print(f"vs cryptofeed:           {rate / CRYPTOFEED[0]:.2f}x the rate, "
              f"{us_per_record / CRYPTOFEED[1]:.2f}x the CPU per record")
        print(f"vs naive trio-websocket: {rate / NAIVE_TRIO_WEBSOCKET[0]:.2f}x the rate, "
              f"{us_per_record / NAIVE_TRIO_WEBSOCKET[1]:.2f}x the CPU per record")
        print(f"vs transport ceiling:    {rate / TRANSPORT_CEILING:.2f}x trio-websocket's receive rate")
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
