"""One simulated symbol's price level and 24 h statistics, shared by every venue's simulator.

Each venue replays a recorded tape of one or a few symbols; every simulated symbol plays that
tape scaled to a price level of its own (:func:`price_factor`), with tick and size decimals
that suit the level, and keeps the rolling statistics a ticker reports. A venue without a
recording to replay generates its trades instead (:class:`RandomWalk`, :func:`generate`).
Payload shapes are the venue module's business.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable
from typing import Final

import trio

from feedd.sim.replay import Demand

# Price levels relative to BTCUSDT, so every symbol replays a BTC tape at a plausible level.
_PRICE_FACTORS: Final = {
    "BTCUSDT": 1.0,
    "ETHUSDT": 0.042,
    "BNBUSDT": 0.0086,
    "SOLUSDT": 0.0024,
    "DOGEUSDT": 0.0000011,
    "BTCUSD": 1.0,
    "ETHUSD": 0.042,
}
QUOTE_ASSETS: Final = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USD", "BTC", "ETH", "BNB", "EUR", "TRY")


def quote_asset(symbol: str) -> str:
    for quote in QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return quote
    return symbol[-4:]


def price_factor(symbol: str) -> float:
    """The symbol's price relative to BTC's: known for common symbols, else a stable, plausible
    level (a digit times a power of ten) derived from the name."""
    known = _PRICE_FACTORS.get(symbol)
    if known is not None:
        return known
    crc = zlib.crc32(symbol.encode())
    return (1 + crc % 9) * 10.0 ** -(1 + (crc >> 4) % 5)


def decimals(price: float) -> tuple[int, int]:
    """(price, quantity) decimals for a price level, as exchanges' filters have them: a cent tick
    down to $10, finer below; coarser size steps for cheaper coins (BTC 0.00001, SOL 0.001)."""
    magnitude = math.floor(math.log10(price))
    return min(8, max(2, 4 - magnitude)), min(8, max(0, magnitude + 1))


class Market:
    """A symbol's level, last trade and 24 h statistics, and the demand for its replays."""

    def __init__(self, symbol: str, index: int, price: float) -> None:
        self.symbol = symbol
        #: the symbol's position among the simulated ones (replays start at different offsets)
        self.index = index
        self.factor = price_factor(symbol)
        self.price_decimals, self.qty_decimals = decimals(price)
        self.last_price = price
        crc = zlib.crc32(symbol.encode())
        drift = ((crc % 601) - 300) / 10_000  # the 24 h change, within +-3 %
        self.open_price = price / (1 + drift)
        self.high = max(self.open_price, price) * 1.012
        self.low = min(self.open_price, price) * 0.988
        self.volume = 1.5e9 / price  # a 24 h quote volume of ~1.5 bn USDT
        self.quote_volume = self.volume * (self.open_price + price) / 2
        self.demand = Demand()

    def on_trade(self, price: float, size: float) -> None:
        self.last_price = price
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.volume += size
        self.quote_volume += size * price


class RandomWalk:
    """Generated trades of ``market``, for a venue with no recording to replay: each a small
    random step from the last price (reproducible: the generator is seeded with the symbol), at
    half a tick above it for a buy and below it for a sell, with a trade id counted up one by one
    (how the fault suite checks that no trade was lost)."""

    def __init__(self, market: Market, *, volatility: float = 0.0003) -> None:
        self.market = market
        self.volatility = volatility
        self.rng = random.Random(market.symbol)
        self.next_id = 100_000_000 + zlib.crc32(market.symbol.encode()) % 900_000_000

    def step(self) -> tuple[int, float, str]:
        """The next trade's id, price and taker side; the caller sizes it and records it
        (:meth:`Market.on_trade`)."""
        market, rng = self.market, self.rng
        tick = 10.0**-market.price_decimals
        mid = max(tick, market.last_price * (1 + rng.gauss(0, self.volatility)))
        side = rng.choice(("buy", "sell"))
        price = round(mid + tick / 2 if side == "buy" else mid - tick / 2, market.price_decimals)
        trade_id, self.next_id = self.next_id, self.next_id + 1
        return trade_id, max(price, tick), side


async def generate(emit: Callable[[], None], *, demand: Demand, rate: float, rng: random.Random) -> None:
    """Call ``emit`` ``rate`` times a second on average (gaps of 0.5 to 1.5 times the mean), only
    while ``demand`` wants it: a tape nobody listens to stands still and costs nothing."""
    while True:
        await demand.wanted.wait()
        await trio.sleep(rng.uniform(0.5, 1.5) / rate)
        emit()
