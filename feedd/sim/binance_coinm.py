"""A local Binance COIN-M futures exchange (dstream and dapi), on :mod:`feedd.sim.binance`.

COIN-M is USD-M's protocol without the routed paths (protocols §6.1: ``/stream`` and ``/ws``
carry every stream), with its own REST path (``/dapi/v1/exchangeInfo``, symbols listed by
``contractStatus`` and ``contractSize``) and inverse units (§6.3): quantities count contracts
(100 USD each for BTC, 10 USD for the others), a ticker's ``v`` is contracts and its ``q`` the
base coin, and tickers and book tickers name the pair (``ps``). Symbols are perpetuals
(``BTCUSD_PERP``) and quarterlies (``BTCUSD_261225``). The tape is the Binance BTCUSDT
recording that :class:`~feedd.sim.binance.BinanceSimulator` replays, each trade's size turned
into the same notional in contracts; everything else (the control requests and their replies,
ping frames and the 10-per-second message limit, ``serverShutdown``, faults) is Binance's.
"""

from __future__ import annotations

import argparse
import calendar
import time
from collections.abc import Iterable
from typing import Any, Final

from feedd.sim.binance import BinanceSimulator, _Market
from feedd.sim.replay import Recording
from feedd.sim.rest import HttpRequest, HttpResponse
from feedd.sim.spec import SimSpec, symbol_list

DEFAULT_SYMBOLS: Final = ("BTCUSD_PERP", "ETHUSD_PERP", "BTCUSD_261225", "ETHUSD_261225")
#: listed with contractStatus "PENDING_TRADING" (not trading), for clients to refuse
PENDING_SYMBOL: Final = "BTCUSD_270924"
INFO_PATH: Final = "/dapi/v1/exchangeInfo"


def contract_size(symbol: str) -> int:
    """USD per contract: 100 for BTC, 10 for every other coin (Binance's COIN-M rule)."""
    return 100 if symbol.startswith("BTCUSD_") else 10


def _contract_type(symbol: str) -> str:
    return "PERPETUAL" if symbol.endswith("_PERP") else "CURRENT_QUARTER"


def _delivery_ms(symbol: str) -> int:
    """A quarterly's delivery time (08:00 UTC of its YYMMDD); a perpetual's far-future one."""
    suffix = symbol.rpartition("_")[2]
    if not suffix.isdigit():
        return 4_133_404_800_000  # 2100-12-25, as exchangeInfo gives perpetuals
    return (calendar.timegm(time.strptime(suffix, "%y%m%d")) + 8 * 3600) * 1000


class _CoinmMarket(_Market):
    """A COIN-M symbol: priced as its pair (BTCUSD as BTCUSDT), sized in contracts."""

    def __init__(self, symbol: str, index: int, trades: Recording) -> None:
        pair = symbol.partition("_")[0]
        self.contract_size = contract_size(symbol)
        super().__init__(pair, index, True, trades)  # the pair sets the price level
        self.symbol, self.lower = symbol, symbol.lower()
        self.extra = {"ps": pair}
        #: the 24 h volume in contracts (``v``); Market's ``volume`` stays in coins (``q``)
        self.contracts = self.volume * self.last_price / self.contract_size

    def qty(self, value: float) -> str:
        """A recorded size in coins (at this symbol's level) as whole contracts, at least one."""
        coins = value / self.factor
        return str(max(1, round(coins * self.last_price / self.contract_size)))

    def trade(self, price: float, qty: str) -> None:
        self.last_qty = qty
        self.contracts += int(qty)
        self.on_trade(price, int(qty) * self.contract_size / price)

    def ticker(self, now: int) -> dict[str, Any]:
        payload = super().ticker(now)
        payload["v"] = str(round(self.contracts))
        payload["q"] = f"{self.volume:.8f}"
        payload["w"] = self.price(self.contracts * self.contract_size / self.volume)
        return payload


class BinanceCoinmSimulator(BinanceSimulator):
    """Binance COIN-M market streams and exchangeInfo on localhost (see the module docstring)."""

    _routed = False

    def __init__(self, *, symbols: Iterable[str] = DEFAULT_SYMBOLS, **options: Any) -> None:
        super().__init__(futures=True, symbols=symbols, **options)
        self.break_symbol = PENDING_SYMBOL

    def _new_market(self, symbol: str, index: int) -> _Market:
        return _CoinmMarket(symbol, index, self._trades)

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        if request.method == "GET" and request.path == INFO_PATH:
            return HttpResponse(200, self.exchange_info())
        if request.method == "GET" and request.path == "/dapi/v1/aggTrades":
            return self._history(request)
        return HttpResponse(404, {"code": -1, "msg": f"Not found: {request.method} {request.path}"})

    def exchange_info(self) -> dict[str, Any]:
        """The exchangeInfo body (samples/binance_coinm/exchangeInfo_response.json's fields):
        the simulated symbols TRADING, plus :data:`PENDING_SYMBOL`."""
        entries = [(s, "TRADING") for s in self.symbols]
        entries.append((self.break_symbol, "PENDING_TRADING"))
        symbols = []
        for symbol, status in entries:
            pair = symbol.partition("_")[0]
            market = self._markets.get(symbol.lower())
            decimals = market.price_decimals if market is not None else 1
            symbols.append({
                "symbol": symbol,
                "pair": pair,
                "contractType": _contract_type(symbol),
                "deliveryDate": _delivery_ms(symbol),
                "onboardDate": 1_597_042_800_000,
                "contractStatus": status,
                "contractSize": contract_size(symbol),
                "marginAsset": pair.removesuffix("USD"),
                "baseAsset": pair.removesuffix("USD"),
                "quoteAsset": "USD",
                "pricePrecision": decimals,
                "quantityPrecision": 0,
                "underlyingType": "COIN",
                "filters": [
                    {"filterType": "PRICE_FILTER", "tickSize": f"{10.0**-decimals:.{decimals}f}"},
                    {"filterType": "LOT_SIZE", "minQty": "1", "maxQty": "1000000", "stepSize": "1"},
                ],
            })
        return {"timezone": "UTC", "serverTime": int(time.time() * 1000), "symbols": symbols}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbols", default=",".join(DEFAULT_SYMBOLS), help="comma-separated contracts")
    parser.add_argument("--flood", action="store_true", help="send trades as fast as possible")


def _from_args(args: argparse.Namespace) -> BinanceCoinmSimulator:
    return BinanceCoinmSimulator(symbols=symbol_list(args.symbols), speed=args.speed, flood=args.flood)


#: what the tools need to run this simulator (found by :func:`feedd.sim.registry`)
SIMULATOR: Final = SimSpec(
    name="binance-coinm",
    help="Binance COIN-M futures (dstream, dapi)",
    groups=(("binance-coinm",),),
    make=lambda venue_ids, speed: BinanceCoinmSimulator(speed=speed),
    symbols={"binance-coinm": ("BTCUSD_PERP", "BTCUSD_261225")},
    spare="ETHUSD_PERP",
    # the aggTrade tape pauses up to 0.95 s: at full speed a subscribed symbol never waits over
    # a second for a trade, so a feed that stops is a stall, heartbeats or not (tests/faults)
    speed=1.0,
    add_arguments=_add_arguments,
    from_args=_from_args,
)

__all__ = ["SIMULATOR", "BinanceCoinmSimulator"]
