"""``python -m feedd.sim VENUE [options]``: serve a simulator until Ctrl-C.

VENUE is any simulator module :func:`feedd.sim.registry` finds, with options of its own: e.g.
``binance [--futures]`` serves Binance spot or USD-M; ``bybit [--category C]`` serves Bybit's
spot, linear and inverse endpoints on one port (``ws_url`` is the one of ``--category``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from feedd.sim import registry
from feedd.sim.server import SimServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m feedd.sim", description=__doc__)
    venues = parser.add_subparsers(dest="venue", required=True, metavar="VENUE")
    for spec in registry().values():
        venue = venues.add_parser(spec.name, help=spec.help)
        spec.add_arguments(venue)
        venue.add_argument("--host", default="127.0.0.1")
        venue.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free port)")
        venue.add_argument("--speed", type=float, default=1.0, help="replay speed factor")
    return parser


async def _serve(sim: SimServer[Any], host: str, port: int) -> None:
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
    sim = registry()[args.venue].simulator(args)
    trio.run(_serve, sim, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
