"""A local OKX v5: the public WebSocket (``/ws/v5/public``) and ``GET /api/v5/public/instruments``.

Speaks protocols/README.md §8 as checked against OKX's v5 docs: ``{"id", "op", "args": [{"channel",
"instId"}]}`` answered per arg, ``{"id", "event": "subscribe" | "unsubscribe", "arg", "connId"}``,
or ``{"id", "event": "error", "code", "msg", "connId"}`` (no ``arg``): 60012 for a request that
is not one, 60019 for another op, 60018 for a channel or instrument that does not exist (its
``msg`` naming ``channel:<c>,instId:<i>``, the wording clients record [3p]), 60014 past 480
requests an hour on one connection. A bad arg is refused alone; the request's other args are
acknowledged [unverified: the docs do not say]. The client's text ``ping`` is answered ``pong``;
a connection with no subscription, or that neither pinged nor was sent data, for 30 s is closed
with 4004 ("No data received in 30s", the docs' close-frame table). ``notice`` 64008 announces a
service upgrade (:meth:`OkxSimulator.send_server_shutdown`).

Market data is generated, not replayed (no recording with a licence to ship covers today's
shapes): each instrument's trades, numbered one by one, at ``speed`` x 2 a second while someone
subscribes, each also moving its ticker, pushed on change as OKX does ("trade, best ask/bid
change"); a new ``tickers`` subscription gets the current ticker at once. Derivatives count in
contracts: ``sz`` and ``vol24h`` in contracts of the instrument's ``ctVal``, ``volCcy24h`` in
base currency.
"""

from __future__ import annotations

import argparse
import math
import random
import secrets
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson
import trio

from feedd.sim.market import Market, price_factor
from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection, status_phrase
from feedd.sim.rest import HttpRequest, HttpResponse
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec, symbol_list

PATH: Final = "/ws/v5/public"
INSTRUMENTS_PATH: Final = "/api/v5/public/instruments"
DEFAULT_INSTRUMENTS: Final = ("BTC-USDT", "ETH-USDT", "BTC-USDT-SWAP", "BTC-USD-SWAP", "BTC-USD-261225")
CHANNELS: Final = ("trades", "tickers")
#: [ws-overview] no subscription, or no data pushed, for 30 s: the connection breaks
IDLE_TIMEOUT: Final = 30.0
#: [ws-overview] "480 times per hour" per connection (subscribe, unsubscribe, login)
REQUESTS_PER_HOUR: Final = 480
TRADES_PER_SECOND: Final = 2.0
BTC_LEVEL: Final = 97_000.0
_EXPIRY_MS: Final = 1_798_185_600_000  # 2026-12-25 08:00 UTC, a Friday (futures settle at 08:00)
_MALFORMED_FRAME: Final = '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-US'


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _fixed(value: float, places: int) -> str:
    return f"{value:.{places}f}"


class Instrument(Market):
    """One instrument: its contract, book top, next trade id and the payloads it makes."""

    def __init__(self, inst_id: str, index: int) -> None:
        parts = inst_id.split("-")
        self.base, self.quote = parts[0], parts[1]
        self.inst_type = "SPOT" if len(parts) == 2 else "SWAP" if parts[2] == "SWAP" else "FUTURES"
        super().__init__(inst_id, index, BTC_LEVEL * price_factor(self.base + "USDT"))
        self.inverse = self.inst_type != "SPOT" and self.quote == "USD"
        #: base units per contract (linear: about 500 USD, as OKX's 0.01 BTC), quote units per
        #: contract (inverse: OKX's 100 USD for BTC, 10 USD for the others); spot: 1
        self.ct_val = 10.0 ** round(math.log10(500 / self.last_price))
        if self.inverse:
            self.ct_val = 100.0 if self.base == "BTC" else 10.0
        self.rng = random.Random(inst_id)
        self.next_trade_id = 100_000_000 + zlib.crc32(inst_id.encode()) % 900_000_000

    def contracts(self, base: float, price: float) -> float:
        return base * price / self.ct_val if self.inverse else base / self.ct_val

    def trade(self, now_ms: int) -> dict[str, Any]:
        """The next trade: a small random step, at the ask for a buy or the bid for a sell."""
        rng, tick = self.rng, 10.0**-self.price_decimals
        mid = max(tick, self.last_price * (1 + rng.gauss(0, 0.0003)))
        side = rng.choice(("buy", "sell"))
        price = round(mid + tick / 2 if side == "buy" else mid - tick / 2, self.price_decimals)
        if self.inst_type == "SPOT":
            size = round(rng.uniform(0.2, 3.0) * 10.0**-self.qty_decimals * 100, self.qty_decimals)
            sz, base = _fixed(size, self.qty_decimals), size
        else:
            count = rng.randint(1, 40)
            sz, base = str(count), count * self.ct_val / price if self.inverse else count * self.ct_val
        self.on_trade(price, base)
        self.trade_id, self.next_trade_id = self.next_trade_id, self.next_trade_id + 1
        return {"instId": self.symbol, "tradeId": str(self.trade_id), "px": _fixed(price, self.price_decimals),
                "sz": sz, "side": side, "ts": str(now_ms), "count": "1", "seqId": self.trade_id}

    def ticker(self, now_ms: int) -> dict[str, str]:
        places, tick, last = self.price_decimals, 10.0**-self.price_decimals, self.last_price
        spot = self.inst_type == "SPOT"
        volume = self.volume if spot else self.contracts(self.volume, last)
        return {
            "instType": self.inst_type, "instId": self.symbol, "last": _fixed(last, places), "lastSz": "1",
            "askPx": _fixed(last + tick, places), "askSz": "12", "bidPx": _fixed(last - tick, places),
            "bidSz": "7", "open24h": _fixed(self.open_price, places), "high24h": _fixed(self.high, places),
            "low24h": _fixed(self.low, places),
            "volCcy24h": _fixed(self.quote_volume if spot else self.volume, 8 if not spot else 2),
            "vol24h": _fixed(volume, 8 if spot else 0), "sodUtc0": _fixed(self.open_price, places),
            "sodUtc8": _fixed(self.open_price, places), "ts": str(now_ms),
        }

    def listing(self) -> dict[str, Any]:
        """The instrument as ``GET /api/v5/public/instruments`` lists it."""
        spot, places = self.inst_type == "SPOT", self.price_decimals
        family = "" if spot else f"{self.base}-{self.quote}"
        lot = _fixed(10.0**-self.qty_decimals, self.qty_decimals) if spot else "1"
        return {
            "instType": self.inst_type, "instId": self.symbol, "uly": family, "instFamily": family,
            "baseCcy": self.base if spot else "", "quoteCcy": self.quote if spot else "",
            "settleCcy": "" if spot else self.base if self.inverse else self.quote,
            "ctVal": "" if spot else f"{self.ct_val:g}", "ctMult": "" if spot else "1",
            "ctValCcy": "" if spot else self.quote if self.inverse else self.base,
            "ctType": "" if spot else "inverse" if self.inverse else "linear", "optType": "", "stk": "",
            "listTime": "1606468572000", "expTime": str(_EXPIRY_MS) if self.inst_type == "FUTURES" else "",
            "lever": "" if spot else "100", "tickSz": _fixed(10.0**-places, places), "lotSz": lot,
            "minSz": lot, "alias": "quarter" if self.inst_type == "FUTURES" else "", "state": "live",
        }


class OkxConnection(SimConnection):
    """A connection to the public endpoint: its ``connId`` and its requests of the last hour."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.conn_id = secrets.token_hex(4)
        self.requests: deque[float] = deque()


class OkxProtocol:
    """OKX's public v5 WebSocket protocol, pure: one path, per-arg replies, limits.

    A channel (and topic) is ``"<channel>:<instId>"``; ``clock`` counts requests per hour.
    """

    def __init__(self, *, instruments: Iterable[str], idle_timeout: float = IDLE_TIMEOUT,
                 requests_per_hour: int = REQUESTS_PER_HOUR,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.liveness = Liveness(idle_timeout=idle_timeout, idle_close=(4004, "No data received in 30s"),
                                 subscribe_timeout=idle_timeout)
        self.default_path = PATH
        self.malformed_frame = _MALFORMED_FRAME
        self.refused: frozenset[str] = frozenset()
        self.swallow_subscribes = False
        #: a fault: the text ping goes unanswered
        self.silent_pongs = False
        self.errors_sent = 0
        self.requests_per_hour = requests_per_hour
        self._instruments = frozenset(instruments)
        self._clock = clock

    def open(self, path: str, query: str) -> Accept[OkxConnection] | Reject:
        del query
        if path != PATH:
            return Reject(404, {"code": "404", "msg": f"Not found: {path}"})
        return Accept(OkxConnection(path))

    def receive(self, conn: OkxConnection, text: str) -> Answer:
        if text == "ping":
            return Answer(frames=() if self.silent_pongs else ("pong",), ping=True)
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("id", ""), str):
            return self._fail(conn, None, "60012", f"Invalid request: {text[:200]}")
        req_id, op, args = request.get("id"), request.get("op"), request.get("args")
        if op not in ("subscribe", "unsubscribe"):
            return self._fail(conn, req_id, "60019", f"Invalid op: {op}")
        if not isinstance(args, list) or not args or not all(isinstance(a, dict) for a in args):
            return self._fail(conn, req_id, "60012", f"Invalid request: {text[:200]}")
        now, recent = self._clock(), conn.requests
        while recent and recent[0] <= now - 3600:
            recent.popleft()
        if len(recent) >= self.requests_per_hour:
            return self._fail(conn, req_id, "60014", "Requests too frequent.")
        recent.append(now)
        if op == "subscribe" and self.swallow_subscribes:
            return Answer()
        frames: list[str] = []
        changed: list[str] = []
        for arg in args:
            channel, inst_id = arg.get("channel"), arg.get("instId")
            topic = f"{channel}:{inst_id}"
            if op == "subscribe" and (channel not in CHANNELS or inst_id not in self._instruments
                                      or inst_id in self.refused):
                frames.append(self._error(conn, req_id, "60018", f"Wrong URL or channel:{channel},instId:"
                                          f"{inst_id} doesn't exist. Please use the correct URL, channel "
                                          "and parameters referring to API document."))
                continue
            if (topic in conn.topics) != (op == "subscribe"):
                changed.append(topic)
                if op == "subscribe":
                    conn.topics[topic] = None
                else:
                    del conn.topics[topic]
            reply = {"event": op, "arg": {"channel": channel, "instId": inst_id}, "connId": conn.conn_id}
            frames.append(orjson.dumps({"id": req_id, **reply} if req_id is not None else reply).decode())
        start, stop = (tuple(changed), ()) if op == "subscribe" else ((), tuple(changed))
        return Answer(frames=tuple(frames), start=start, stop=stop)

    def _error(self, conn: OkxConnection, req_id: str | None, code: str, msg: str) -> str:
        self.errors_sent += 1
        body = {"event": "error", "code": code, "msg": msg, "connId": conn.conn_id}
        return orjson.dumps({"id": req_id, **body} if req_id is not None else body).decode()

    def _fail(self, conn: OkxConnection, req_id: str | None, code: str, msg: str) -> Answer:
        return Answer(frames=(self._error(conn, req_id, code, msg),))


class OkxSimulator(SimServer[OkxConnection]):
    """OKX's public WebSocket and the instruments REST call on localhost, for ``instruments``
    (spot ``BTC-USDT``, swaps ``BTC-USDT-SWAP``, futures ``BTC-USD-261225``; linear when quoted
    in USDT, inverse in USD)."""

    def __init__(self, *, instruments: Iterable[str] = DEFAULT_INSTRUMENTS, speed: float = 1.0,
                 idle_timeout: float = IDLE_TIMEOUT, requests_per_hour: int = REQUESTS_PER_HOUR,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        names = tuple(dict.fromkeys(instruments))
        bad = [n for n in names if len(n.split("-")) not in (2, 3) or n != n.upper()]
        if bad:
            raise ValueError(f"instruments are OKX ids (BTC-USDT, BTC-USDT-SWAP, BTC-USD-261225): {bad}")
        self.speed = speed
        self.instruments = {name: Instrument(name, index) for index, name in enumerate(names)}
        protocol = OkxProtocol(instruments=names, idle_timeout=idle_timeout,
                               requests_per_hour=requests_per_hour)
        super().__init__(protocol, ssl_context=ssl_context)
        self._protocol = protocol

    @property
    def errors_sent(self) -> int:
        return self._protocol.errors_sent

    def set_pong_silent(self, silent: bool) -> None:
        """Stop (or resume) answering the text ping, while data and replies go on."""
        self._protocol.silent_pongs = silent

    def send_server_shutdown(self, close_after: float = 60.0) -> None:
        """[ws-notification] notice 64008 on every connection, then close them ``close_after``
        seconds later (60 s ahead, the docs say). New connections are accepted meanwhile."""
        for conn in self.connections:
            notice = {"event": "notice", "code": "64008", "msg": "The connection will soon be closed for "
                      "a service upgrade. Please reconnect.", "connId": conn.conn_id}
            conn.offer(orjson.dumps(notice).decode())
            self.nursery.start_soon(self._close_later, conn, close_after)

    async def _close_later(self, conn: OkxConnection, delay: float) -> None:
        await trio.sleep(delay)
        conn.close(1001, "Service upgrade")

    def _refusal(self, status: int) -> Reject:
        return Reject(status, {"code": "50011" if status == 429 else "50001", "msg": status_phrase(status)})

    # ---- market data ---------------------------------------------------------------------

    def _run_feeds(self, nursery: trio.Nursery) -> None:
        for instrument in self.instruments.values():
            nursery.start_soon(self._feed, instrument)

    async def _feed(self, inst: Instrument) -> None:
        gap = 1 / (TRADES_PER_SECOND * self.speed)
        while True:
            if not inst.demand.wanted.is_set():
                await inst.demand.wanted.wait()
            await trio.sleep(gap * inst.rng.uniform(0.5, 1.5))
            now = _now_ms()
            trade = inst.trade(now)
            self._push("trades", inst, trade)
            self._push("tickers", inst, inst.ticker(now))

    def _push(self, channel: str, inst: Instrument, row: dict[str, Any]) -> None:
        key = f"{channel}:{inst.symbol}"
        if self.has_subscribers(key):
            self.publish(key, _push(channel, inst.symbol, row))

    def _on_start(self, conn: OkxConnection, channel: str) -> None:
        name, _, inst_id = channel.partition(":")
        inst = self.instruments[inst_id]
        inst.demand.add(1)
        if name == "tickers":
            self.deliver(conn, _push(name, inst_id, inst.ticker(_now_ms())))

    def _on_stop(self, conn: OkxConnection, channel: str) -> None:
        self.instruments[channel.partition(":")[2]].demand.add(-1)

    # ---- REST ----------------------------------------------------------------------------

    def _rest_outage(self) -> HttpResponse:
        return HttpResponse(503, {"code": "50001", "msg": "Service temporarily unavailable", "data": []})

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        if request.method != "GET" or request.path != INSTRUMENTS_PATH:
            return HttpResponse(404, {"code": "404", "msg": f"Not found: {request.path}", "data": []})
        inst_type = request.query.get("instType", [""])[-1]
        if not inst_type:
            return HttpResponse(400, {"code": "50014", "msg": "Parameter instType can not be empty.", "data": []})
        if inst_type not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
            return HttpResponse(400, {"code": "51000", "msg": "Parameter instType error", "data": []})
        wanted = request.query.get("instId", [None])[-1]
        data = [i.listing() for i in self.instruments.values()
                if i.inst_type == inst_type and wanted in (None, i.symbol)]
        return HttpResponse(200, {"code": "0", "msg": "", "data": data})


def _push(channel: str, inst_id: str, row: dict[str, Any]) -> str:
    return orjson.dumps({"arg": {"channel": channel, "instId": inst_id}, "data": [row]}).decode()


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instruments", default=",".join(DEFAULT_INSTRUMENTS),
                        help="comma-separated OKX instrument ids (spot, -SWAP, -YYMMDD futures)")


SPARE: Final = "ETH-USDT"

#: what the tools need to run this simulator (found by :func:`feedd.sim.registry`)
SIMULATOR: Final = SimSpec(
    name="okx",
    help="OKX v5 public stream (spot, swaps, futures)",
    groups=(("okx",),),
    make=lambda venue_ids, speed: OkxSimulator(speed=speed),
    symbols={"okx": ("BTC-USDT", "BTC-USDT-SWAP", "BTC-USD-261225")},
    spare=SPARE,
    speed=1.0,
    add_arguments=_add_arguments,
    from_args=lambda args: OkxSimulator(instruments=symbol_list(args.instruments), speed=args.speed),
)

__all__ = ["SIMULATOR", "OkxConnection", "OkxProtocol", "OkxSimulator"]
