"""feedd and cryptofeed side by side, in one run, on the wire an exchange produces.

    pip install -e '.[bench]'          # cryptofeed 2.4.1, websockets, trustme
    .venv/bin/python bench/compare.py  # a few minutes; --quick for a shorter, rougher run

One process (this one) is the exchange (bench/wire.py: Binance combined streams over TLS, one
frame per TLS record unless said otherwise, every trade stamped with its send time); the daemon
runs in a second process (``feedd run``, or cryptofeed's FeedHandler with its Binance feed
pointed here and its Unix-socket backend); subscribers (bench/subscriber.py) in more processes
measure each record's delay from the server's send time. The daemon's CPU time is read from
/proc. Everything shares this machine's cores, so compare only figures from one run; the table
at the end is this run's and nothing else's.

Rows: a flood at 1 and at 50 frames per write (records/s, daemon CPU per record); paced 1k, 5k
and 20k frames/s (delay percentiles, CPU per record); feedd's fan-out to 1, 10 and 100
subscribers at 5k frames/s (CPU per record, the worst subscriber's p99); and the daemon's RSS
after 1 M records with one subscriber that reads and with one that never reads; and a flood of
multi-record frames (Bybit v5 ``publicTrade.BTCUSDT`` on the linear endpoint, ``--multi`` trades
per frame, one frame per TLS record; cryptofeed's Bybit feed against the same server). Flood and paced
rows are run ``--repeat`` times with the daemons taking turns, and show the medians (the paced
table also each attempt's p99: the spread is the machine's noise). ``--before PATH`` adds an
older feedd as a third daemon, for a before/after table from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trustme

sys.path.insert(0, str(Path(__file__).parent))
from stack import cpu_seconds, rss_mib, system_seconds
from wire import Server

HERE = Path(__file__).parent
SUBSCRIBER = HERE / "subscriber.py"
CRYPTOFEED = textwrap.dedent('''
    import sys
    from cryptofeed import FeedHandler
    from cryptofeed.backends.socket import TradeSocket
    from cryptofeed.connection import WebsocketEndpoint
    from cryptofeed.defines import BINANCE, TRADES
    from cryptofeed.exchanges import Binance
    from cryptofeed.symbols import Symbol, Symbols

    port, paths = int(sys.argv[1]), sys.argv[2:]
    # the symbol map is set beforehand, so cryptofeed asks no REST endpoint for it
    Symbols.set(BINANCE, {Symbol("BTC", "USDT").normalized: "BTCUSDT"}, {})

    class LocalBinance(Binance):
        websocket_endpoints = [WebsocketEndpoint(f"wss://127.0.0.1:{port}")]

    fh = FeedHandler(config={"log": {"disabled": True}})
    fh.add_feed(LocalBinance(symbols=["BTC-USDT"], channels=[TRADES],
                             callbacks={TRADES: [TradeSocket("uds://" + p) for p in paths]}))
    fh.run()
''')
CRYPTOFEED_BYBIT = textwrap.dedent('''
    import sys
    from cryptofeed import FeedHandler
    from cryptofeed.backends.socket import TradeSocket
    from cryptofeed.connection import WebsocketEndpoint
    from cryptofeed.defines import BYBIT, PERPETUAL, TRADES
    from cryptofeed.exchanges import Bybit
    from cryptofeed.symbols import Symbol, Symbols

    port, paths = int(sys.argv[1]), sys.argv[2:]
    perp = Symbol("BTC", "USDT", type=PERPETUAL).normalized
    Symbols.set(BYBIT, {perp: "BTCUSDT"}, {"instrument_type": {perp: PERPETUAL}})

    class LocalBybit(Bybit):
        websocket_endpoints = [WebsocketEndpoint(
            f"wss://127.0.0.1:{port}/v5/public/linear", instrument_filter=("TYPE", (PERPETUAL,)),
            channel_filter=("publicTrade",), options={"compression": None})]

    fh = FeedHandler(config={"log": {"disabled": True}})
    fh.add_feed(LocalBybit(symbols=[perp], channels=[TRADES],
                           callbacks={TRADES: [TradeSocket("uds://" + p) for p in paths]}))
    fh.run()
''')
#: the [exchanges.*] table feedd gets per venue the benchmark serves
VENUE_PATHS = {"binance": "/stream", "bybit-linear": "/v5/public/linear"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Lines:
    """Lines from a child's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = b""

    async def next(self) -> str:
        while b"\n" not in self._buf:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("the child closed its output")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, server: Server) -> None:
        self.args = args
        self.work = work
        self.server = server
        self.env = dict(os.environ, SSL_CERT_FILE=str(work / "ca.pem"))
        self.runs = 0

    @asynccontextmanager
    async def daemon(self, name: str, subscribers: int, mode: str = "read", count: int = 0,
                     client_buffer: int = 1_000_000, venue: str = "binance",
                     ) -> AsyncIterator[tuple[trio.Process, list[Lines]]]:
        """Start ``name`` with ``subscribers`` subscriber processes; yield once it is subscribed.

        feedd's subscriber buffer is raised for the throughput and delay rows (cryptofeed's is
        unbounded: neither may drop records there); the memory rows keep feedd's default.
        """
        self.runs += 1
        paths = [str(self.work / f"r{self.runs}s{i}.sock") for i in range(subscribers)]
        procs: list[trio.Process] = []
        outs: list[Lines] = []
        stdin = subprocess.PIPE

        async def start_subscriber(path: str, sub_mode: str) -> None:
            proc = await trio.lowlevel.open_process(
                [sys.executable, str(SUBSCRIBER), sub_mode, path, str(count)], stdout=subprocess.PIPE,
                stdin=stdin)
            procs.append(proc)
            assert proc.stdout is not None
            lines = Lines(proc.stdout)
            assert await lines.next() == "ready"
            outs.append(lines)

        self.server.ready = trio.Event()
        try:
            if name == "cryptofeed":
                for path in paths:
                    await start_subscriber(path, "listen" if mode == "read" else "stall-listen")
                script = self.work / "cf.py"
                script.write_text(CRYPTOFEED if venue == "binance" else CRYPTOFEED_BYBIT)
                daemon = await trio.lowlevel.open_process(
                    [self.args.cryptofeed_python, str(script), str(self.server.port), *paths],
                    env=self.env, stderr=subprocess.DEVNULL)
            else:
                sock = self.work / f"r{self.runs}.sock"
                config = self.work / f"r{self.runs}.toml"
                config.write_text(textwrap.dedent(f'''
                    [feed]
                    stale_after = 60.0
                    state_file = "{self.work / 'state.json'}"
                    cache_dir = "{self.work / 'cache'}"
                    [http]
                    listen = "127.0.0.1:{free_port()}"
                    [unix]
                    path = "{sock}"
                    client_buffer = {client_buffer}
                    [exchanges.{venue}]
                    url = "wss://127.0.0.1:{self.server.port}{VENUE_PATHS[venue]}"
                    symbols = ["BTCUSDT"]
                    channels = ["trades"]
                    check_symbols = false
                '''))
                log = (self.work / "feedd.log").open("ab")
                executable = {"feedd-before": self.args.before, "trio-floor": self.args.floor}.get(
                    name, self.args.feedd)
                daemon = await trio.lowlevel.open_process(
                    [executable, "run", "--config", str(config)], env=self.env, stderr=log,
                    stdout=subprocess.DEVNULL)
                with trio.fail_after(20):
                    while not sock.exists():
                        if daemon.returncode is not None:
                            sys.exit(f"feedd exited {daemon.returncode}; see {self.work / 'feedd.log'}")
                        await trio.sleep(0.05)
                for _ in paths:
                    await start_subscriber(str(sock), "connect" if mode == "read" else "stall")
            procs.append(daemon)
            with trio.fail_after(30):
                await self.server.ready.wait()
            await trio.sleep(0.5)  # settle: subscribers attached, first allocations made
            yield daemon, outs
        finally:
            for proc in reversed(procs):
                if proc.returncode is None:
                    proc.terminate()
            with trio.move_on_after(10):
                for proc in procs:
                    await proc.wait()
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()

    async def measure(self, name: str, count: int, rate: float | None, frames_per_write: int = 1,
                      subscribers: int = 1, venue: str = "binance", trades_per_frame: int = 1,
                      ) -> dict[str, Any]:
        """``count`` records: ``count / trades_per_frame`` frames (more than one: Bybit frames)."""
        self.server.trades_per_frame = trades_per_frame
        async with self.daemon(name, subscribers, count=count, venue=venue) as (daemon, outs):
            label = f"{rate or 'flood'}-{frames_per_write}-{subscribers}-{venue}-{trades_per_frame}"
            profiler = await self.profile(name, daemon, label)
            cpu0 = cpu_seconds(daemon.pid)
            sys0 = system_seconds(daemon.pid)
            await self.server.push(count // trades_per_frame, rate, frames_per_write)
            results = []
            with trio.fail_after(120):
                for lines in outs:
                    results.append(json.loads(await lines.next()))
            cpu = cpu_seconds(daemon.pid) - cpu0
            system = system_seconds(daemon.pid) - sys0
            rss = rss_mib(daemon.pid)
            if profiler is not None:
                profiler.send_signal(2)  # py-spy and strace write their figures on SIGINT
                await profiler.wait()
        got = results[0]
        row = {
            "daemon": name, "rate": rate or "flood", "frames_per_write": frames_per_write,
            "subscribers": subscribers, "venue": venue, "trades_per_frame": trades_per_frame,
            "records": got["n"], "dropped": sum(r["dropped"] for r in results),
            "rec_per_s": round(got["n"] / got["secs"]) if got["secs"] else 0,
            "cpu_us_per_rec": round(cpu / count * 1e6, 1),
            "sys_us_per_rec": round(system / count * 1e6, 1),  # the kernel's part of it
            "p50": got["p50"], "p99": got["p99"], "p999": got["p999"], "max": got["max"],
            "worst_p99": max(r["p99"] for r in results), "rss_mib": round(rss, 1),
            "load": round(os.getloadavg()[0], 2),  # the machine's 1-minute load: other work on it
        }
        print(json.dumps(row), flush=True)
        return row

    async def profile(self, name: str, daemon: trio.Process, label: str) -> trio.Process | None:
        """With --profile DIR: py-spy samples the daemon while it works (raw folded stacks).
        With --strace DIR instead: ``strace -c -f`` counts its system calls (any daemon)."""
        if self.args.attach:
            out = Path(self.args.attach_dir) / f"{name}-{label}.txt"
            command = self.args.attach.format(pid=daemon.pid, out=out).split()
        elif self.args.strace:
            out = Path(self.args.strace) / f"{name}-{label}.txt"
            command = ["strace", "-c", "-f", "-p", str(daemon.pid), "-o", str(out)]
        elif self.args.profile and name != "cryptofeed":
            out = Path(self.args.profile) / f"{name}-{label}.txt"
            command = [str(Path(sys.executable).parent / "py-spy"), "record",
                       *self.args.profile_options.split(), "-p", str(daemon.pid), "-r", "1000",
                       "-f", "raw", "-o", str(out)]
        else:
            return None
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = await trio.lowlevel.open_process(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await trio.sleep(0.5)  # the tracer attaches
        return proc

    async def memory(self, name: str, count: int, mode: str) -> dict[str, Any]:
        """RSS after ``count`` records flooded in, with a subscriber that reads or never does."""
        async with self.daemon(name, 1, mode, count=count, client_buffer=10_000) as (daemon, outs):
            await self.server.push(count, None)
            if mode == "read":
                with trio.fail_after(120):
                    await outs[0].next()
            # done when the daemon has stopped working through what it read
            with trio.move_on_after(60):
                while True:
                    before = cpu_seconds(daemon.pid)
                    await trio.sleep(0.5)
                    if cpu_seconds(daemon.pid) - before < 0.02:
                        break
            row = {"daemon": name, "subscriber": mode, "records": count,
                   "rss_mib": round(rss_mib(daemon.pid), 1)}
        print(json.dumps(row), flush=True)
        return row


def table(rows: list[dict[str, Any]], mem: list[dict[str, Any]], daemons: list[str]) -> str:
    def get(**want: Any) -> dict[str, Any] | None:
        return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)

    out: list[str] = []
    add = out.append
    add("| flood | " + " | ".join(f"{d} records/s | {d} CPU µs/record" for d in daemons) + " |")
    add("|---|" + "---|---|" * len(daemons))
    for fpw in (1, 50):
        cells = []
        for d in daemons:
            r = get(daemon=d, rate="flood", frames_per_write=fpw, subscribers=1, venue="binance")
            cells += [f"{r['rec_per_s']:,}", f"{r['cpu_us_per_rec']}"] if r else ["-", "-"]
        add(f"| {fpw} frame(s) per write | " + " | ".join(cells) + " |")
    add("")
    add("| paced, 1 frame per TLS record | daemon | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/record "
        "| p99 µs of each attempt |")
    add("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["rate"] != "flood" and not r.get("fanout") and r["venue"] == "binance":
            each = ", ".join(str(p) for p in r.get("p99_each", [r["p99"]]))
            add(f"| {r['rate'] / 1000:g}k frames/s | {r['daemon']} | {r['p50']} | {r['p99']} | {r['p999']} "
                f"| {r['max']} | {r['cpu_us_per_rec']} | {each} |")
    add("")
    add("| fan-out at 5k frames/s | daemon | CPU µs/record | x one subscriber | worst subscriber p99 µs "
        "| records dropped |")
    add("|---|---|---|---|---|---|")
    for r in rows:
        if r.get("fanout"):
            one = get(daemon=r["daemon"], fanout=True, subscribers=1)
            ratio = f"{r['cpu_us_per_rec'] / one['cpu_us_per_rec']:.2f}" if one else "-"
            add(f"| {r['subscribers']} subscriber(s) | {r['daemon']} | {r['cpu_us_per_rec']} | {ratio} "
                f"| {r['worst_p99']} | {r['dropped']} |")
    multi = [r for r in rows if r["venue"] != "binance"]
    if multi:
        add("")
        add("| flood of multi-record frames, 1 frame per TLS record | daemon | records/s | frames/s "
            "| CPU µs/record | records/s of each attempt |")
        add("|---|---|---|---|---|---|")
        for r in multi:
            each = ", ".join(f"{x:,}" for x in r.get("rate_each", [r["rec_per_s"]]))
            add(f"| {r['venue']} publicTrade, {r['trades_per_frame']} trades a frame | {r['daemon']} "
                f"| {r['rec_per_s']:,} | {r['rec_per_s'] // r['trades_per_frame']:,} | {r['cpu_us_per_rec']} "
                f"| {each} |")
    add("")
    add("| RSS after the records | daemon | subscriber | RSS MiB |")
    add("|---|---|---|---|")
    for m in mem:
        add(f"| {m['records']:,} | {m['daemon']} | {m['subscriber']} | {m['rss_mib']} |")
    return "\n".join(out)


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="feedd-compare-", dir="/tmp"))
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    context = ssl_server_context(ca)
    server = Server(context)
    daemons = [d for d in args.only.split(",") if d]
    if args.before:
        daemons.insert(0, "feedd-before")
    if args.floor:
        daemons.insert(0, "trio-floor")
    rows: list[dict[str, Any]] = []
    mem: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        bench = Bench(args, work, server)

        async def repeated(count: int, rate: float | None, fpw: int = 1, venue: str = "binance",
                           trades_per_frame: int = 1, among: list[str] = daemons) -> None:
            """Each daemon ``--repeat`` times, taking turns (so a burst of load elsewhere on the
            machine hits one attempt, not one daemon); each figure is the median of its attempts."""
            attempts: dict[str, list[dict[str, Any]]] = {d: [] for d in among}
            for _ in range(args.repeat):
                for d in among:
                    attempts[d].append(await bench.measure(d, count, rate, fpw, venue=venue,
                                                           trades_per_frame=trades_per_frame))
            for d in among:
                rows.append(median_row(attempts[d]))

        for fpw in (1, 50) if args.flood else ():
            await repeated(args.flood, None, fpw)
        for k in [int(k) for k in args.multi.split(",") if k] if args.flood else ():
            # the older feedd may predate Bybit: only the daemons that speak it
            await repeated(args.flood - args.flood % k, None, venue="bybit-linear", trades_per_frame=k,
                           among=[d for d in daemons if d not in ("feedd-before", "trio-floor")])
        for rate in [float(r) for r in args.rates.split(",") if r]:
            await repeated(int(rate * args.secs), rate)
        for k in [int(k) for k in args.fanout.split(",") if k]:
            for d in [d for d in daemons if d in args.fanout_daemons.split(",")]:
                row = await bench.measure(d, int(5000 * args.secs), 5000.0, subscribers=k)
                row["fanout"] = True
                rows.append(row)
        if args.memory:
            for d in [d for d in daemons if d in args.memory_daemons.split(",")]:
                for mode in ("read", "stall"):
                    mem.append(await bench.memory(d, args.memory, mode))
        nursery.cancel_scope.cancel()
    print()
    print(table(rows, mem, daemons))


def median_row(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the attempts (records/s, CPU, each latency percentile)."""
    row = dict(attempts[0])
    for key in ("rec_per_s", "cpu_us_per_rec", "p50", "p99", "p999", "max", "worst_p99"):
        values = sorted(a[key] for a in attempts)
        row[key] = values[len(values) // 2]
    row["attempts"] = len(attempts)
    row["p99_each"] = [a["p99"] for a in attempts]
    row["cpu_each"] = [a["cpu_us_per_rec"] for a in attempts]
    row["rate_each"] = [a["rec_per_s"] for a in attempts]
    return row


def ssl_server_context(ca: trustme.CA) -> Any:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    venv = Path(sys.executable).parent
    parser.add_argument("--feedd", default=str(venv / "feedd"), help="the feedd executable")
    parser.add_argument("--cryptofeed-python", default=sys.executable,
                        help="a Python with cryptofeed installed (default: this one)")
    parser.add_argument("--only", default="feedd,cryptofeed", help="daemons to run, comma-separated")
    parser.add_argument("--before", help="another feedd executable (an older version) to run as "
                        "'feedd-before' beside the others, for a before/after table from one run")
    parser.add_argument("--floor", nargs="?", const=str(Path(__file__).parent / "floor.sh"),
                        help="also run bench/floor.py as 'trio-floor' (the least a trio daemon does "
                        "per record on feedd's transport); optionally its executable")
    parser.add_argument("--flood", type=int, default=200_000, help="records per flood run (0: skip)")
    parser.add_argument("--multi", default="10", help="trades per Bybit publicTrade frame, for the "
                        "multi-record flood rows (comma-separated; empty: skip them)")
    parser.add_argument("--rates", default="1000,5000,20000", help="paced rates, frames/s")
    parser.add_argument("--secs", type=float, default=4.0, help="seconds per paced run")
    parser.add_argument("--repeat", type=int, default=3,
                        help="attempts per flood and paced row, daemons taking turns; medians shown")
    parser.add_argument("--fanout", default="1,10,100", help="subscriber counts at 5k frames/s")
    parser.add_argument("--fanout-daemons", default="feedd-before,feedd", help="daemons the fan-out rows run")
    parser.add_argument("--memory", type=int, default=1_000_000,
                        help="records before the RSS is read (0: skip those rows)")
    parser.add_argument("--profile", help="a folder for py-spy profiles of each feedd run (folded stacks)")
    parser.add_argument("--strace", help="a folder for `strace -c -f` system call counts of each "
                        "daemon run (it slows the daemon: not for the CPU or latency figures)")
    parser.add_argument("--attach", help="a command run against each daemon while it is measured "
                        "(stopped with SIGINT): {pid} and {out} are replaced, e.g. "
                        "'perf stat -e task-clock,context-switches -p {pid} -o {out}'")
    parser.add_argument("--attach-dir", default="/tmp/feedd-attach", help="the folder of {out}")
    parser.add_argument("--profile-options", default="--nonblocking",
                        help="py-spy options (write --profile-options=--native)")
    parser.add_argument("--memory-daemons", default="feedd-before,feedd,cryptofeed",
                        help="daemons the RSS rows run")
    parser.add_argument("--quick", action="store_true", help="smaller runs: rougher figures, ~1 minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.flood, args.secs, args.memory, args.fanout, args.repeat = 50_000, 3.0, 0, "1,10", 1
    return args


if __name__ == "__main__":
    trio.run(main, parse_args())


