"""Binance COIN-M futures (``binance-coinm``, dstream) market streams, sans-IO.

COIN-M speaks the combined-stream protocol of Binance spot and USD-M (protocols §6.2), so this
module reuses :mod:`feedd.exchanges.binance`: trades from ``@aggTrade`` (the documented trade
stream; ``@trade`` is not), tickers from ``@ticker`` with the bid/ask of ``@bookTicker`` merged
in, as on USD-M, since the COIN-M ``@ticker`` carries no best bid/ask (§6.3). Unlike fstream,
dstream has no routed paths (``/public``, ``/market``): one endpoint carries every stream
(§6.1; the routed-path change of 2026-04-23 is USD-M only).

Volume is in base units (coins), as every record's ``volume`` is (docs/contract.md): a COIN-M
quantity counts contracts of ``contractSize`` USD each, so a trade's size is
``q * contractSize / price``; a ticker's volume is its ``q`` ("total traded base asset volume"),
not its ``v`` (contracts). Contract sizes come from ``/dapi/v1/exchangeInfo`` when feedd reads
it (``check_symbols``); until then, or without it, Binance's fixed rule applies: 100 USD for
BTC contracts, 10 USD for every other coin.

Errors: COIN-M nests some error replies, ``{"error": {"code": 3, "msg": ...}}`` (invalid JSON,
after which the server disconnects); they are reported as the flat ``code``/``msg`` ones are.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from feedd.errors import excerpt
from feedd.exchanges.base import DecodeError, Event, InstrumentPage, Session, Subscription, Topic, Venue
from feedd.exchanges.binance import BinanceSession, _BinanceVenue
from feedd.exchanges.fields import QuoteCache, single_route
from feedd.model import Message

#: USD per contract when exchangeInfo has not said: BTC contracts are 100 USD, others 10 USD
BTC_CONTRACT_SIZE = 100.0
OTHER_CONTRACT_SIZE = 10.0


def default_contract_size(symbol: str) -> float:
    """Binance's rule for a COIN-M symbol (``BTCUSD_PERP``, ``ETHUSD_251226``) by its pair."""
    return BTC_CONTRACT_SIZE if symbol.partition("_")[0] == "BTCUSD" else OTHER_CONTRACT_SIZE


def contracts_in_coins(sizes: dict[str, float], symbol: str, price: float, quantity: Any) -> float:
    """``quantity`` contracts of ``symbol`` (``sizes``: USD per contract, from exchangeInfo, else
    Binance's rule) in coins at ``price``."""
    if price <= 0:
        raise ValueError(f"price {price!r} is not positive: contracts cannot be made coins")
    size = sizes.get(symbol)
    if size is None:
        size = default_contract_size(symbol)
    return float(quantity) * size / price


class CoinmSession(BinanceSession):
    """A dstream connection: BinanceSession with sizes in coins and nested error replies."""

    _volume_key = "q"

    def __init__(self, venue_id: str, quotes: QuoteCache, contract_sizes: dict[str, float]) -> None:
        super().__init__(venue_id, quotes)
        #: symbol → USD per contract, shared with the venue (filled from exchangeInfo)
        self._contract_sizes = contract_sizes

    def _quantity(self, symbol: str, price: float, quantity: Any) -> float:
        return contracts_in_coins(self._contract_sizes, symbol, price, quantity)

    def decode(self, frame: Message, received_at: datetime) -> list[Event]:
        """As BinanceSession, plus the nested ``{"error": {"code", "msg"}, "id"?}`` reply."""
        events = super().decode(frame, received_at)
        if len(events) == 1 and isinstance(events[0], DecodeError) and "error" in frame:
            try:
                msg = orjson.loads(frame)
            except orjson.JSONDecodeError:
                return events
            error = msg.get("error") if type(msg) is dict else None
            if type(error) is dict and "code" in error:
                return [self._error({**error, "id": msg.get("id")})]
            if error is not None:
                return [DecodeError(f"'error' is not an object with a code: {error!r:.50}", excerpt(frame))]
        return events


class BinanceCoinm(_BinanceVenue):
    """Binance COIN-M futures: perpetual ``BTCUSD_PERP`` and dated ``BTCUSD_YYMMDD`` contracts."""

    venue_id = "binance-coinm"
    default_url = "wss://dstream.binance.com/stream"
    default_rest_url = "https://dapi.binance.com"
    #: "A single connection can listen to a maximum of 200 streams" (the COIN-M market-streams
    #: page; a 2026-05 scrape said 1024: 200 is the safe one)
    max_streams_per_connection = 200
    #: "WebSocket connections have a limit of 10 incoming messages per second", per connection
    max_messages_per_second = 10.0
    _instruments_path = "/dapi/v1/exchangeInfo"
    history_rate = 1.0
    #: "Compressed/Aggregate Trades List" (dapi), by the ``a`` ids of ``@aggTrade``
    _history_endpoint = "/dapi/v1/aggTrades"
    _history_id = "a"

    def __init__(self) -> None:
        super().__init__()
        #: symbol → contractSize (USD per contract) from the last exchangeInfo read
        self.contract_sizes: dict[str, float] = {}

    def new_session(self) -> Session:
        return CoinmSession(self.venue_id, self.quotes, self.contract_sizes)

    def _history_quantity(self, symbol: str, price: float, quantity: float) -> float:
        return contracts_in_coins(self.contract_sizes, symbol, price, quantity)

    def topics(self, subscription: Subscription) -> list[Topic]:
        symbol = subscription.symbol.lower()  # stream names want lower case (§6.1)
        if subscription.channel == "trades":
            return [Topic("", f"{symbol}@aggTrade")]
        if subscription.channel == "ticker":
            return [Topic("", f"{symbol}@ticker"), Topic("", f"{symbol}@bookTicker")]
        if subscription.channel == "quotes":
            return [Topic("", f"{symbol}@bookTicker")]
        raise ValueError(f"unknown channel {subscription.channel!r}")

    def url(self, route: str, base_url: str) -> str:
        return single_route(self.venue_id, route, base_url)

    def parse_instruments(self, body: Any) -> InstrumentPage:
        """The symbols whose ``contractStatus`` is ``TRADING`` (COIN-M's word; spot and USD-M say
        ``status``), keeping every listed symbol's ``contractSize``."""
        if not isinstance(body, dict):
            raise ValueError(f"exchangeInfo is not a JSON object: {excerpt(repr(body), 100)}")
        entries = body.get("symbols")
        if not isinstance(entries, list):
            raise ValueError("exchangeInfo has no 'symbols' list")
        tradable: set[str] = set()
        sizes: dict[str, float] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("symbol"), str):
                raise ValueError(f"exchangeInfo symbol entry without a 'symbol' string: "
                                 f"{excerpt(repr(entry), 100)}")
            symbol = entry["symbol"]
            size = entry.get("contractSize")
            if not isinstance(size, int | float) or isinstance(size, bool) or size <= 0:
                raise ValueError(f"exchangeInfo {symbol}: 'contractSize' is not a positive number: "
                                 f"{size!r:.50}")
            sizes[symbol] = float(size)
            if entry.get("contractStatus") == "TRADING":
                tradable.add(symbol)
        self.contract_sizes.update(sizes)
        return InstrumentPage(frozenset(tradable))


VENUES: dict[str, Callable[[], Venue]] = {
    "binance-coinm": BinanceCoinm,
}
