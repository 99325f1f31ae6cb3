"""A local Binance exchange: spot or USD-M futures market streams, replayed from recordings.

Speaks the real wire protocol (protocols/README.md §2): combined and raw stream paths, the
``SUBSCRIBE`` family of control requests with Binance's ack and error replies, server-sent ping
frames with a pong deadline, the per-connection message rate limit, and the futures route split.
Market data is the bundled recording of BTCUSDT trades, aggregate trades and book tickers
(:mod:`feedd.sim.replay`), replayed at the recorded pace with fresh ids and timestamps, and with
prices scaled per symbol. Faults are plain methods a test calls while the server runs.

Pacing uses trio's clock (so tests can run it under ``MockClock``); the ``E``/``T`` timestamps in
payloads use the wall clock, because a client validates them against the real time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qsl

import attrs
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from feedd.sim.replay import Recording, load_recording
from feedd.sim.rest import HttpRequest, HttpResponse, JsonHttpServer

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS: Final = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")
#: listed in exchangeInfo with status "BREAK" (not trading), so clients can test rejecting it
BREAK_SYMBOL: Final = "BCHSVUSDT"
#: §2.5: "At most 1024 streams per connection."
MAX_STREAMS_PER_CONNECTION: Final = 1024

# Prices relative to BTCUSDT, so every symbol replays the BTC tape at a plausible level.
_PRICE_FACTORS: Final = {"BTCUSDT": 1.0, "ETHUSDT": 0.042, "BNBUSDT": 0.0086, "SOLUSDT": 0.0024}
_QUOTE_ASSETS: Final = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")

# §2.6: since the 2026-03-06 announcement, /public carries the high-frequency book streams and
# /market the regular ones; a stream asked for on the other route is acked and never pushed.
_FUTURES_KIND_ROUTE: Final = {
    "bookTicker": "public",
    "trade": "market",
    "aggTrade": "market",
    "ticker": "market",
}
_SPOT_KINDS: Final = frozenset(("trade", "aggTrade", "ticker", "bookTicker"))
_TRADE_KINDS: Final = frozenset(("trade", "aggTrade"))

# Syntactically a stream name: "<symbol>@<kind>[@<option>]" or "!<name>[@arr]". Anything else is
# refused with "invalid stream" (observed reply, e.g. ccxt/ccxt#19833); a well-formed name for a
# symbol that does not exist is acked and silent (§2.2).
_STREAM_NAME = re.compile(r"^!?[A-Za-z0-9_]+@[A-Za-z0-9_@]+$|^![A-Za-z0-9_]+$")

_METHODS: Final = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_ID_STRING = re.compile(r"^[A-Za-z0-9-]{1,36}$")

_OUTBOX_SIZE: Final = 8192
_FLOOD_FRAMES_PER_BLOB: Final = 512
_CLOSE_TIMEOUT: Final = 5.0

_MALFORMED_FRAME: Final = '{"stream":"btcusdt@trade","data":{"e":"trade","E":17231612'


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error(code: int, msg: str, request_id: Any = None, *, with_id: bool = False) -> dict[str, Any]:
    reply: dict[str, Any] = {"code": code, "msg": msg}
    if with_id:
        reply["id"] = request_id
    return reply


def _position(text: str, index: int) -> tuple[int, int]:
    """serde_json's 1-based (line, column) of the character at ``index``."""
    index = max(0, min(index, len(text) - 1))
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _valid_id(value: Any) -> bool:
    # §2.2: a signed 64-bit integer, an alphanumeric string of up to 36 characters, or null.
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and _ID_STRING.match(value) is not None


@attrs.frozen(slots=True)
class ControlRequest:
    """A well-formed control request (``params`` as sent, still unchecked)."""

    method: str
    params: list[Any]
    id: Any


def parse_control(text: str) -> ControlRequest | dict[str, Any]:
    """One client text frame as a request, or the error reply Binance gives for it (§2.2 table)."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        line, column = _position(text, exc.pos)
        return _error(3, f"Invalid JSON: expected value at line {line} column {column}")
    if not isinstance(obj, dict):
        line, column = _position(text, len(text.rstrip()) - 1)
        return _error(2, f"Invalid request: invalid type: expected struct at line {line} column {column}")
    if "method" not in obj:
        line, column = _position(text, len(text.rstrip()) - 1)
        return _error(2, f"Invalid request: missing field `method` at line {line} column {column}")
    method = obj["method"]
    if method not in _METHODS:
        shown = orjson.dumps(method).decode()
        at = text.find(shown)
        line, column = _position(text, at + len(shown) - 1 if at >= 0 else len(text) - 1)
        variant = f"`{method}`" if isinstance(method, str) else shown
        return _error(
            2,
            f"Invalid request: unknown variant {variant}, expected one of "
            f"{', '.join(_METHODS)} at line {line} column {column}",
        )
    if "id" not in obj or not _valid_id(obj["id"]):
        return _error(2, "Invalid request: request ID must be an unsigned integer")
    params = obj.get("params", [])
    if not isinstance(params, list):
        return _error(2, "Invalid request: property name must be a string")
    return ControlRequest(method=method, params=params, id=obj["id"])


def _check_streams(new: list[str], held: int) -> str | None:
    """Why Binance refuses subscribing ``new`` on a connection holding ``held`` streams, if it does."""
    if any(_STREAM_NAME.match(name) is None for name in new):
        return "Invalid request: invalid stream"
    if held + len(set(new)) > MAX_STREAMS_PER_CONNECTION:
        # §2.5 caps streams per connection; the exact reply is undocumented.
        return "Invalid request: too many parameters"
    return None


def _quote_asset(symbol: str) -> str:
    for quote in _QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return quote
    return symbol[-4:]


def _price_factor(symbol: str) -> float:
    known = _PRICE_FACTORS.get(symbol)
    if known is not None:
        return known
    # An unknown symbol still gets a stable, plausible level: a digit times a power of ten.
    crc = zlib.crc32(symbol.encode())
    return (1 + crc % 9) * 10.0 ** -(1 + (crc >> 4) % 5)


def _decimals(price: float) -> tuple[int, int]:
    """(price, quantity) decimals for a price level, like Binance's filters: a cent tick down to
    $10, finer below; coarser size steps for cheaper coins (BTC 0.00001, ETH 0.0001, SOL 0.001)."""
    magnitude = math.floor(math.log10(price))
    return min(8, max(2, 4 - magnitude)), min(8, max(0, magnitude + 1))


class _Market:
    """One symbol's evolving state: id counters, last trade, best quote and 24 h statistics."""

    def __init__(self, symbol: str, index: int, futures: bool, trades: Recording) -> None:
        self.symbol = symbol
        self.lower = symbol.lower()
        self.index = index
        self.futures = futures
        self.factor = _price_factor(symbol)
        first = trades.payloads[0]
        self.price_decimals, self.qty_decimals = _decimals(float(first["p"]) * self.factor)
        self.next_trade_id = int(first["t"])
        self.next_agg_id = 665_076_760
        # The aggTrade tape is a different recording from the trade tape, so its first/last trade
        # ids count separately; this keeps @trade ids consecutive (one trade, one id).
        self.next_agg_fill_id = self.next_trade_id
        self.book_update_id = 50_093_239_212
        self.last_price = float(first["p"]) * self.factor
        self.last_qty = self.qty(float(first["q"]))
        crc = zlib.crc32(symbol.encode())
        drift = ((crc % 601) - 300) / 10_000  # the 24 h change, within +-3 %
        self.open_price = self.last_price / (1 + drift)
        self.high = max(self.open_price, self.last_price) * 1.012
        self.low = min(self.open_price, self.last_price) * 0.988
        self.volume = 1.5e9 / self.last_price  # a 24 h quote volume of ~1.5 bn USDT
        self.quote_volume = self.volume * (self.open_price + self.last_price) / 2
        self.first_trade_id = self.next_trade_id - 1_200_000
        self.bid = self.bid_qty = self.ask = self.ask_qty = ""
        self.demand = 0
        self.wanted = trio.Event()
        self.flood_rows: dict[str, list[tuple[str, str, str]]] = {}

    def price(self, value: float) -> str:
        # Spot prints 8 decimals whatever the tick ("61837.63000000"); futures prints the tick's.
        rounded = round(value, self.price_decimals)
        return f"{rounded:.8f}" if not self.futures else f"{rounded:.{self.price_decimals}f}"

    def qty(self, value: float) -> str:
        step = 10.0**-self.qty_decimals
        rounded = max(step, round(value / self.factor, self.qty_decimals))
        return f"{rounded:.8f}" if not self.futures else f"{rounded:.{self.qty_decimals}f}"

    def add_demand(self, delta: int) -> None:
        self.demand += delta
        if self.demand > 0:
            self.wanted.set()
        elif self.wanted.is_set():
            self.wanted = trio.Event()

    def on_trade(self, price: float, qty: str) -> None:
        self.last_price = price
        self.last_qty = qty
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        size = float(qty)
        self.volume += size
        self.quote_volume += size * price

    def ticker(self, now: int) -> dict[str, Any]:
        """A ``24hrTicker`` with the documented field set (samples/binance/ticker.json, §2.3)."""
        change = self.last_price - self.open_price
        last_id = self.next_trade_id - 1
        payload: dict[str, Any] = {
            "e": "24hrTicker",
            "E": now,
            "s": self.symbol,
            "p": self.price(change),
            "P": f"{change / self.open_price * 100:.3f}",
            "w": self.price(self.quote_volume / self.volume),
            "x": self.price(self.open_price * 0.9999),
            "c": self.price(self.last_price),
            "Q": self.last_qty,
            "b": self.bid,
            "B": self.bid_qty,
            "a": self.ask,
            "A": self.ask_qty,
            "o": self.price(self.open_price),
            "h": self.price(self.high),
            "l": self.price(self.low),
            "v": f"{self.volume:.8f}",
            "q": f"{self.quote_volume:.8f}",
            "O": now - 86_400_000,
            "C": now,
            "F": self.first_trade_id,
            "L": last_id,
            "n": last_id - self.first_trade_id + 1,
        }
        if self.futures:
            # §2.6: the futures ticker has no best bid/ask (use @bookTicker), and no "x"
            # [unverified, 3p type definitions].
            for key in ("x", "b", "B", "a", "A"):
                del payload[key]
        return payload


class SimConnection:
    """One live client connection, as tests observe it (path, route and subscriptions)."""

    def __init__(self, ws: WebSocketConnection, path: str, route: str, combined: bool) -> None:
        self.path = path
        #: "" on spot; "market" or "public" on futures
        self.route = route
        #: events wrapped as {"stream", "data"} (the /stream paths, or SET_PROPERTY combined)
        self.combined = combined
        self.frames_sent = 0
        self.frames_dropped = 0
        self._ws = ws
        self._streams: dict[str, None] = {}  # insertion-ordered set, for LIST_SUBSCRIPTIONS
        self._flood: list[tuple[str, str, _Market]] = []
        self._flood_changed = trio.Event()
        self._recent: deque[float] = deque()
        self._scope = trio.CancelScope()
        self._close_intent: tuple[int | None, str] | None = None
        self._outbox_send, self._outbox = trio.open_memory_channel[str](_OUTBOX_SIZE)

    def __repr__(self) -> str:
        return f"<SimConnection {self.path} streams={len(self._streams)}>"

    @property
    def streams(self) -> frozenset[str]:
        """Every stream the connection subscribed (acked), deliverable or not."""
        return frozenset(self._streams)

    @property
    def subscriptions(self) -> list[str]:
        """The same, in subscription order (what LIST_SUBSCRIPTIONS answers)."""
        return list(self._streams)

    def _request_close(self, code: int | None, reason: str) -> None:
        """End the connection: with a close frame of ``code``, or abruptly when it is None."""
        if self._close_intent is None:
            self._close_intent = (code, reason)
        self._scope.cancel()

    def _offer(self, text: str) -> bool:
        """Queue a frame without waiting; a client too slow to drain the queue loses frames."""
        try:
            self._outbox_send.send_nowait(text)
        except trio.WouldBlock:
            self.frames_dropped += 1
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _over_rate(self, now: float, limit: int) -> bool:
        recent = self._recent
        recent.append(now)
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        return len(recent) > limit

    def _flood_updated(self) -> None:
        self._flood_changed.set()
        self._flood_changed = trio.Event()


def _frame_header(length: int) -> bytes:
    """RFC 6455 header of one final, unmasked (server-to-client) text frame."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


class BinanceSimulator:
    """Binance spot (or USD-M futures with ``futures=True``) market streams and REST on localhost.

    Run it with ``await nursery.start(sim.serve)``; then point a client at :attr:`ws_url` and
    :attr:`rest_url`. Only symbols in ``symbols`` carry data; any other well-formed stream is
    acked and stays silent, as the real exchange does (§2.2).
    """

    def __init__(
        self,
        *,
        futures: bool = False,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        ping_interval: float | None = None,
        pong_timeout: float | None = None,
        max_incoming_per_second: int | None = None,
        speed: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
        flood: bool = False,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.futures = futures
        # §2.4 (spot): a ping frame every 20 s, disconnect after 1 min without a pong.
        # §2.6 (futures): every 3 min, disconnect after 10 min; 10 messages/s instead of 5 (§2.5).
        self.ping_interval = ping_interval if ping_interval is not None else (180.0 if futures else 20.0)
        self.pong_timeout = pong_timeout if pong_timeout is not None else (600.0 if futures else 60.0)
        self.max_incoming_per_second = (
            max_incoming_per_second if max_incoming_per_second is not None else (10 if futures else 5)
        )
        self.speed = speed
        self.flood = flood
        self.break_symbol = BREAK_SYMBOL
        self._ssl_context = ssl_context

        self._trades = load_recording("binance", "trade")
        self._agg_trades = load_recording("binance", "aggTrade")
        self._book_tickers = load_recording("binance", "bookTicker")
        # The aggTrade tape is from another day (2021); rescale it onto the trade tape's level so
        # a symbol's @trade, @aggTrade and @ticker prices agree.
        self._agg_scale = float(self._trades.payloads[0]["p"]) / float(self._agg_trades.payloads[0]["p"])

        wanted = [s.upper() for s in symbols]
        self.symbols: tuple[str, ...] = tuple(dict.fromkeys(wanted))
        self._markets = {s.lower(): _Market(s, i, futures, self._trades) for i, s in enumerate(self.symbols)}
        if futures:
            self._endpoints = {
                "/market/stream": ("market", True),
                "/market/ws": ("market", False),
                "/public/stream": ("public", True),
                "/public/ws": ("public", False),
                # §2.6: a connection without a routed path gets only /public streams.
                "/stream": ("public", True),
                "/ws": ("public", False),
            }
        else:
            self._endpoints = {"/stream": ("", True), "/ws": ("", False)}

        self._live: list[SimConnection] = []
        self._subscribers: dict[str, set[SimConnection]] = {}
        self._changed = trio.Event()
        self._silent = False
        self._unsilenced = trio.Event()
        self._unsilenced.set()
        self._refuse = 0
        self._rest_failing = False
        self._nursery: trio.Nursery | None = None
        self._host = ""
        self._ws_port = 0
        self._rest_port = 0
        self._rest = JsonHttpServer(self._rest_answer)

        #: handshakes seen, including refused and 404 ones
        self.connection_attempts = 0
        self.connections_accepted = 0
        self.connections_refused = 0
        #: text messages received from clients (valid or not)
        self.requests_received = 0
        self.rate_limit_closes = 0
        self.pong_timeouts = 0
        #: data frames a slow client's full queue made us discard
        self.frames_dropped = 0
        self.flood_frames_sent = 0
        self.rest_requests = 0

    # ---- addresses -----------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        """The combined-stream endpoint (futures: the /market route)."""
        path = "/market/stream" if self.futures else "/stream"
        scheme = "wss" if self._ssl_context is not None else "ws"
        return f"{scheme}://{self._authority(self._ws_port)}{path}"

    @property
    def rest_url(self) -> str:
        return f"http://{self._authority(self._rest_port)}"

    def url(self, path: str) -> str:
        """Any path on the WebSocket port, e.g. ``sim.url("/public/stream")``."""
        scheme = "wss" if self._ssl_context is not None else "ws"
        return f"{scheme}://{self._authority(self._ws_port)}{path}"

    def _authority(self, port: int) -> str:
        if not port:
            raise RuntimeError("the simulator is not serving yet (await nursery.start(sim.serve))")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{port}"

    # ---- observation ---------------------------------------------------------------------

    @property
    def connections(self) -> list[SimConnection]:
        """The live connections, oldest first."""
        return list(self._live)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked on every connection, subscription or
        counter change, so tests need no sleeps."""
        while not predicate():
            await self._changed.wait()

    async def wait_subscribed(self, streams: str | Iterable[str]) -> SimConnection:
        """The first live connection that holds every one of ``streams`` (waits for it)."""
        names = {streams} if isinstance(streams, str) else set(streams)
        found: list[SimConnection] = []

        def holder() -> bool:
            found[:] = [c for c in self._live if names.issubset(c._streams)]
            return bool(found)

        await self.wait_until(holder)
        return found[0]

    async def wait_connections(self, count: int = 1) -> list[SimConnection]:
        """The live connections, once there are at least ``count``."""
        await self.wait_until(lambda: len(self._live) >= count)
        return self.connections

    # ---- faults --------------------------------------------------------------------------

    def drop_connections(self, *, code: int | None = None, reason: str = "dropped") -> None:
        """End every live connection: abruptly (TCP close, like a network drop) by default, or
        with a close frame of ``code``."""
        for conn in list(self._live):
            conn._request_close(code, reason)

    def set_silent(self, silent: bool) -> None:
        """Stall: keep connections open and read requests (they take effect), but send nothing
        back: no data, no replies, no pings, as a hung server would."""
        self._silent = silent
        if silent:
            if self._unsilenced.is_set():
                self._unsilenced = trio.Event()
        else:
            self._unsilenced.set()

    def refuse_connections(self, count: int) -> None:
        """Reject the next ``count`` handshakes with HTTP 503; -1 refuses until reset with 0."""
        if count < -1:
            raise ValueError("count must be -1 (until reset), 0 (accept again) or positive")
        self._refuse = count

    def send_malformed(self) -> None:
        """Send one truncated JSON text frame on every live connection."""
        for conn in self._live:
            conn._offer(_MALFORMED_FRAME)

    def send_server_shutdown(self, close_after: float = 1.0) -> None:
        """§2.3: announce ``serverShutdown`` on every connection, then close them (code 1001)
        ``close_after`` seconds later. New connections are accepted meanwhile, as a client
        reconnecting make-before-break would reach another server."""
        payload = {"e": "serverShutdown", "E": _now_ms()}
        raw = orjson.dumps(payload).decode()
        combined = orjson.dumps({"stream": "!serverShutdown", "data": payload}).decode()
        nursery = self._require_nursery()
        for conn in self._live:
            conn._offer(combined if conn.combined else raw)
            nursery.start_soon(self._close_later, conn, close_after)

    def rest_fail(self, failing: bool) -> None:
        """While True, every REST request is answered 503 (an outage of the REST API)."""
        self._rest_failing = failing

    async def _close_later(self, conn: SimConnection, delay: float) -> None:
        await trio.sleep(delay)
        conn._request_close(1001, "Server shutdown")

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("the simulator is not serving")
        return self._nursery

    # ---- serving -------------------------------------------------------------------------

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the WebSocket endpoint on ``host:port`` and REST on a port of its own, until
        cancelled."""
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(
                    serve_websocket,
                    self._handle,
                    host,
                    port,
                    self._ssl_context,
                    disconnect_timeout=_CLOSE_TIMEOUT,
                )
            )
            self._rest_port = await nursery.start(partial(self._rest.serve, host=host, port=0))
            self._host = host
            self._ws_port = server.port
            self._nursery = nursery
            for market in self._markets.values():
                nursery.start_soon(self._replay, market, self._trades, self._emit_trade)
                nursery.start_soon(self._replay, market, self._agg_trades, self._emit_agg_trade)
                nursery.start_soon(self._replay, market, self._book_tickers, self._emit_book_ticker)
            nursery.start_soon(self._tick)
            log.info("Binance simulator on %s (REST %s)", self.ws_url, self.rest_url)
            task_status.started()

    async def _handle(self, request: WebSocketRequest) -> None:
        self.connection_attempts += 1
        self._notify()
        path, _, query = request.path.partition("?")
        resolved = self._resolve(path)
        if resolved is None:
            await self._reject(request, 404, {"code": -1, "msg": f"Not found: {path}"})
            return
        if self._refuse:
            if self._refuse > 0:
                self._refuse -= 1
            self.connections_refused += 1
            self._notify()
            await self._reject(request, 503, {"code": -1, "msg": "Service unavailable"})
            return
        route, combined, names = resolved
        if combined:
            for key, value in parse_qsl(query):
                if key == "streams":
                    names.extend(name for name in value.split("/") if name)
        problem = _check_streams(names, 0)
        if problem is not None:
            await self._reject(request, 400, {"code": 2, "msg": problem})
            return
        try:
            ws = await request.accept()
        except ConnectionClosed:
            return
        conn = SimConnection(ws, request.path, route, combined)
        self.connections_accepted += 1
        self._live.append(conn)
        added = self._subscribe(conn, names)  # already checked: a list, never an error
        for name in added if isinstance(added, list) else ():
            self._register(conn, name)
        self._notify()
        try:
            await self._run(conn)
        finally:
            self._forget(conn)
            await self._finish(conn)

    def _resolve(self, path: str) -> tuple[str, bool, list[str]] | None:
        found = self._endpoints.get(path)
        if found is not None:
            return found[0], found[1], []
        # Raw streams named in the path: /ws/<stream>[/<stream>...] (§2.1).
        for base, (route, combined) in self._endpoints.items():
            if not combined and path.startswith(base + "/"):
                names = [n for n in path[len(base) + 1 :].split("/") if n]
                return route, False, names
        return None

    async def _reject(self, request: WebSocketRequest, status: int, body: Any) -> None:
        try:
            await request.reject(
                status,
                extra_headers=[(b"content-type", b"application/json")],
                body=orjson.dumps(body),
            )
        except ConnectionClosed:
            log.debug("client left before the %d rejection was sent", status)

    async def _run(self, conn: SimConnection) -> None:
        async def until_done(task: Callable[[SimConnection], Any]) -> None:
            await task(conn)
            conn._scope.cancel()

        with conn._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(until_done, self._reader)
                nursery.start_soon(until_done, self._writer)
                nursery.start_soon(self._pinger, conn, nursery)
                if self.flood:
                    nursery.start_soon(until_done, self._flooder)

    async def _finish(self, conn: SimConnection) -> None:
        if conn._close_intent is None:
            return  # the client closed; trio-websocket completes the handshake
        code, reason = conn._close_intent
        if code is None:
            # Reaching into trio-websocket's transport: an abrupt TCP close, no close frame.
            await trio.aclose_forcefully(conn._ws._stream)
            return
        with trio.move_on_after(_CLOSE_TIMEOUT):
            await conn._ws.aclose(code, reason)

    def _forget(self, conn: SimConnection) -> None:
        if conn in self._live:
            self._live.remove(conn)
        for name in conn._streams:
            self._unregister(conn, name)
        self._notify()

    # ---- the connection's tasks ----------------------------------------------------------

    async def _reader(self, conn: SimConnection) -> None:
        while True:
            try:
                message = await conn._ws.get_message()
            except ConnectionClosed:
                return
            self.requests_received += 1
            # §2.5: more than N incoming messages within a second disconnects the client.
            if conn._over_rate(trio.current_time(), self.max_incoming_per_second):
                self.rate_limit_closes += 1
                self._notify()
                conn._request_close(1008, "Too many requests")
                return
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            reply, added = self._control(conn, text)
            self._notify()
            if self._silent:  # a stalled server: requests take effect, nothing comes back
                for name in added:
                    self._register(conn, name)
                continue
            # The reply is written here, not queued: streams start flowing only after their ack
            # is on the wire, as on the real exchange (and even in flood mode).
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                try:
                    await conn._ws.send_message(orjson.dumps(reply).decode())
                except ConnectionClosed:
                    return
            for name in added:
                self._register(conn, name)

    async def _writer(self, conn: SimConnection) -> None:
        async for text in conn._outbox:
            # Shielded (with a bound): cancelling a write midway would cut a frame in half, and
            # the close frame that follows would then be garbage to the client.
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                try:
                    await conn._ws.send_message(text)
                except ConnectionClosed:
                    return
            conn.frames_sent += 1

    async def _pinger(self, conn: SimConnection, nursery: trio.Nursery) -> None:
        count = 0
        while True:
            await trio.sleep(self.ping_interval)
            if self._silent:
                continue
            count += 1
            nursery.start_soon(self._expect_pong, conn, b"%d" % count)

    async def _expect_pong(self, conn: SimConnection, payload: bytes) -> None:
        with trio.move_on_after(self.pong_timeout):
            with contextlib.suppress(ConnectionClosed):
                await conn._ws.ping(payload)
            return
        self.pong_timeouts += 1
        self._notify()
        conn._request_close(1008, "Pong timeout")

    async def _flooder(self, conn: SimConnection) -> None:
        ws = conn._ws
        while True:
            if self._silent:
                await self._unsilenced.wait()
                continue
            if not conn._flood:
                await conn._flood_changed.wait()
                continue
            blob, count = self._flood_blob(conn)
            # Reaching into trio-websocket's connection: one send_all of many pre-built frames,
            # under its send lock so control frames and replies still interleave whole. Server
            # frames are unmasked and no extension is negotiated, so the bytes are valid as-is.
            async with ws._stream_lock:
                if ws.closed is not None:
                    return
                # Shielded for the same reason as in _writer: frames must stay whole.
                with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                    try:
                        await ws._stream.send_all(blob)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
            conn.frames_sent += count
            self.flood_frames_sent += count

    # ---- control requests ----------------------------------------------------------------

    def _control(self, conn: SimConnection, text: str) -> tuple[dict[str, Any], list[str]]:
        """The reply to one client message, and the streams to start once it is sent."""
        request = parse_control(text)
        if not isinstance(request, ControlRequest):
            return request, []
        method, params, rid = request.method, request.params, request.id
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) for p in params):
                return _error(2, "Invalid request: property name must be a string"), []
            if method == "UNSUBSCRIBE":
                for name in params:
                    if name in conn._streams:
                        del conn._streams[name]
                        self._unregister(conn, name)
                return {"result": None, "id": rid}, []
            added = self._subscribe(conn, params)
            if isinstance(added, str):
                return _error(2, added, rid, with_id=True), []
            return {"result": None, "id": rid}, added
        return self._property(conn, request), []

    def _property(self, conn: SimConnection, request: ControlRequest) -> dict[str, Any]:
        method, params, rid = request.method, request.params, request.id
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": conn.subscriptions, "id": rid}
        # SET_PROPERTY / GET_PROPERTY: only "combined" exists (§2.1, §2.2).
        if not params or not isinstance(params[0], str):
            return _error(2, "Invalid request: property name must be a string")
        expected = 2 if method == "SET_PROPERTY" else 1
        if len(params) > expected:
            return _error(2, "Invalid request: too many parameters")
        if params[0] != "combined":
            return _error(0, "Unknown property", rid, with_id=True)
        if method == "GET_PROPERTY":
            return {"result": conn.combined, "id": rid}
        if len(params) < 2 or not isinstance(params[1], bool):
            return _error(1, "Invalid value type: expected Boolean")
        conn.combined = params[1]
        return {"result": None, "id": rid}

    def _subscribe(self, conn: SimConnection, names: list[str]) -> list[str] | str:
        """Record ``names`` on ``conn`` and return the new ones (for the caller to start), or
        the error message when the request is refused."""
        new = [name for name in dict.fromkeys(names) if name not in conn._streams]
        problem = _check_streams(new, len(conn._streams))
        if problem is not None:
            return problem
        for name in new:
            conn._streams[name] = None
        return new

    def _deliverable(self, conn: SimConnection, name: str) -> tuple[_Market, str] | None:
        """The market and kind behind ``name`` when this connection's route carries it."""
        symbol, _, kind = name.partition("@")
        # Stream names must be lower case (§2.1): "BTCUSDT@trade" matches no market.
        market = self._markets.get(symbol)
        if market is None:
            return None
        if self.futures:
            if _FUTURES_KIND_ROUTE.get(kind) != conn.route:
                return None
        elif kind not in _SPOT_KINDS:
            return None
        return market, kind

    def _register(self, conn: SimConnection, name: str) -> None:
        target = self._deliverable(conn, name)
        if target is None:
            return
        market, kind = target
        if self.flood and kind in _TRADE_KINDS:
            conn._flood.append((name, kind, market))
            conn._flood_updated()
            return
        self._subscribers.setdefault(name, set()).add(conn)
        market.add_demand(1)

    def _unregister(self, conn: SimConnection, name: str) -> None:
        entry = next((e for e in conn._flood if e[0] == name), None)
        if entry is not None:
            conn._flood.remove(entry)
            conn._flood_updated()
            return
        subscribers = self._subscribers.get(name)
        if subscribers is None or conn not in subscribers:
            return
        subscribers.discard(conn)
        if not subscribers:
            del self._subscribers[name]
        self._markets[name.partition("@")[0]].add_demand(-1)

    # ---- market data ---------------------------------------------------------------------

    def _publish(self, name: str, payload: Mapping[str, Any]) -> None:
        subscribers = self._subscribers.get(name)
        if not subscribers or self._silent:
            return
        raw = orjson.dumps(payload).decode()
        combined = ""
        for conn in subscribers:
            if conn.combined:
                combined = combined or f'{{"stream":"{name}","data":{raw}}}'
                if not conn._offer(combined):
                    self.frames_dropped += 1
            elif not conn._offer(raw):
                self.frames_dropped += 1

    async def _replay(
        self,
        market: _Market,
        recording: Recording,
        emit: Callable[[_Market, Mapping[str, Any]], None],
    ) -> None:
        """Emit ``recording`` for ``market`` in a loop at the recorded pace (gaps / speed),
        while anyone subscribes to the symbol."""
        count = len(recording)
        # Symbols start at different points of the tape, so they do not move in lockstep.
        index = market.index * count // max(1, len(self._markets)) % count
        deadline = trio.current_time()
        since_checkpoint = 0
        while True:
            if not market.wanted.is_set():
                await market.wanted.wait()
                deadline = trio.current_time()
            deadline += recording.gaps[index] / self.speed
            now = trio.current_time()
            if deadline > now:
                await trio.sleep_until(deadline)
                since_checkpoint = 0
            else:
                deadline = max(deadline, now - 1.0)  # never burst more than 1 s to catch up
                since_checkpoint += 1
                if since_checkpoint >= 64:
                    await trio.lowlevel.checkpoint()
                    since_checkpoint = 0
            emit(market, recording.payloads[index])
            index = (index + 1) % count

    def _emit_trade(self, market: _Market, rec: Mapping[str, Any]) -> None:
        trade_id = market.next_trade_id
        market.next_trade_id += 1
        price = float(rec["p"]) * market.factor
        qty = market.qty(float(rec["q"]))
        market.on_trade(price, qty)
        name = market.lower + "@trade"
        if name not in self._subscribers:
            return
        now = _now_ms()
        payload: dict[str, Any] = {
            "e": "trade",
            "E": now,
            "s": market.symbol,
            "t": trade_id,
            "p": market.price(price),
            "q": qty,
            "T": now - max(0, int(rec["E"]) - int(rec["T"])),
            "m": rec["m"],
            "M": True,
        }
        if market.futures:
            del payload["M"]  # [unverified] futures trade events carry no "ignore" field
        self._publish(name, payload)

    def _emit_agg_trade(self, market: _Market, rec: Mapping[str, Any]) -> None:
        fills = max(1, int(rec["l"]) - int(rec["f"]) + 1)
        first = market.next_agg_fill_id
        market.next_agg_fill_id += fills
        agg_id = market.next_agg_id
        market.next_agg_id += 1
        price = float(rec["p"]) * self._agg_scale * market.factor
        qty = market.qty(float(rec["q"]))
        market.on_trade(price, qty)
        name = market.lower + "@aggTrade"
        if name not in self._subscribers:
            return
        now = _now_ms()
        payload: dict[str, Any] = {
            "e": "aggTrade",
            "E": now,
            "s": market.symbol,
            "a": agg_id,
            "p": market.price(price),
            "q": qty,
            "f": first,
            "l": first + fills - 1,
            "T": now - max(0, int(rec["E"]) - int(rec["T"])),
            "m": rec["m"],
            "M": True,
        }
        if market.futures:
            del payload["M"]  # §2.6: futures aggTrade has no "M"
        self._publish(name, payload)

    def _emit_book_ticker(self, market: _Market, rec: Mapping[str, Any]) -> None:
        market.book_update_id += 1
        bid = round(float(rec["b"]) * market.factor, market.price_decimals)
        ask = round(float(rec["a"]) * market.factor, market.price_decimals)
        # Scaling shrinks the spread below the tick; keep the book uncrossed and unlocked.
        ask = max(ask, bid + 10.0**-market.price_decimals)
        market.bid = market.price(bid)
        market.ask = market.price(ask)
        market.bid_qty = market.qty(float(rec["B"]))
        market.ask_qty = market.qty(float(rec["A"]))
        name = market.lower + "@bookTicker"
        if name not in self._subscribers:
            return
        quote = {
            "u": market.book_update_id,
            "s": market.symbol,
            "b": market.bid,
            "B": market.bid_qty,
            "a": market.ask,
            "A": market.ask_qty,
        }
        if market.futures:
            # §2.6: futures bookTicker adds the event type, event time and transaction time.
            now = _now_ms()
            quote = {"e": "bookTicker", "u": quote["u"], "E": now, "T": now - 1, **quote}
        # §2.3: spot bookTicker has no "e"/"E"; only the stream name identifies it.
        self._publish(name, quote)

    async def _tick(self) -> None:
        """§2.3: one 24hrTicker per subscribed symbol every 1000 ms."""
        deadline = trio.current_time()
        while True:
            deadline += 1.0
            await trio.sleep_until(deadline)
            now = _now_ms()
            for market in self._markets.values():
                name = market.lower + "@ticker"
                if name in self._subscribers:
                    self._publish(name, market.ticker(now))

    # ---- flood ---------------------------------------------------------------------------

    def _flood_rows(self, market: _Market, kind: str) -> list[tuple[str, str, str]]:
        """(price, qty, m) strings of the tape, scaled for ``market``, built once."""
        rows = market.flood_rows.get(kind)
        if rows is None:
            tape, scale = (self._trades, 1.0) if kind == "trade" else (self._agg_trades, self._agg_scale)
            rows = [
                (
                    market.price(float(p["p"]) * scale * market.factor),
                    market.qty(float(p["q"])),
                    "true" if p["m"] else "false",
                )
                for p in tape.payloads
            ]
            market.flood_rows[kind] = rows
        return rows

    def _flood_blob(self, conn: SimConnection) -> tuple[bytes, int]:
        """Many complete WebSocket frames of the connection's trade streams, with fresh ids and
        the current time; built per blob, which costs far less than the client spends reading."""
        now = _now_ms()
        tail = "" if self.futures else ',"M":true'
        per_stream = max(1, _FLOOD_FRAMES_PER_BLOB // len(conn._flood))
        parts: list[bytes] = []
        for name, kind, market in conn._flood:
            head = f'{{"stream":"{name}","data":' if conn.combined else ""
            close = "}" if conn.combined else ""
            rows = self._flood_rows(market, kind)
            if kind == "trade":
                start = market.next_trade_id
                market.next_trade_id += per_stream
                template = (
                    f'{head}{{"e":"trade","E":{now},"s":"{market.symbol}","t":%d,"p":"%s",'
                    f'"q":"%s","T":{now},"m":%s{tail}}}{close}'
                )
                for offset in range(per_stream):
                    p, q, m = rows[(start + offset) % len(rows)]
                    body = (template % (start + offset, p, q, m)).encode()
                    parts.append(_frame_header(len(body)))
                    parts.append(body)
            else:
                start = market.next_agg_fill_id
                market.next_agg_fill_id += per_stream
                agg = market.next_agg_id
                market.next_agg_id += per_stream
                template = (
                    f'{head}{{"e":"aggTrade","E":{now},"s":"{market.symbol}","a":%d,"p":"%s",'
                    f'"q":"%s","f":%d,"l":%d,"T":{now},"m":%s{tail}}}{close}'
                )
                for offset in range(per_stream):
                    p, q, m = rows[(start + offset) % len(rows)]
                    tid = start + offset
                    body = (template % (agg + offset, p, q, tid, tid, m)).encode()
                    parts.append(_frame_header(len(body)))
                    parts.append(body)
            p, q, _ = rows[(start + per_stream - 1) % len(rows)]
            market.last_price = float(p)
            market.last_qty = q
        return b"".join(parts), per_stream * len(conn._flood)

    # ---- REST ----------------------------------------------------------------------------

    def _rest_answer(self, request: HttpRequest) -> HttpResponse:
        self.rest_requests += 1
        self._notify()
        if self._rest_failing:
            return HttpResponse(503, {"code": -1001, "msg": "Service unavailable (simulated outage)"})
        info_path = "/fapi/v1/exchangeInfo" if self.futures else "/api/v3/exchangeInfo"
        if request.method == "GET" and request.path == info_path:
            return HttpResponse(200, self.exchange_info())
        return HttpResponse(404, {"code": -1, "msg": f"Not found: {request.method} {request.path}"})

    def exchange_info(self) -> dict[str, Any]:
        """The exchangeInfo body: the simulated symbols TRADING, plus :data:`BREAK_SYMBOL`."""
        entries = [(s, "TRADING") for s in self.symbols]
        entries.append((self.break_symbol, "BREAK"))
        symbols = []
        for symbol, status in entries:
            quote = _quote_asset(symbol)
            entry: dict[str, Any] = {
                "symbol": symbol,
                "status": status,
                "baseAsset": symbol[: -len(quote)],
                "quoteAsset": quote,
            }
            if self.futures:
                entry["contractType"] = "PERPETUAL"
            symbols.append(entry)
        return {"timezone": "UTC", "serverTime": _now_ms(), "symbols": symbols}
