"""Soak: every venue's simulator faulted on a random schedule for N minutes while one subscriber
checks every record the daemon publishes. A figure, not a test.

The simulators (Binance, Bybit spot, Coinbase) run in this process on the real clock; the daemon
runs as ``feedd run`` in its own process (``--in-process``: a ``WebSocketService`` here, so its
memory is mixed with the simulators'). Each venue gets its own :class:`FaultSchedule`: faults of
every kind its simulator supports (see ``feedd/sim/faults.py``), at exponentially spaced times of
mean ``--mean-interval`` seconds, reproducible from ``--seed``.

The subscriber reads the Unix socket and checks, per symbol, that trade ids follow on (every
simulator numbers a symbol's trades one by one). Trades the daemon fetched from the REST after
a gap (``"backfilled": true``) count as delivered, also when they come after later live ones (a
late backfill fills its hole then). A hole still open at the end is a trade *unrecovered*; one a
``{"type": "backfill", ...}`` line said it could not fetch (its ``lost``, ``missing`` ids) is
*lost (backfill)*. Unrecovered trades are further *announced* when the daemon said, since the
symbol's previous trade, that its connection was lost (a ``disconnect`` line naming the symbol,
or the venue with no symbols) or that this subscriber fell behind (``gap``); otherwise
*unannounced*. An id at or below the last one that fills no hole is a duplicate.

    .venv/bin/python bench/soak.py [--minutes 2] [--seed 1] [--mean-interval 15] [--in-process]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio

from feedd import WebSocketService
from feedd.config import load_config
from feedd.sim import BinanceSimulator, BybitSimulator, CoinbaseSimulator
from feedd.sim.coinbase_exchange import CoinbaseExchangeSimulator
from feedd.sim.faults import FAULTS, Fault, FaultSchedule, supports
from feedd.sim.okx import OkxSimulator
from feedd.sim.server import SimServer

SYMBOLS = {
    "binance": ("BTCUSDT", "ETHUSDT"),
    "bybit": ("BTCUSDT", "ETHUSDT"),
    "coinbase": ("BTC-USD", "ETH-USD"),
    "coinbase-exchange": ("BTC-USD", "ETH-USD"),
    "okx": ("BTC-USDT", "ETH-USDT"),
}
#: tape speeds: a few trades per symbol per second on each venue
SPEEDS = {"binance": 0.5, "bybit": 5.0, "coinbase": 2.0, "coinbase-exchange": 2.0, "okx": 1.0}
#: the venues whose trade ids are consecutive on the wire too (the others' the simulators make so)
ID_VENUES = ("binance", "coinbase-exchange")
#: holes tracked id by id per symbol at most (a larger jump is counted, not tracked)
MAX_HOLE = 100_000
#: how long lasting faults last here (the daemon's stale_after is STALE_AFTER)
STALE_AFTER = 5.0
PARAMS: dict[str, dict[str, Any]] = {
    "half_open": {"duration": 20.0},
    "stall": {"duration": 8.0},
    "heartbeat_only": {"duration": 8.0},
    "slow_loris": {"duration": 8.0, "byte_interval": 0.05},
    "subscribe_error": {"duration": 8.0},  # symbols: one of the venue's, chosen per fault
    "swallow_acks": {"duration": 8.0},
    "server_shutdown": {"close_after": 1.0},
}
#: after the last fault: time for every venue to come back before the figures are taken
SETTLE = 10.0


@attrs.define
class Checker:
    """Every line of one subscriber, checked: per-symbol trade-id continuity, duplicates, the
    holes backfills filled or named lost, and whether each remaining loss fell in an interval
    the daemon announced."""

    trades: Counter[str] = attrs.field(factory=Counter)
    tickers: Counter[str] = attrs.field(factory=Counter)
    #: trades delivered ``backfilled``, and trades backfill events said were lost
    recovered: Counter[str] = attrs.field(factory=Counter)
    lost_backfill: Counter[str] = attrs.field(factory=Counter)
    #: holes too large to track id by id, by venue and announced or not
    untracked: Counter[tuple[str, bool]] = attrs.field(factory=Counter)
    duplicates: Counter[str] = attrs.field(factory=Counter)
    notices: Counter[str] = attrs.field(factory=Counter)
    gap_dropped: int = 0
    undecodable: int = 0
    #: each venue's faults as (start, end, kind) on time.monotonic(), and the unannounced losses
    #: by the kinds that were in play since the symbol's previous trade
    faults: dict[str, list[tuple[float, float, str]]] = attrs.field(factory=lambda: defaultdict(list))
    _last_at: dict[tuple[str, str], float] = attrs.field(factory=dict)
    #: set once a trade of every venue arrived
    every_venue: trio.Event = attrs.field(factory=trio.Event)
    _last: dict[tuple[str, str], int] = attrs.field(factory=dict)
    #: per symbol, the ids still missing: whether the loss was announced, and the fault kinds then
    _holes: dict[tuple[str, str], dict[int, tuple[bool, str]]] = attrs.field(
        factory=lambda: defaultdict(dict))
    #: per symbol, the id ranges backfill events said were lost
    _lost_ranges: dict[tuple[str, str], list[tuple[int, int]]] = attrs.field(
        factory=lambda: defaultdict(list))
    #: symbols the daemon said were cut (or this subscriber behind) since their last trade
    _announced: set[tuple[str, str]] = attrs.field(factory=set)
    #: between a disconnect line and its reconnect line
    _down: set[tuple[str, str]] = attrs.field(factory=set)

    def line(self, raw: bytes) -> None:
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.undecodable += 1
            return
        kind = item.get("type")
        if kind is not None:
            self._notice(kind, item)
        elif item.get("kind") == "trade":
            self._trade(item["exchange"], item["symbol"], int(item["trade_id"]),
                        item.get("backfilled") is True)
        else:
            self.tickers[item.get("exchange", "?")] += 1

    def _keys(self, item: Mapping[str, Any]) -> set[tuple[str, str]]:
        venue = item.get("exchange")
        symbols = item.get("symbols") or [s for v, s in self._last if v == venue]
        return {(str(venue), str(s)) for s in symbols}

    def _notice(self, kind: str, item: Mapping[str, Any]) -> None:
        self.notices[kind] += 1
        if kind == "gap":
            self.gap_dropped += int(item.get("dropped", 0))
            self._announced.update(self._last)
        elif kind == "disconnect":
            keys = self._keys(item)
            self._announced |= keys
            self._down |= keys
        elif kind == "reconnect":
            self._down -= self._keys(item)
        elif kind == "backfill":
            self.lost_backfill[str(item.get("exchange"))] += int(item.get("lost", 0))
            first, last = item.get("missing", (0, 0))
            if item.get("lost") and (first, last) != (0, 0):
                for key in self._keys(item):
                    self._lost_ranges[key].append((first, last))
                    holes = self._holes[key]
                    for trade_id in [i for i in holes if first <= i <= last]:  # a late event
                        del holes[trade_id]

    def _named_lost(self, key: tuple[str, str], trade_id: int) -> bool:
        return any(first <= trade_id <= last for first, last in self._lost_ranges[key])

    def _trade(self, venue: str, symbol: str, trade_id: int, backfilled: bool) -> None:
        key = (venue, symbol)
        self.trades[venue] += 1
        if backfilled:
            self.recovered[venue] += 1
        if len(self.trades) == len(SYMBOLS):
            self.every_venue.set()
        last = self._last.get(key)
        if last is not None:
            if trade_id <= last:
                if self._holes[key].pop(trade_id, None) is None:
                    self.duplicates[venue] += 1
                return  # else a late backfill filled its hole
            missing = trade_id - last - 1
            if missing:
                announced = key in self._announced or key in self._down
                since = self._last_at[key]
                kinds = "+".join(sorted({kind for start, end, kind in self.faults[venue] if end >= since}))
                if missing > MAX_HOLE:
                    self.untracked[(venue, announced)] += missing
                else:
                    holes = self._holes[key]
                    for hole in range(last + 1, trade_id):
                        if not self._named_lost(key, hole):
                            holes[hole] = (announced, kinds or "(no fault)")
        self._last[key] = trade_id
        self._last_at[key] = time.monotonic()
        self._announced.discard(key)

    def unrecovered(self, venue: str, announced: bool | None = None) -> int:
        """Holes still open (of one kind: announced or not; None: both)."""
        count = sum(1 for (v, _), holes in self._holes.items() if v == venue
                    for was, _ in holes.values() if announced is None or was is announced)
        return count + sum(n for (v, was), n in self.untracked.items()
                           if v == venue and (announced is None or was is announced))

    def unannounced_by_fault(self) -> Counter[str]:
        counted: Counter[str] = Counter()
        for holes in self._holes.values():
            counted.update(kinds for was, kinds in holes.values() if not was)
        return counted


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def config_text(sims: Mapping[str, SimServer[Any]]) -> str:
    text = f"""
[feed]
cache_dir = "cache"
state_file = "subscriptions.json"
reconnect_interval = 0.2
max_backoff = 2.0
stale_after = {STALE_AFTER}
stable_after = 5.0
connect_timeout = 3.0
max_retries = 0

[unix]
path = "feedd.sock"

[http]
listen = "127.0.0.1:0"
"""
    for venue, sim in sims.items():
        listed = ", ".join(f'"{s}"' for s in SYMBOLS[venue])
        text += f'\n[exchanges.{venue}]\nsymbols = [{listed}]\n'
        text += f'url = "{sim.ws_url}"\nrest_url = "{sim.rest_url}"\n'
        if venue != "coinbase-exchange":
            text += 'channels = ["trades", "ticker"]\n'
    return text


def schedules(
    sims: Mapping[str, SimServer[Any]], seed: int, seconds: float, mean_interval: float
) -> dict[str, FaultSchedule]:
    """One schedule per venue, every kind its simulator supports, from one seed."""
    rng = random.Random(seed)
    made: dict[str, FaultSchedule] = {}
    for venue, sim in sims.items():
        kinds = [kind for kind in FAULTS if supports(sim, kind)]
        schedule = FaultSchedule.random(rng, seconds=seconds, mean_interval=mean_interval, kinds=kinds,
                                        params=PARAMS)
        # a refused symbol is one of the venue's own, drawn per fault
        made[venue] = FaultSchedule([
            attrs.evolve(f, params={**f.params, "symbols": [rng.choice(SYMBOLS[venue])]})
            if f.kind == "subscribe_error" else f
            for f in schedule.faults
        ])
    return made


def note_fault(checker: Checker, venue: str, fault: Fault) -> None:
    now = time.monotonic()
    lasting = "duration" in fault.params or fault.kind in PARAMS
    checker.faults[venue].append((now, now + (fault.duration if lasting else 0.0), fault.kind))


async def connect(path: str, process: trio.Process | None) -> trio.SocketStream | None:
    """Connect once the daemon listens (a process takes a moment to start); None if it ended."""
    while process is None or process.returncode is None:
        try:
            return await trio.open_unix_socket(path)
        except (FileNotFoundError, ConnectionRefusedError):
            await trio.sleep(0.05)
    return None


async def read_lines(stream: trio.SocketStream, checker: Checker) -> None:
    buffer = b""
    while data := await stream.receive_some(1 << 20):
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            checker.line(raw)


async def soak(args: argparse.Namespace, workdir: Path) -> None:
    sims: dict[str, Any] = {
        "binance": BinanceSimulator(speed=SPEEDS["binance"]),
        "bybit": BybitSimulator(speed=SPEEDS["bybit"]),
        "coinbase": CoinbaseSimulator(speed=SPEEDS["coinbase"]),
        "coinbase-exchange": CoinbaseExchangeSimulator(speed=SPEEDS["coinbase-exchange"]),
        "okx": OkxSimulator(instruments=SYMBOLS["okx"], speed=SPEEDS["okx"]),
    }
    for sim in sims.values():
        # trades go on while a venue's connection is down, as on the exchange: the REST keeps them
        sim.keep_trading()
    checker = Checker()
    injected: dict[str, list[Fault]] = defaultdict(list)
    async with trio.open_nursery() as nursery:
        for sim in sims.values():
            await nursery.start(sim.serve)
        config_path = workdir / "config.toml"
        config_path.write_text(config_text(sims), encoding="utf-8")
        socket_path = str(workdir / "feedd.sock")
        log_path = workdir / "feedd.log"
        process: trio.Process | None = None
        service: WebSocketService | None = None
        if args.in_process:
            service = WebSocketService(load_config(config_path, environ={}), serve_unix=True)
            await nursery.start(service.run)
            pid = os.getpid()
        else:
            with log_path.open("wb") as log_file:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "feedd", "run", "--config", str(config_path)],
                    stdout=subprocess.DEVNULL, stderr=log_file,
                )
            pid = process.pid
        stream: trio.SocketStream | None = None
        with trio.move_on_after(60) as starting:
            stream = await connect(socket_path, process)
            if stream is not None:
                await stream.send_all(b"{}\n")
                nursery.start_soon(read_lines, stream, checker)
                await checker.every_venue.wait()
        if stream is None or starting.cancelled_caught:
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
            raise SystemExit(f"the daemon did not start streaming every venue within 60 s:\n{log}")
        rss_start = rss_kib(pid)
        started = time.monotonic()
        plans = schedules(sims, args.seed, args.minutes * 60, args.mean_interval)
        print(f"soak: {args.minutes:g} min, seed {args.seed}, "
              f"{sum(len(p.faults) for p in plans.values())} faults planned, daemon "
              f"{'in-process' if args.in_process else f'pid {pid}'}", flush=True)
        rss_peak = rss_start
        async with trio.open_nursery() as faults:
            for venue, plan in plans.items():
                faults.start_soon(partial(
                    plan.play, sims[venue], applied=injected[venue],
                    on_fault=partial(note_fault, checker, venue),
                ))
            while faults.child_tasks:
                await trio.sleep(1.0)
                rss_peak = max(rss_peak, rss_kib(pid))
        await trio.sleep(SETTLE)
        rss_end = rss_kib(pid)
        elapsed = time.monotonic() - started
        if service is not None:
            service.stop()
        if process is not None:
            process.terminate()
            await process.wait()
        nursery.cancel_scope.cancel()
    report(checker, injected, elapsed, rss_start, rss_peak, rss_end, log_path)


def report(
    checker: Checker, injected: Mapping[str, list[Fault]], elapsed: float,
    rss_start: int, rss_peak: int, rss_end: int, log_path: Path,
) -> None:
    venues = sorted(SYMBOLS)
    by_kind = Counter(f.kind for faults in injected.values() for f in faults)
    print(f"ran {elapsed:.0f} s (faults, then {SETTLE:g} s to settle)")
    print(f"faults injected: {sum(by_kind.values())}: "
          + ", ".join(f"{kind} {count}" for kind, count in sorted(by_kind.items())))
    for venue in venues:
        kinds = Counter(f.kind for f in injected.get(venue, []))
        print(f"  {venue:17s} " + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())))
    print(f"{'venue':17s} {'trades':>7s} {'tickers':>7s} {'recovered':>9s} {'lost (backfill)':>15s} "
          f"{'unrecovered':>11s} {'(announced':>10s} {'unannounced)':>12s} {'duplicates':>10s}")
    for venue in venues:
        print(f"{venue:17s} {checker.trades[venue]:7d} {checker.tickers[venue]:7d} "
              f"{checker.recovered[venue]:9d} {checker.lost_backfill[venue]:15d} "
              f"{checker.unrecovered(venue):11d} {checker.unrecovered(venue, True):10d} "
              f"{checker.unrecovered(venue, False):12d} {checker.duplicates[venue]:10d}")
    total = sum(checker.trades.values()) + sum(checker.tickers.values())
    print(f"records checked: {total} ({sum(checker.trades.values())} trades checked for sequence); "
          f"recovered: {sum(checker.recovered.values())}; lost (backfill): "
          f"{sum(checker.lost_backfill.values())}; unrecovered: "
          f"{sum(checker.unrecovered(v) for v in venues)} (id venues {', '.join(ID_VENUES)}: "
          f"{sum(checker.unrecovered(v) for v in ID_VENUES)}); "
          f"duplicates: {sum(checker.duplicates.values())}")
    print("unannounced losses by the venue's faults in play since the symbol's previous trade: "
          + (", ".join(f"{k} {v}" for k, v in checker.unannounced_by_fault().most_common()) or "none"))
    print("notices: " + (", ".join(f"{k} {v}" for k, v in sorted(checker.notices.items())) or "none")
          + f" (gap notices dropped {checker.gap_dropped} records); undecodable lines {checker.undecodable}")
    print(f"daemon RSS: start {rss_start / 1024:.1f} MiB, peak {rss_peak / 1024:.1f} MiB, "
          f"end {rss_end / 1024:.1f} MiB")
    if log_path.exists():
        lines = log_path.read_text(errors="replace").splitlines()
        levels = Counter(line.split()[2] for line in lines if len(line.split()) > 2)
        print(f"daemon log: {len(lines)} lines ({', '.join(f'{k} {v}' for k, v in sorted(levels.items()))})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mean-interval", type=float, default=15.0,
                        help="mean seconds between two faults of one venue")
    parser.add_argument("--in-process", action="store_true",
                        help="run the daemon in this process (its RSS then includes the simulators')")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="feedd-soak-") as workdir:
        trio.run(soak, args, Path(workdir))


if __name__ == "__main__":
    main()
