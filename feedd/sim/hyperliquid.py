"""A local Hyperliquid: the public WebSocket (``/ws``) and the ``info`` REST endpoint.

The protocol of protocols/README.md §9, checked against Hyperliquid's API docs: one subscription
per message, acknowledged by ``subscriptionResponse`` echoing it; ``trades`` (the coin's last
trades first), ``bbo`` (when it changed) and ``activeAssetCtx`` (``activeSpotAssetCtx`` for spot),
each sent its current state on subscribe; ``ping`` answered by ``pong``; a connection sent
nothing for 60 s is cut; over 2000 messages a minute from one address close the connection.
Failures are ``{"channel": "error", "data": <text>}`` worded as clients record them [3p].
``POST /info`` answers ``meta`` and ``spotMeta``. Every coin replays the bundled BTC recording
(``data/hyperliquid/README.md``) at a level of its own; ``tid`` counts each coin's trades from 1
(Hyperliquid's is a hash), so a lost trade shows.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections import deque
from collections.abc import Iterable, Mapping
from functools import cache, partial
from typing import Any, Final

import orjson
import trio

from feedd.sim.market import Market, price_factor
from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection
from feedd.sim.replay import Demands, Recording, load_recording, paced, play, times
from feedd.sim.rest import HttpRequest, HttpResponse
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec

DEFAULT_PERPS: Final = ("BTC", "ETH", "SOL")
DEFAULT_SPOT: Final = ("PURR/USDC", "@107")
#: [hb] "The server will close any connection if it hasn't sent a message to it in the last 60 seconds"
IDLE_TIMEOUT: Final = 60.0
#: [rl] "Maximum of 2000 messages sent to Hyperliquid per minute across all websocket connections"
MAX_MESSAGES_PER_MINUTE: Final = 2000
#: [rl] "Maximum of 1000 websocket subscriptions" (per IP; counted per connection here)
MAX_SUBSCRIPTIONS: Final = 1000
SNAPSHOT_TRADES: Final = 30  # as many as the recorded snapshot held
TYPES: Final = ("trades", "bbo", "activeAssetCtx")
#: the tapes each type's messages are made of: the context has the last trade and the quote's mid
TAPES_OF_TYPE: Final = {"trades": ("trades",), "bbo": ("bbo",), "activeAssetCtx": ("trades", "bbo")}
PATH: Final = "/ws"
_MALFORMED_FRAME: Final = '{"channel":"trades","data":[{"coin":"BTC","side":"B","px":"10505'


def _fixed(value: float, places: int) -> str:
    """A decimal without trailing zeros but one (``105056.0``, ``0.0222``), as Hyperliquid writes."""
    text = f"{value:.{places}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@cache
def tapes() -> tuple[Recording, Recording, float]:
    """The recording's trades, one payload per trade time and paced by it; its books' best levels,
    paced as received; and its first price (what a coin's level scales)."""
    recording = load_recording("hyperliquid", "btc")
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for frame in recording.payloads:
        for trade in frame["data"] if frame["channel"] == "trades" else ():
            groups.setdefault(trade["time"], []).append(trade)
    frames = zip(times(recording), recording.payloads, strict=True)
    books = [(at, frame["data"]["levels"]) for at, frame in frames if frame["channel"] == "l2Book"]
    return (
        paced("hyperliquid trades", [{"trades": g} for g in groups.values()], [ms / 1000 for ms in groups]),
        paced("hyperliquid bbo", [{"bid": b[0], "ask": a[0]} for _, (b, a) in books], [t for t, _ in books]),
        float(next(iter(groups.values()))[0]["px"]),
    )


class HyperliquidMarket(Market):
    """One coin: its level, trades (numbered from 1), best bid/offer and context."""

    def __init__(self, coin: str, index: int, spot: bool, reference: float) -> None:
        self.level = reference * price_factor(coin if spot else f"{coin}USDT")
        super().__init__(coin, index, self.level)
        self.spot = spot
        self._reference = reference
        self.next_tid = 1
        self.recent: deque[dict[str, Any]] = deque(maxlen=SNAPSHOT_TRADES)
        self.bbo: list[dict[str, Any] | None] = [None, None]
        #: what plays each of the coin's tapes: the types of it subscribed
        self.demands = Demands(TAPES_OF_TYPE)

    def price(self, recorded: Any) -> float:
        return round(float(recorded) / self._reference * self.level, self.price_decimals)

    def trade(self, recorded: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
        price = self.price(recorded["px"])
        size = max(round(float(recorded["sz"]) * self._reference / self.level, self.qty_decimals),
                   10.0**-self.qty_decimals)
        self.on_trade(price, size)
        tid, self.next_tid = self.next_tid, self.next_tid + 1
        self.recent.append({
            "coin": self.symbol, "side": recorded["side"], "px": _fixed(price, self.price_decimals),
            "sz": _fixed(size, self.qty_decimals), "time": now_ms, "hash": f"0x{tid:064x}", "tid": tid,
            "users": [f"0x{self.index:040x}", f"0x{tid:040x}"],
        })
        return self.recent[-1]

    def quote(self, recorded: Mapping[str, Any]) -> bool:
        """Take a recorded best bid/offer at this coin's level (a tick apart at least, as scaling
        may close the spread); whether it changed."""
        places = self.price_decimals
        bid = self.price(recorded["bid"]["px"])
        ask = max(self.price(recorded["ask"]["px"]), round(bid + 10.0**-places, places))
        levels: list[dict[str, Any] | None] = [{**recorded["bid"], "px": _fixed(bid, places)},
                                                {**recorded["ask"], "px": _fixed(ask, places)}]
        changed, self.bbo = levels != self.bbo, levels
        return changed

    def context(self) -> str:
        """The ``activeAssetCtx`` (``activeSpotAssetCtx``) message of the current state, in the
        field order recorded [3p]; the mark is the last trade price, the mid the quote's."""
        places, (bid, ask), coin = self.price_decimals, self.bbo, self.symbol
        mark = _fixed(self.last_price, places)
        mid = None if bid is None or ask is None else (float(bid["px"]) + float(ask["px"])) / 2
        ctx: dict[str, Any] = {"prevDayPx": _fixed(self.open_price, places),
                               "dayNtlVlm": _fixed(self.quote_volume, 2), "markPx": mark,
                               "midPx": None if mid is None else _fixed(mid, places + 1)}
        if self.spot:
            ctx |= {"circulatingSupply": "1000000000.0", "coin": coin}
        else:
            ctx = {"funding": "0.0000125", "openInterest": _fixed(self.volume / 10, self.qty_decimals),
                   **ctx, "premium": "0.0", "oraclePx": mark, "impactPxs": [mark, mark]}
        ctx["dayBaseVlm"] = _fixed(self.volume, self.qty_decimals)
        return envelope("activeSpotAssetCtx" if self.spot else "activeAssetCtx", {"coin": coin, "ctx": ctx})


def envelope(channel: str, data: Any) -> str:
    return orjson.dumps({"channel": channel, "data": data}).decode()


class HyperliquidProtocol:
    """Hyperliquid's WebSocket protocol, pure: one subscription per message, replies, limits. A
    channel is ``<type>:<coin>``, as the connection's :attr:`~SimConnection.topics` are."""

    def __init__(self, *, coins: Iterable[str], idle_timeout: float = IDLE_TIMEOUT,
                 max_messages_per_minute: int = MAX_MESSAGES_PER_MINUTE) -> None:
        self.liveness = Liveness(idle_timeout=idle_timeout, max_incoming_per_second=max_messages_per_minute,
                                 incoming_per_address=True, incoming_window=60.0)
        self.default_path = PATH
        self.malformed_frame = _MALFORMED_FRAME
        #: faults: coins whose subscribe is refused; subscribes dropped unanswered; pings unanswered
        self.refused: frozenset[str] = frozenset()
        self.swallow_subscribes = False
        self.silent_pongs = False
        self.errors_sent = 0  # error messages sent back
        self._coins = frozenset(coins)

    def open(self, path: str, query: str) -> Accept[SimConnection] | Reject:
        if path != PATH:
            return Reject(404, {"error": f"Not found: {path}"})
        return Accept(SimConnection(path))

    def receive(self, conn: SimConnection, text: str) -> Answer:
        request: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            request = orjson.loads(text)
        method = request.get("method") if isinstance(request, dict) else None
        if method == "ping":
            return Answer(frames=() if self.silent_pongs else ('{"channel":"pong"}',), ping=True)
        if method not in ("subscribe", "unsubscribe"):
            return self._fail(f"Error parsing JSON into valid websocket request: {text}")
        assert isinstance(request, dict)
        subscription = request.get("subscription")
        shown = orjson.dumps(subscription).decode()
        kind = subscription.get("type") if isinstance(subscription, dict) else None
        coin = subscription.get("coin") if isinstance(subscription, dict) else None
        if kind not in TYPES or coin not in self._coins or (coin in self.refused and method == "subscribe"):
            return self._fail(f"Invalid subscription {shown}")
        topic = f"{kind}:{coin}"
        ack = envelope("subscriptionResponse", {"method": method, "subscription": subscription})
        if method == "unsubscribe":
            if topic not in conn.topics:
                return self._fail(f"Already unsubscribed: {shown}")
            del conn.topics[topic]
            return Answer(frames=(ack,), stop=(topic,))
        if self.swallow_subscribes:
            return Answer()
        if topic in conn.topics:
            return self._fail(f"Already subscribed: {shown}")
        if len(conn.topics) >= MAX_SUBSCRIPTIONS:
            return self._fail(f"Cannot subscribe to more than {MAX_SUBSCRIPTIONS} channels.")
        conn.topics[topic] = None
        return Answer(frames=(ack,), start=(topic,))

    def _fail(self, text: str) -> Answer:
        self.errors_sent += 1
        return Answer(frames=(envelope("error", text),))


class HyperliquidSimulator(SimServer[SimConnection]):
    """Hyperliquid's WebSocket (:attr:`ws_url`) and ``POST /info`` on localhost, for ``perps``
    (``BTC``) and ``spot`` pairs (``PURR/USDC``, ``@<index>``)."""

    def __init__(self, *, perps: Iterable[str] = DEFAULT_PERPS, spot: Iterable[str] = DEFAULT_SPOT,
                 speed: float = 1.0, idle_timeout: float = IDLE_TIMEOUT,
                 max_messages_per_minute: int = MAX_MESSAGES_PER_MINUTE,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = speed
        self.perps = tuple(dict.fromkeys(perps))
        self.spot = tuple(s for s in dict.fromkeys(spot) if s not in self.perps)
        reference = tapes()[2]
        self._markets = {
            coin: HyperliquidMarket(coin, index, coin in self.spot, reference)
            for index, coin in enumerate(self.perps + self.spot)
        }
        protocol = HyperliquidProtocol(coins=self._markets, idle_timeout=idle_timeout,
                                       max_messages_per_minute=max_messages_per_minute)
        super().__init__(protocol, ssl_context=ssl_context)
        self._protocol = protocol

    def set_pong_silent(self, silent: bool) -> None:
        """Stop (or resume) answering pings, while everything else goes on."""
        self._protocol.silent_pongs = silent

    # ---- market data ---------------------------------------------------------------------

    def _run_feeds(self, nursery: trio.Nursery) -> None:
        trade_tape, book_tape, _ = tapes()
        for market in self._markets.values():
            for name, tape, handler in (("trades", trade_tape, self._on_trades),
                                        ("bbo", book_tape, self._on_book)):
                # coins start at different points of the tape, so they do not move in lockstep
                start = market.index * len(tape) // len(self._markets)
                nursery.start_soon(partial(play, tape, partial(handler, market), demand=market.demands[name],
                                           speed=self.speed, start=start))

    def _on_start(self, conn: SimConnection, channel: str) -> None:
        kind, _, coin = channel.partition(":")
        market = self._markets[coin]
        market.demands.add(kind, 1)
        # a subscription is sent its current state first: the last trades, the quote, the context
        if kind == "trades":
            self.deliver(conn, envelope("trades", list(market.recent)))
        elif kind == "bbo" and None not in market.bbo:
            self.deliver(conn, envelope("bbo", {"coin": coin, "time": _now_ms(), "bbo": market.bbo}))
        elif kind == "activeAssetCtx":
            self.deliver(conn, market.context())

    def _on_stop(self, conn: SimConnection, channel: str) -> None:
        kind, _, coin = channel.partition(":")
        self._markets[coin].demands.add(kind, -1)

    def _on_trades(self, market: HyperliquidMarket, payload: Mapping[str, Any]) -> None:
        now = _now_ms()
        trades = [market.trade(recorded, now) for recorded in payload["trades"]]
        self.publish(f"trades:{market.symbol}", envelope("trades", trades))
        self.publish(f"activeAssetCtx:{market.symbol}", market.context())

    def _on_book(self, market: HyperliquidMarket, payload: Mapping[str, Any]) -> None:
        if market.quote(payload):
            bbo = {"coin": market.symbol, "time": _now_ms(), "bbo": market.bbo}
            self.publish(f"bbo:{market.symbol}", envelope("bbo", bbo))
            self.publish(f"activeAssetCtx:{market.symbol}", market.context())

    # ---- REST ----------------------------------------------------------------------------

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST" or request.path != "/info":
            return HttpResponse(404, {"error": f"Not found: {request.method} {request.path}"})
        try:
            kind = orjson.loads(request.body).get("type")
        except (orjson.JSONDecodeError, AttributeError):
            kind = None
        if kind == "meta":
            universe = [{"name": coin, "szDecimals": self._markets[coin].qty_decimals, "maxLeverage": 40}
                        for coin in self.perps]
            return HttpResponse(200, {"universe": universe, "marginTables": []})
        if kind == "spotMeta":
            return HttpResponse(200, self.spot_meta())
        return HttpResponse(422, "Failed to deserialize the JSON body into the target type")  # [unverified]

    def spot_meta(self) -> dict[str, Any]:
        """``spotMeta``: USDC (token 0), one base token per pair, each pair at its ``@`` index."""
        tokens, universe = [{"name": "USDC", "szDecimals": 8, "weiDecimals": 8, "index": 0}], []
        for token, name in enumerate(self.spot, start=1):
            index = int(name[1:]) if name[:1] == "@" and name[1:].isdigit() else token - 1
            tokens.append({"name": name.partition("/")[0] if "/" in name else f"TOKEN{index}",
                           "szDecimals": self._markets[name].qty_decimals, "weiDecimals": 8, "index": token})
            universe.append({"name": name, "tokens": [token, 0], "index": index, "isCanonical": "/" in name})
        return {"tokens": tokens, "universe": universe}


#: what the tools need to run this simulator (found by :func:`feedd.sim.registry`)
SIMULATOR: Final = SimSpec(
    name="hyperliquid",
    help="Hyperliquid public market data (perpetuals and spot)",
    groups=(("hyperliquid",),),
    make=lambda venue_ids, speed: HyperliquidSimulator(speed=speed),
    symbols={"hyperliquid": ("BTC", "ETH")},
    spare="SOL",
    speed=5.0,  # the recorded tape is sparse (64 trades in 75 s)
)

__all__ = ["SIMULATOR", "HyperliquidMarket", "HyperliquidProtocol", "HyperliquidSimulator"]
