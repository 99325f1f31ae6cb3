"""A local OKX v5: the public WebSocket (``/ws/v5/public``) and ``GET /api/v5/public/instruments``.

As protocols/README.md §8 and OKX's v5 docs say: ``{"id", "op", "args": [{"channel", "instId"}]}``
acked per arg (``{"id", "event", "arg", "connId"}``) or refused by ``{"id", "event": "error",
"code", "msg", "connId"}`` without an ``arg``: 60012 (no request), 60019 (another op), 60018 (no such
channel or instrument, named in ``msg`` as clients record [3p]; the other args are acked
[unverified]), 60014 past 480 requests an hour on a connection. ``ping`` gets ``pong``; 30 s without
a subscription, or without a ping or data, closes with 4004; notice 64008 announces an upgrade.
Market data is generated (:class:`~feedd.sim.market.RandomWalk`: no recording with a licence to ship
has today's shapes), ticker pushed with each trade; derivatives in contracts of ``ctVal``.
"""

from __future__ import annotations

import argparse
import math
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Final

import orjson
import trio

from feedd.sim.market import Market, RandomWalk, generate, price_factor
from feedd.sim.protocol import Accept, Answer, Liveness, Reject, SimConnection, status_phrase
from feedd.sim.rest import HttpRequest, HttpResponse
from feedd.sim.server import SimServer
from feedd.sim.spec import SimSpec, symbol_list

PATH: Final = "/ws/v5/public"
INSTRUMENTS_PATH: Final = "/api/v5/public/instruments"
TRADES_PATH: Final = "/api/v5/market/trades"
#: trades an instrument keeps for the REST's ``market/trades`` answers
HISTORY: Final = 5_000
DEFAULT_INSTRUMENTS: Final = ("BTC-USDT", "ETH-USDT", "BTC-USDT-SWAP", "BTC-USD-SWAP", "BTC-USD-261225")
CHANNELS: Final = ("trades", "tickers", "bbo-tbt")
#: [ws-overview] no subscription, or no data pushed, for 30 s: the connection breaks
IDLE_TIMEOUT: Final = 30.0
#: [ws-overview] "480 times per hour" per connection (subscribe, unsubscribe, login)
REQUESTS_PER_HOUR: Final = 480
TRADES_PER_SECOND: Final = 2.0
BTC_LEVEL: Final = 97_000.0
_EXPIRY_MS: Final = 1_798_185_600_000  # 2026-12-25 08:00 UTC, a Friday (futures settle at 08:00)
_NOTICE: Final = {"event": "notice", "code": "64008",
                  "msg": "The connection will soon be closed for a service upgrade. Please reconnect."}
_NO_SUCH: Final = ("Wrong URL or channel:{},instId:{} doesn't exist. Please use the correct URL, channel "
                   "and parameters referring to API document.")
_MALFORMED_FRAME: Final = '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-US'


def _fixed(value: float, places: int) -> str:
    return f"{value:.{places}f}"


class Instrument(Market):
    """One instrument: its contract, its generated trades and the payloads it makes."""

    def __init__(self, inst_id: str, index: int) -> None:
        parts = inst_id.split("-")
        self.base, self.quote = parts[0], parts[1]
        self.inst_type = "SPOT" if len(parts) == 2 else "SWAP" if parts[2] == "SWAP" else "FUTURES"
        super().__init__(inst_id, index, BTC_LEVEL * price_factor(self.base + "USDT"))
        self.inverse = self.inst_type != "SPOT" and self.quote == "USD"
        #: base units per contract (linear: about 500 USD, as OKX's 0.01 BTC), quote units per
        #: contract (inverse: OKX's 100 USD for BTC, 10 USD for the others); unused on spot
        self.ct_val = 10.0 ** round(math.log10(500 / self.last_price))
        if self.inverse:
            self.ct_val = 100.0 if self.base == "BTC" else 10.0
        self.walk = RandomWalk(self)
        #: every trade made, oldest first, streamed or not: what ``market/trades`` answers from
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)

    def contracts(self, base: float, price: float) -> float:
        return base * price / self.ct_val if self.inverse else base / self.ct_val

    def trade(self, now_ms: int) -> dict[str, Any]:
        """The next trade: spot in base currency, derivatives in whole contracts."""
        trade_id, price, side = self.walk.step()
        if self.inst_type == "SPOT":
            size = round(self.walk.rng.uniform(0.2, 3.0) * 10.0 ** (2 - self.qty_decimals), self.qty_decimals)
            sz, base = _fixed(size, self.qty_decimals), size
        else:
            count = self.walk.rng.randint(1, 40)
            sz, base = str(count), count * self.ct_val / price if self.inverse else count * self.ct_val
        self.on_trade(price, base)
        row = {"instId": self.symbol, "tradeId": str(trade_id), "px": _fixed(price, self.price_decimals),
               "sz": sz, "side": side, "ts": str(now_ms), "count": "1", "seqId": trade_id}
        self.history.append(row)
        return row

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

    def bbo(self, now_ms: int) -> dict[str, Any]:
        """A ``bbo-tbt`` row: the ticker's best levels as ``[px, sz, "0", orders]`` (sizes in
        contracts for derivatives, as on the tickers)."""
        places, tick, last = self.price_decimals, 10.0**-self.price_decimals, self.last_price
        return {"asks": [[_fixed(last + tick, places), "12", "0", "3"]],
                "bids": [[_fixed(last - tick, places), "7", "0", "2"]], "ts": str(now_ms), "seqId": now_ms}

    def listing(self) -> dict[str, Any]:
        """The instrument as ``GET /api/v5/public/instruments`` lists it (other types' fields "")."""
        spot, places, step = self.inst_type == "SPOT", self.price_decimals, self.qty_decimals
        contract = {"instFamily": f"{self.base}-{self.quote}", "ctVal": f"{self.ct_val:g}", "ctMult": "1",
                    "settleCcy": self.base if self.inverse else self.quote,
                    "ctValCcy": self.quote if self.inverse else self.base,
                    "ctType": "inverse" if self.inverse else "linear"}
        lot, expiry = _fixed(10.0**-step, step) if spot else "1", self.inst_type == "FUTURES"
        return {"instType": self.inst_type, "instId": self.symbol, "baseCcy": self.base if spot else "",
                "quoteCcy": self.quote if spot else "", **(dict.fromkeys(contract, "") if spot else contract),
                "listTime": "1606468572000", "expTime": str(_EXPIRY_MS) if expiry else "",
                "tickSz": _fixed(10.0**-places, places), "lotSz": lot, "minSz": lot, "state": "live"}


class OkxConnection(SimConnection):
    """A connection to the public endpoint, with its ``connId``."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.conn_id = secrets.token_hex(4)


class OkxProtocol:
    """OKX's public v5 WebSocket protocol, pure: one path, per-arg replies, limits. A channel
    (and topic) is ``"<channel>:<instId>"``; ``clock`` counts requests per hour."""

    def __init__(self, *, instruments: Iterable[str], idle_timeout: float = IDLE_TIMEOUT,
                 requests_per_hour: int = REQUESTS_PER_HOUR,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.liveness = Liveness(idle_timeout=idle_timeout, idle_close=(4004, "No data received in 30s"),
                                 subscribe_timeout=idle_timeout)
        self.default_path = PATH
        self.malformed_frame = _MALFORMED_FRAME
        self.refused: frozenset[str] = frozenset()
        self.swallow_subscribes = False
        self.silent_pongs = False  # a fault: the text ping goes unanswered
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
        if not conn.within_budget("requests", self._clock(), self.requests_per_hour, 3600.0):
            return self._fail(conn, req_id, "60014", "Requests too frequent.")
        if op == "subscribe" and self.swallow_subscribes:
            return Answer()
        frames: list[str] = []
        changed: list[str] = []
        for arg in args:
            channel, inst_id = arg.get("channel"), arg.get("instId")
            topic = f"{channel}:{inst_id}"
            if op == "subscribe" and (channel not in CHANNELS or inst_id not in self._instruments
                                      or inst_id in self.refused):
                frames.append(self._error(conn, req_id, "60018", _NO_SUCH.format(channel, inst_id)))
                continue
            if op == "subscribe" and topic not in conn.topics:
                conn.topics[topic] = None
                changed.append(topic)
            elif op == "unsubscribe" and topic in conn.topics:
                del conn.topics[topic]
                changed.append(topic)
            frames.append(_reply(req_id, {"event": op, "arg": {"channel": channel, "instId": inst_id},
                                          "connId": conn.conn_id}))
        start, stop = (tuple(changed), ()) if op == "subscribe" else ((), tuple(changed))
        return Answer(frames=tuple(frames), start=start, stop=stop)

    def _error(self, conn: OkxConnection, req_id: str | None, code: str, msg: str) -> str:
        self.errors_sent += 1
        return _reply(req_id, {"event": "error", "code": code, "msg": msg, "connId": conn.conn_id})

    def _fail(self, conn: OkxConnection, req_id: str | None, code: str, msg: str) -> Answer:
        return Answer(frames=(self._error(conn, req_id, code, msg),))


class OkxSimulator(SimServer[OkxConnection]):
    """OKX's public WebSocket and instruments REST call on localhost, for ``instruments`` (spot
    ``BTC-USDT``, swaps ``BTC-USDT-SWAP``, futures ``BTC-USD-261225``; inverse when in USD)."""

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
            conn.offer(orjson.dumps({**_NOTICE, "connId": conn.conn_id}).decode())
            self.close_later(conn, close_after, 1001, "Service upgrade")

    def _refusal(self, status: int) -> Reject:
        return Reject(status, {"code": "50011" if status == 429 else "50001", "msg": status_phrase(status)})

    def _run_feeds(self, nursery: trio.Nursery) -> None:
        for inst in self.instruments.values():
            nursery.start_soon(partial(generate, partial(self._on_trade, inst), demand=inst.demand,
                                       rate=TRADES_PER_SECOND * self.speed, rng=inst.walk.rng))

    def _on_trade(self, inst: Instrument) -> None:
        now = time.time_ns() // 1_000_000
        rows = (("trades", inst.trade(now)), ("tickers", inst.ticker(now)), ("bbo-tbt", inst.bbo(now)))
        for channel, row in rows:
            if self.has_subscribers(key := f"{channel}:{inst.symbol}"):
                self.publish(key, _push(channel, inst.symbol, row))

    def _on_start(self, conn: OkxConnection, channel: str) -> None:
        name, _, inst_id = channel.partition(":")
        inst = self.instruments[inst_id]
        inst.demand.add(1)
        if name == "tickers":
            self.deliver(conn, _push(name, inst_id, inst.ticker(time.time_ns() // 1_000_000)))
        elif name == "bbo-tbt":  # [ws-public] pushed once on subscribe, then on every change
            self.deliver(conn, _push(name, inst_id, inst.bbo(time.time_ns() // 1_000_000)))

    def _on_stop(self, conn: OkxConnection, channel: str) -> None:
        self.instruments[channel.partition(":")[2]].demand.add(-1)

    def _rest_outage(self) -> HttpResponse:
        return _rest(503, "50001", "Service temporarily unavailable")

    def keep_trading(self) -> None:
        """Every instrument trades from now on whether anybody subscribes or not, so trades are
        made (and kept for ``market/trades``) while no connection is up."""
        for inst in self.instruments.values():
            inst.demand.add(1)

    def _recent_trades(self, request: HttpRequest) -> HttpResponse:
        """``market/trades``: an instrument's latest trades, newest first, ``limit`` at most 500
        (default 100)."""
        inst = self.instruments.get(request.query.get("instId", [""])[-1])
        if inst is None:
            return _rest(400, "51001", "Instrument ID does not exist")
        try:
            limit = int(request.query.get("limit", ["100"])[-1])
        except ValueError:
            return _rest(400, "51000", "Parameter limit error")
        if not 1 <= limit <= 500:
            return _rest(400, "51000", "Parameter limit error")
        rows = [{"instId": r["instId"], "side": r["side"], "sz": r["sz"], "px": r["px"], "source": "0",
                 "tradeId": r["tradeId"], "ts": r["ts"]} for r in reversed(list(inst.history)[-limit:])]
        return HttpResponse(200, {"code": "0", "msg": "", "data": rows})

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        if request.method == "GET" and request.path == TRADES_PATH:
            return self._recent_trades(request)
        inst_type = request.query.get("instType", [""])[-1]
        if request.method != "GET" or request.path != INSTRUMENTS_PATH:
            return _rest(404, "404", f"Not found: {request.path}")
        if inst_type not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
            return _rest(400, "50014", "Parameter instType can not be empty.") if not inst_type else \
                _rest(400, "51000", "Parameter instType error")
        wanted = request.query.get("instId", [None])[-1]
        data = [i.listing() for i in self.instruments.values()
                if i.inst_type == inst_type and wanted in (None, i.symbol)]
        return HttpResponse(200, {"code": "0", "msg": "", "data": data})


def _reply(req_id: str | None, body: dict[str, Any]) -> str:
    """A reply, with the request's ``id`` first when it had one."""
    return orjson.dumps(body if req_id is None else {"id": req_id, **body}).decode()


def _rest(status: int, code: str, msg: str) -> HttpResponse:
    return HttpResponse(status, {"code": code, "msg": msg, "data": []})


def _push(channel: str, inst_id: str, row: dict[str, Any]) -> str:
    return orjson.dumps({"arg": {"channel": channel, "instId": inst_id}, "data": [row]}).decode()


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instruments", default=",".join(DEFAULT_INSTRUMENTS),
                        help="comma-separated OKX instrument ids (spot, -SWAP, -YYMMDD futures)")


#: what the tools need to run this simulator (found by :func:`feedd.sim.registry`)
SIMULATOR: Final = SimSpec(
    name="okx",
    help="OKX v5 public stream (spot, swaps, futures)",
    groups=(("okx",),),
    make=lambda venue_ids, speed: OkxSimulator(speed=speed),
    symbols={"okx": ("BTC-USDT", "BTC-USDT-SWAP", "BTC-USD-261225")},
    spare="ETH-USDT",
    add_arguments=_add_arguments,
    from_args=lambda args: OkxSimulator(instruments=symbol_list(args.instruments), speed=args.speed),
)

__all__ = ["SIMULATOR", "OkxConnection", "OkxProtocol", "OkxSimulator"]
