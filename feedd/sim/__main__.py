"""``python -m feedd.sim VENUE [options]``: serve a simulator until Ctrl-C.

``binance [--futures]`` serves Binance spot or USD-M; ``bybit [--category C]`` serves Bybit's
spot, linear and inverse endpoints on one port (``ws_url`` is the one of ``--category``);
``coinbase`` serves Coinbase Advanced Trade's market-data endpoint and products REST call.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from functools import partial

import trio

from feedd.sim import binance, bybit, coinbase


def _symbols(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m feedd.sim", description=__doc__)
    venues = parser.add_subparsers(dest="venue", required=True, metavar="VENUE")
    binance_args = venues.add_parser("binance", help="Binance spot, or USD-M futures with --futures")
    binance_args.add_argument("--futures", action="store_true", help="serve USD-M futures routes")
    binance_args.add_argument(
        "--symbols", default=",".join(binance.DEFAULT_SYMBOLS), help="comma-separated symbols with data"
    )
    binance_args.add_argument("--flood", action="store_true", help="send trades as fast as possible")
    bybit_args = venues.add_parser("bybit", help="Bybit v5 public spot, linear and inverse streams")
    bybit_args.add_argument("--category", choices=bybit.CATEGORIES, default="spot", help="market of ws_url")
    bybit_args.add_argument(
        "--symbols", default=",".join(bybit.DEFAULT_SYMBOLS), help="comma-separated spot and linear symbols"
    )
    bybit_args.add_argument(
        "--inverse-symbols",
        default=",".join(bybit.DEFAULT_INVERSE_SYMBOLS),
        help="comma-separated inverse symbols",
    )
    coinbase_args = venues.add_parser("coinbase", help="Coinbase Advanced Trade market data")
    coinbase_args.add_argument(
        "--products", default=",".join(coinbase.DEFAULT_PRODUCTS), help="comma-separated products with data"
    )
    coinbase_args.add_argument(
        "--quiet-products", default="", help="comma-separated products that exist but never trade"
    )
    for venue in (binance_args, bybit_args, coinbase_args):
        venue.add_argument("--host", default="127.0.0.1")
        venue.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free port)")
        venue.add_argument("--speed", type=float, default=1.0, help="replay speed factor")
    return parser


Simulator = binance.BinanceSimulator | bybit.BybitSimulator | coinbase.CoinbaseSimulator


async def _serve(sim: Simulator, host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(sim.serve, host=host, port=port))
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
    sim: Simulator
    if args.venue == "binance":
        sim = binance.BinanceSimulator(
            futures=args.futures, symbols=_symbols(args.symbols), speed=args.speed, flood=args.flood
        )
    elif args.venue == "coinbase":
        sim = coinbase.CoinbaseSimulator(
            products=_symbols(args.products), quiet_products=_symbols(args.quiet_products), speed=args.speed
        )
    else:
        sim = bybit.BybitSimulator(
            category=args.category,
            symbols=_symbols(args.symbols),
            inverse_symbols=_symbols(args.inverse_symbols),
            speed=args.speed,
        )
    trio.run(_serve, sim, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
