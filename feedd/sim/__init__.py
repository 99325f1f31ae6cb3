"""Local simulators of the exchanges' real WebSocket and REST protocols (design.md, Simulators).

Tests, the benchmark and ``feedd demo`` run these instead of the real venues: each serves its
venue's wire protocol on localhost, replays recorded traffic, and injects faults on demand.
:mod:`feedd.sim.server` is the venue-neutral server; a venue module holds its protocol and data.
"""

from feedd.sim.binance import BREAK_SYMBOL, BinanceConnection, BinanceSimulator, ControlRequest, parse_control
from feedd.sim.bybit import BybitConnection, BybitProtocol, BybitSimulator
from feedd.sim.coinbase import CoinbaseConnection, CoinbaseProtocol, CoinbaseSimulator
from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection, SimProtocol
from feedd.sim.replay import Recording, load_recording, parse_recording
from feedd.sim.rest import HttpRequest, HttpResponse, JsonHttpServer
from feedd.sim.server import SimServer

__all__ = [
    "BREAK_SYMBOL",
    "Accept",
    "Answer",
    "BinanceConnection",
    "BinanceSimulator",
    "BybitConnection",
    "BybitProtocol",
    "BybitSimulator",
    "CoinbaseConnection",
    "CoinbaseProtocol",
    "CoinbaseSimulator",
    "ControlRequest",
    "HttpRequest",
    "HttpResponse",
    "JsonHttpServer",
    "Liveness",
    "Recording",
    "Reject",
    "SimConnection",
    "SimProtocol",
    "SimServer",
    "load_recording",
    "parse_control",
    "parse_recording",
]
