"""Bybit v5 options (``bybit-option``, ``/v5/public/option``), sans-IO.

The protocol is Bybit v5's (:mod:`feedd.exchanges.bybit`, protocols §1) with what options do
differently (§7, checked against Bybit's docs, ``/v5/ws/connect`` and the trade, ticker and
instruments pages):

- ``publicTrade`` is subscribed **by base coin** (``publicTrade.BTC``) and carries the trades of
  every option of that coin, each row naming its ``s``. feedd's topic for one option's trades is
  ``publicTrade.<option symbol>``: the session subscribes the coin's wire topic once for all of a
  connection's symbols of that coin (unsubscribing it with the last) and keeps only their rows.
- ``tickers.<option symbol>`` are snapshots only, with ``bidPrice``/``askPrice`` (a ``"0"`` price
  is an empty side: no quote) and ``change24h``, a fraction (records carry percent).
- The subscribe reply names its topics, ``{"success": true, "data": {"successTopics": [...],
  "failTopics": [...]}, "type": "COMMAND_RESP"}``, without ``op`` or ``req_id``: a reply is
  matched to the oldest outstanding request with one of its topics (or by ``req_id`` if one
  comes back), and a topic in ``failTopics`` is refused alone while the rest of its request
  streams.
- The pong is ``{"args": ["<ms>"], "op": "pong"}`` (no ``success`` or ``ret_msg``).
- Limits: at most 2000 args per connection and 21,000 characters of them; 1000 market-data
  connections per IP counted for options alone, and 500 connection attempts in 5 minutes per
  domain (shared with spot, linear and inverse on stream.bybit.com).
- Symbols: USDC options ``BTC-27DEC26-100000-C``, USDT options with the settle coin appended,
  ``BTC-27MAR26-70000-P-USDT`` (the WebSocket uses ``symbol``, not ``displayName``). Sizes are in
  the base coin (one contract is one coin), so volume needs no conversion.
- instruments-info lists one base coin per query ("option: returns BTC by default"), paged by
  ``cursor``: the venue walks :attr:`BybitOption.base_coins` one after the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal, DecimalException
from typing import Any
from urllib.parse import quote

import orjson

from feedd.errors import excerpt
from feedd.exchanges.base import (
    DecodeError,
    Event,
    Ignored,
    InstrumentPage,
    Op,
    Session,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
    Venue,
)
from feedd.exchanges.bybit import _WORDS, BybitSession, _BybitVenue, _milliseconds
from feedd.exchanges.fields import (
    QuoteCache,
    optional_number,
)
from feedd.model import TICKER, MarketData, Message, quote_record

_TRADES = "publicTrade."
_IGNORED = Ignored()
#: the pieces of an option symbol: base, expiry, strike, C/P, and the settle coin if not USDC
_MIN_PARTS, _MAX_PARTS = 4, 5


def base_coin(symbol: str) -> str:
    return symbol.partition("-")[0]


def _quote_price(value: Any) -> float | None:
    """``bidPrice``/``askPrice``: ``"0"`` (or empty) is a side without a quote."""
    price = optional_number(value)
    return price if price else None


def _fraction_percent(value: Any) -> float | None:
    """``change24h`` (``"-0.33333334"``) in percent, exactly: a decimal shift, one rounding."""
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise TypeError(f"'change24h' is not a string: {value!r:.50}")
    try:
        return float(Decimal(value).scaleb(2))
    except DecimalException:
        raise ValueError(f"'change24h' is not a number: {value!r:.50}") from None


class BybitOptionSession(BybitSession):
    """One option connection: BybitSession's decoding, the base-coin trade topics, option acks.

    A request is pending as (op, feedd topics, wire args). A feedd topic whose coin's wire topic
    is already held (or already requested) needs no request of its own: it is acknowledged with
    the request that holds it, or, when that was acknowledged already, with the next frame
    decoded (a ping is sent along to make one come soon).
    """

    def __init__(self, venue_id: str, *, max_args: int, quotes: QuoteCache) -> None:
        super().__init__(venue_id, max_args=max_args, merge_tickers=False, inverse=False, quotes=quotes)
        self._requests_out: dict[str, tuple[Op, list[str], tuple[str, ...]]] = {}
        #: base coin → the option symbols whose trades this connection keeps
        self._coins: dict[str, set[str]] = {}
        #: acknowledgements owed to topics that needed no request, given with the next frame
        self._owed: list[SubscribeAck] = []
        self._handlers["publicTrade"] = self._option_trades
        self._handlers["tickers"] = self._option_ticker

    # ---- outgoing ------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str]) -> list[Message]:
        return self._option_requests("subscribe", topics)

    def unsubscribe(self, topics: Sequence[str]) -> list[Message]:
        return self._option_requests("unsubscribe", topics)

    def _option_requests(self, op: Op, topics: Sequence[str]) -> list[Message]:
        wire: list[str] = []
        #: wire arg → the feedd topics it answers for
        answers: dict[str, list[str]] = {}
        free: list[str] = []  # topics riding on a wire topic already held
        for topic in dict.fromkeys(topics):
            if not topic.startswith(_TRADES):
                wire.append(topic)
                answers[topic] = [topic]
                continue
            symbol = topic[len(_TRADES) :]
            coin = base_coin(symbol)
            arg = _TRADES + coin
            symbols = self._coins.setdefault(coin, set())
            had = bool(symbols)
            if op == "subscribe":
                symbols.add(symbol)
                needed = not had
            else:
                symbols.discard(symbol)
                needed = had and not symbols
            if needed:
                wire.append(arg)
                answers.setdefault(arg, []).append(topic)
            elif arg in answers:
                answers[arg].append(topic)
            elif (pending := self._pending_with(op, arg)) is not None:
                pending.append(topic)
            else:
                free.append(topic)
        frames: list[Message] = []
        step = self._max_args
        for start in range(0, len(wire), step):
            batch = tuple(wire[start : start + step])
            req_id = str(self._next_id)
            self._next_id += 1
            named = [name for arg in batch for name in answers[arg]]
            self._requests_out[req_id] = (op, named, batch)
            frames.append(orjson.dumps({"op": op, "args": batch, "req_id": req_id}).decode())
        if free:
            self._owed.append(SubscribeAck(None, tuple(free), op))
            if not frames:
                frames.append(self.ping())
        return frames

    def _pending_with(self, op: Op, arg: str) -> list[str] | None:
        for pending_op, named, batch in self._requests_out.values():
            if pending_op == op and arg in batch:
                return named
        return None

    def ping(self) -> Message:
        return '{"op":"ping"}'

    # ---- incoming ------------------------------------------------------------------------

    def decode(self, frame: Message, received_at: datetime) -> list[Event]:
        events = super().decode(frame, received_at)
        if self._owed:
            owed, self._owed = self._owed, []
            return [*owed, *events]
        return events

    def _reply(self, msg: dict[str, Any], frame: Message) -> list[Event]:
        """A ``COMMAND_RESP`` (topics named) or a plain ``success``/``ret_msg`` refusal."""
        data = msg.get("data")
        success = msg["success"]
        if type(success) is not bool:
            return [DecodeError(f"'success' is not a boolean: {success!r:.50}", excerpt(frame))]
        if isinstance(data, dict):
            ok, failed = data.get("successTopics", []), data.get("failTopics", [])
            if type(ok) is not list or type(failed) is not list:
                return [DecodeError("'successTopics' or 'failTopics' is not a list", excerpt(frame))]
            named = {str(t) for t in (*ok, *failed)}
            reason = msg.get("ret_msg") or f"refused: {', '.join(map(str, failed))}"
        else:
            named = set(_WORDS.findall(str(msg.get("ret_msg", ""))))
            failed, reason = ([], "") if success else (list(named), str(msg.get("ret_msg") or excerpt(frame)))
        req_id = msg.get("req_id")
        found = req_id if type(req_id) is str and req_id in self._requests_out else None
        if found is None:
            out = self._requests_out
            found = next((r for r, (_, _, batch) in out.items() if named.intersection(batch)), None)
        if found is None:
            if success and not failed:
                return [_IGNORED]  # nothing of ours to attribute
            return [SubscribeRejected(req_id if type(req_id) is str and req_id else None, (), reason)]
        op, topics, batch = self._requests_out.pop(found)
        refused_args = set(batch) if not success and not failed else set(failed).intersection(batch)
        refused = tuple(t for t in topics if self._wire_of(t) in refused_args)
        accepted = tuple(t for t in topics if self._wire_of(t) not in refused_args)
        for arg in refused_args:
            if arg.startswith(_TRADES) and op == "subscribe":
                self._coins.pop(arg[len(_TRADES) :], None)  # asked for again next time
        events: list[Event] = []
        if accepted:
            events.append(SubscribeAck(found, accepted, op))
        if refused:
            events.append(SubscribeRejected(found, refused, reason))
        return events

    @staticmethod
    def _wire_of(topic: str) -> str:
        if topic.startswith(_TRADES):
            return _TRADES + base_coin(topic[len(_TRADES) :])
        return topic

    def _option_trades(
        self, msg: dict[str, Any], coin: str, received_at: datetime, frame: Message
    ) -> list[Event]:
        """The rows of the coin's options this connection carries; the others are dropped."""
        wanted = self._coins.get(coin)
        events = self._trades(msg, coin, received_at, frame)
        return [e for e in events if type(e) is not MarketData or (wanted is not None and e.symbol in wanted)]

    def _option_ticker(
        self, msg: dict[str, Any], symbol: str, received_at: datetime, frame: Message
    ) -> list[Event]:
        """A ticker record, and a quote record (``bidPrice``/``bidSize``, ``askPrice``/``askSize``)
        for an option subscribed to ``quotes``: one wire stream carries both (an option's
        ``orderbook`` has no level 1)."""
        data = msg["data"]
        if type(data) is not dict:
            raise TypeError(f"'data' is not an object: {data!r:.50}")
        bid, ask = _quote_price(data.get("bidPrice")), _quote_price(data.get("askPrice"))
        bid_size = None if bid is None else optional_number(data.get("bidSize"))
        ask_size = None if ask is None else optional_number(data.get("askSize"))
        timestamp = _milliseconds(msg["ts"], "ts")
        cache = self._quotes
        events: list[Event] = []
        if cache.gives_ticker(symbol):
            events.append(MarketData(
                self._venue_id,
                symbol,
                TICKER,
                float(data["lastPrice"]),
                float(data["volume24h"]),  # in the base coin: one option contract is one coin
                timestamp,
                received_at,
                bid=bid,
                ask=ask,
                high_24h=optional_number(data.get("highPrice24h")),
                low_24h=optional_number(data.get("lowPrice24h")),
                change_24h=_fraction_percent(data.get("change24h")),
                bid_size=bid_size,
                ask_size=ask_size,
            ))
        if symbol in cache.streamed:
            if bid is None or ask is None or bid_size is None or ask_size is None:
                events.append(_IGNORED)  # one side empty: no best bid/offer to give
            else:
                events.append(quote_record(
                    self._venue_id, symbol, bid, bid_size, ask, ask_size, timestamp, received_at
                ))
        return events or [_IGNORED]


class BybitOption(_BybitVenue):
    """Bybit USDC and USDT options, by option symbol."""

    venue_id = "bybit-option"
    default_url = "wss://stream.bybit.com/v5/public/option"
    category = "option"
    #: [connect] "Options can input up to 2000 args for a single connection"
    max_streams_per_connection = 2000
    #: no per-request figure is documented for options; a failed request is redone topic by topic
    max_args_per_request = 100
    _merge_tickers = False
    #: the base coins whose options instruments-info is asked for, one query each (it lists
    #: BTC's alone by default; the set of coins is not documented)
    base_coins: tuple[str, ...] = ("BTC", "ETH", "SOL")

    def __init__(self) -> None:
        super().__init__()
        self._asked_coin = self.base_coins[0]

    def topics(self, subscription: Subscription) -> list[Topic]:
        symbol = subscription.symbol
        if subscription.channel == "trades":
            return [Topic("", f"{_TRADES}{symbol}")]
        if subscription.channel == "quotes":  # from the ticker stream, which has the sizes
            return [Topic("", f"tickers.{symbol}")]
        return super().topics(subscription)

    def symbol_problem(self, symbol: str) -> str | None:
        parts = symbol.split("-")
        if not _MIN_PARTS <= len(parts) <= _MAX_PARTS or parts[3] not in ("C", "P") or not all(parts):
            return (f"{symbol!r} is not an option symbol: bybit-option takes BASE-DDMMMYY-STRIKE-C|P "
                    "(USDT-settled: with -USDT), e.g. BTC-27DEC26-100000-C")
        return None

    def new_session(self) -> Session:
        return BybitOptionSession(self.venue_id, max_args=self.max_args_per_request, quotes=self.quotes)

    def instruments_path(self, cursor: str | None = None) -> str:
        """One base coin's page: ``cursor`` is ``COIN`` (its first page) or ``COIN|<Bybit cursor>``."""
        coin, _, page = (cursor or self.base_coins[0]).partition("|")
        self._asked_coin = coin
        path = f"/v5/market/instruments-info?category=option&baseCoin={coin}&limit=1000"
        return f"{path}&cursor={quote(page, safe='')}" if page else path

    def parse_instruments(self, body: Any) -> InstrumentPage:
        """The page's ``Trading`` options; the cursor goes on to the next page of the same coin,
        then to the next coin of :attr:`base_coins`."""
        page = super().parse_instruments(body)
        coin = self._asked_coin
        if page.cursor is not None:
            return InstrumentPage(page.symbols, f"{coin}|{page.cursor}")
        coins = self.base_coins
        following = coins.index(coin) + 1 if coin in coins else len(coins)
        return InstrumentPage(page.symbols, coins[following] if following < len(coins) else None)


VENUES: dict[str, Callable[[], Venue]] = {
    "bybit-option": BybitOption,
}
