"""``python -m feedd.sim binance [--futures] [--port N] [--speed X]``: serve a simulator until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from functools import partial

import trio

from feedd.sim.binance import DEFAULT_SYMBOLS, BinanceSimulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m feedd.sim", description=__doc__)
    venues = parser.add_subparsers(dest="venue", required=True, metavar="VENUE")
    binance = venues.add_parser("binance", help="Binance spot, or USD-M futures with --futures")
    binance.add_argument("--futures", action="store_true", help="serve USD-M futures routes")
    binance.add_argument("--host", default="127.0.0.1")
    binance.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free port)")
    binance.add_argument("--speed", type=float, default=1.0, help="replay speed factor")
    binance.add_argument(
        "--symbols", default=",".join(DEFAULT_SYMBOLS), help="comma-separated symbols with data"
    )
    binance.add_argument("--flood", action="store_true", help="send trades as fast as possible")
    return parser


async def _serve_binance(args: argparse.Namespace) -> None:
    sim = BinanceSimulator(
        futures=args.futures,
        symbols=[s.strip() for s in args.symbols.split(",") if s.strip()],
        speed=args.speed,
        flood=args.flood,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(sim.serve, host=args.host, port=args.port))
        # Printed (not logged) on purpose: scripts read these two lines to find the simulator.
        print(f"ws_url {sim.ws_url}", flush=True)
        print(f"rest_url {sim.rest_url}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trio.run(_serve_binance, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
