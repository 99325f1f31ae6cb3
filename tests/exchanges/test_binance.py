"""The Binance adapter driven with literal frames: documented samples and recorded traffic."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest

from feedd.exchanges import make_venue, venue_ids
from feedd.exchanges.base import (
    DecodeError,
    Event,
    Heartbeat,
    Ignored,
    InstrumentPage,
    Message,
    Rotate,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
)
from feedd.exchanges.binance import BinanceSession, BinanceSpot, BinanceUsdm
from feedd.feed.validate import Validator
from feedd.model import MarketData

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "binance"
RECORDED_TRADES = FIXTURES / "recorded_spot_trade_bookticker_2024-08-08.ndjson"
RECORDED_AGG_TRADES = FIXTURES / "recorded_spot_aggtrade_2021-04-04.ndjson"

RECEIVED = datetime(2023, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def wrapped(stream: str, payload: Any) -> str:
    """A payload in the combined-stream envelope feedd connects with."""
    return json.dumps({"stream": stream, "data": payload})


def at_ms(ms: int) -> datetime:
    """Reference conversion, exact by construction."""
    return EPOCH + timedelta(milliseconds=ms)


def session(venue: BinanceSpot | BinanceUsdm | None = None) -> BinanceSession:
    made = (venue or BinanceSpot()).new_session()
    assert isinstance(made, BinanceSession)
    return made


def only(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


def one_request(frames: list[Message]) -> Any:
    """The decoded JSON of the only frame sent; requests go out as text frames."""
    assert len(frames) == 1, frames
    assert isinstance(frames[0], str)
    return orjson.loads(frames[0])


def market_data(events: list[Event]) -> MarketData:
    event = only(events)
    assert isinstance(event, MarketData), event
    return event


def decode_error(events: list[Event]) -> DecodeError:
    event = only(events)
    assert isinstance(event, DecodeError), event
    assert event.reason
    return event


def recorded(path: Path) -> list[tuple[str, dict[str, Any]]]:
    lines = path.read_text().splitlines()
    assert 0 < len(lines) <= 300
    return [(line, json.loads(line)) for line in lines]


# ---- venue facts ------------------------------------------------------------------------------


def test_spot_venue_states_its_protocol_facts() -> None:
    venue = BinanceSpot()
    assert venue.venue_id == "binance"
    assert venue.default_url == "wss://stream.binance.com:9443/stream"
    assert venue.default_rest_url == "https://api.binance.com"
    assert venue.instruments_path() == "/api/v3/exchangeInfo"
    assert venue.max_streams_per_connection == 1024
    assert venue.max_chars_per_connection is None  # no character budget is documented
    assert venue.max_messages_per_second == 5
    assert venue.message_limit_scope == "connection"  # pongs included (§2.5)
    assert venue.ping_interval == 10.0
    assert venue.uppercase_symbols is True


def test_usdm_venue_states_its_protocol_facts() -> None:
    venue = BinanceUsdm()
    assert venue.venue_id == "binance-usdm"
    assert venue.default_url == "wss://fstream.binance.com/market/stream"
    assert venue.default_rest_url == "https://fapi.binance.com"
    assert venue.instruments_path() == "/fapi/v1/exchangeInfo"
    assert venue.max_streams_per_connection == 200
    assert venue.max_chars_per_connection is None
    assert venue.max_messages_per_second == 10
    assert venue.ping_interval == 10.0
    assert venue.uppercase_symbols is True


def test_registry_discovers_both_binance_venues() -> None:
    assert {"binance", "binance-usdm"} <= set(venue_ids())
    usdm = make_venue("binance-usdm")
    assert isinstance(usdm, BinanceUsdm)
    assert isinstance(make_venue("binance"), BinanceSpot)
    assert make_venue("binance-usdm") is not usdm


# ---- topics and urls --------------------------------------------------------------------------


def test_spot_topics_use_lowercase_symbol_on_the_only_route() -> None:
    venue = BinanceSpot()
    assert venue.topics(Subscription("BTCUSDT", "trades")) == [Topic("", "btcusdt@trade")]
    assert venue.topics(Subscription("BTCUSDT", "ticker")) == [Topic("", "btcusdt@ticker")]


def test_usdm_trades_are_agg_trades_and_ticker_adds_public_book_ticker() -> None:
    venue = BinanceUsdm()
    assert venue.topics(Subscription("BTCUSDT", "trades")) == [Topic("market", "btcusdt@aggTrade")]
    assert venue.topics(Subscription("BTCUSDT", "ticker")) == [
        Topic("market", "btcusdt@ticker"),
        Topic("public", "btcusdt@bookTicker"),
    ]


def test_spot_url_is_the_configured_base() -> None:
    venue = BinanceSpot()
    assert venue.url("", venue.default_url) == venue.default_url
    assert venue.url("", "ws://127.0.0.1:9001/stream") == "ws://127.0.0.1:9001/stream"
    with pytest.raises(ValueError, match="route"):
        venue.url("public", venue.default_url)


@pytest.mark.parametrize(
    ("base", "public"),
    [
        ("wss://fstream.binance.com/market/stream", "wss://fstream.binance.com/public/stream"),
        ("ws://127.0.0.1:9001/market/stream", "ws://127.0.0.1:9001/public/stream"),
        ("ws://localhost:9001/market", "ws://localhost:9001/public"),
        (
            "wss://proxy.example/binance/market/stream?timeUnit=MICROSECOND",
            "wss://proxy.example/binance/public/stream?timeUnit=MICROSECOND",
        ),
    ],
)
def test_usdm_public_url_replaces_the_market_path_segment(base: str, public: str) -> None:
    venue = BinanceUsdm()
    assert venue.url("market", base) == base
    assert venue.url("public", base) == public


@pytest.mark.parametrize(
    "base",
    [
        "wss://fstream.binance.com/stream",
        "wss://fstream.binance.com/marketdata/stream",
        "wss://market.binance.com/stream",
        "ws://127.0.0.1:9001",
    ],
)
def test_usdm_public_url_needs_a_market_segment(base: str) -> None:
    with pytest.raises(ValueError, match="'/market' path segment"):
        BinanceUsdm().url("public", base)


def test_usdm_url_rejects_unknown_route() -> None:
    with pytest.raises(ValueError, match="private"):
        BinanceUsdm().url("private", "wss://fstream.binance.com/market/stream")


# ---- requests ---------------------------------------------------------------------------------


def test_first_subscribe_frame_is_the_documented_request() -> None:
    frames = session().subscribe(["btcusdt@aggTrade", "btcusdt@depth"])
    assert len(frames) == 1
    assert isinstance(frames[0], str)  # a text frame
    assert orjson.loads(frames[0]) == sample("subscribe_request.json")


def test_unsubscribe_frame_has_the_documented_shape() -> None:
    documented = sample("unsubscribe_request.json")
    sent = one_request(session().unsubscribe(documented["params"]))
    assert sent["method"] == documented["method"] == "UNSUBSCRIBE"
    assert sent["params"] == documented["params"]
    assert isinstance(sent["id"], int) and sent["id"] >= 1


def test_subscribe_frames_carry_lowercase_stream_names_of_the_venue_topics() -> None:
    venue = BinanceUsdm()
    topics = [t.name for c in ("trades", "ticker") for t in venue.topics(Subscription("ETHUSDT", c))]
    sent = one_request(session(venue).subscribe(topics))
    assert sent["params"] == ["ethusdt@aggTrade", "ethusdt@ticker", "ethusdt@bookTicker"]
    assert all(name.split("@")[0] == "ethusdt" for name in sent["params"])


def test_request_ids_count_up_from_one_across_subscribe_and_unsubscribe() -> None:
    s = session()
    frames = [*s.subscribe(["a@trade"]), *s.unsubscribe(["a@trade"]), *s.subscribe(["b@trade"])]
    assert [orjson.loads(f)["id"] for f in frames] == [1, 2, 3]


def test_subscribe_batches_at_the_per_request_limit() -> None:
    limit = BinanceSession.MAX_PARAMS_PER_REQUEST
    assert limit == 200
    topics = [f"sym{i}usdt@trade" for i in range(2 * limit + 50)]
    frames = [orjson.loads(f) for f in session().subscribe(topics)]
    assert [len(f["params"]) for f in frames] == [limit, limit, 50]
    assert [f["id"] for f in frames] == [1, 2, 3]
    assert [p for f in frames for p in f["params"]] == topics
    assert all(f["method"] == "SUBSCRIBE" for f in frames)


def test_subscribe_of_exactly_the_limit_is_one_request() -> None:
    topics = [f"s{i}@trade" for i in range(BinanceSession.MAX_PARAMS_PER_REQUEST)]
    assert len(session().subscribe(topics)) == 1


def test_subscribe_of_nothing_sends_nothing() -> None:
    assert session().subscribe([]) == []
    assert session().unsubscribe([]) == []


def test_idle_probe_is_a_list_subscriptions_request_whose_reply_proves_the_feed() -> None:
    s = session()
    s.subscribe(["btcusdt@trade"])
    probe = orjson.loads(s.ping())
    assert probe == {"method": "LIST_SUBSCRIPTIONS", "id": 2}
    reply = orjson.dumps({"result": ["btcusdt@trade"], "id": 2}).decode()
    assert s.decode(reply, RECEIVED) == [Heartbeat()]


def test_each_session_numbers_its_requests_afresh() -> None:
    venue = BinanceSpot()
    venue.new_session().subscribe(["a@trade"])
    assert one_request(venue.new_session().subscribe(["a@trade"]))["id"] == 1


# ---- replies ----------------------------------------------------------------------------------


def test_subscribe_ack_names_the_topics_of_its_request() -> None:
    s = session()
    s.subscribe(["btcusdt@aggTrade", "btcusdt@depth"])
    ack = only(s.decode(json.dumps(sample("subscribe_ok.json")), RECEIVED))
    assert ack == SubscribeAck(1, ("btcusdt@aggTrade", "btcusdt@depth"), "subscribe")


def test_each_batch_is_acked_with_its_own_topics() -> None:
    s = session()
    topics = [f"s{i}@trade" for i in range(250)]
    s.subscribe(topics)
    second = only(s.decode('{"result":null,"id":2}', RECEIVED))
    first = only(s.decode('{"result":null,"id":1}', RECEIVED))
    assert first == SubscribeAck(1, tuple(topics[:200]), "subscribe")
    assert second == SubscribeAck(2, tuple(topics[200:]), "subscribe")


def test_unsubscribe_ack_names_its_topics_and_op() -> None:
    s = session()
    s.subscribe(["btcusdt@trade", "btcusdt@ticker"])
    s.unsubscribe(["btcusdt@ticker"])
    ack = only(s.decode(b'{"result":null,"id":2}', RECEIVED))
    assert ack == SubscribeAck(2, ("btcusdt@ticker",), "unsubscribe")


def test_ack_for_an_id_never_sent_is_ignored() -> None:
    # unsubscribe_ok.json answers id 312, which a fresh session has not sent
    assert only(session().decode(json.dumps(sample("unsubscribe_ok.json")), RECEIVED)) == Ignored()


def test_a_request_is_acked_only_once() -> None:
    s = session()
    s.subscribe(["btcusdt@trade"])
    assert isinstance(only(s.decode('{"result":null,"id":1}', RECEIVED)), SubscribeAck)
    assert only(s.decode('{"result":null,"id":1}', RECEIVED)) == Ignored()


def test_list_subscriptions_reply_is_a_heartbeat_of_the_feed() -> None:
    s = session()
    reply = json.dumps(sample("list_subscriptions_response.json"))
    assert only(s.decode(reply, RECEIVED)) == Heartbeat()


def test_documented_error_without_id_is_an_unattributed_subscribe_error() -> None:
    s = session()
    s.subscribe(["btcusdt@trade"])
    error = only(s.decode(json.dumps(sample("error.json")), RECEIVED))
    assert error == SubscribeRejected(
        None, (), "code 2: Invalid request: missing field `method` at line 1 column 73"
    )


def test_every_documented_error_becomes_a_subscribe_error_with_code_and_message() -> None:
    lines = (FIXTURES / "errors.jsonl").read_text().splitlines()
    assert len(lines) == 5
    for line in lines:
        documented = json.loads(line)
        error = only(session().decode(line, RECEIVED))
        assert isinstance(error, SubscribeRejected)
        assert error.request_id is None
        assert error.topics == ()
        assert error.reason == f"code {documented['code']}: {documented['msg']}"


def test_error_with_id_names_the_topics_of_that_request() -> None:
    s = session()
    s.subscribe(["btcusdt@trade"])
    s.subscribe(["ethusdt@trade", "ethusdt@ticker"])
    frame = '{"code": 2, "msg": "Invalid request: too many parameters", "id": 2}'
    assert only(s.decode(frame, RECEIVED)) == SubscribeRejected(
        2, ("ethusdt@trade", "ethusdt@ticker"), "code 2: Invalid request: too many parameters"
    )
    # the refused request is no longer pending: a late ack for it is not attributed
    assert only(s.decode('{"result":null,"id":2}', RECEIVED)) == Ignored()


def test_error_with_an_unknown_id_keeps_the_id_but_has_no_topics() -> None:
    error = only(session().decode('{"code": 0, "msg": "Unknown property", "id": 7}', RECEIVED))
    assert error == SubscribeRejected(7, (), "code 0: Unknown property")


# ---- server shutdown --------------------------------------------------------------------------


def test_combined_server_shutdown_asks_for_reconnect() -> None:
    frame = json.dumps(sample("serverShutdown_combined.json"))
    assert only(session().decode(frame, RECEIVED)) == Rotate("serverShutdown")


def test_raw_server_shutdown_also_asks_for_reconnect() -> None:
    frame = json.dumps(sample("serverShutdown.json"))
    assert only(session().decode(frame, RECEIVED)) == Rotate("serverShutdown")


# ---- market data from the documented samples --------------------------------------------------


def test_trade_sample_decodes_to_a_sell_trade_with_every_field() -> None:
    payload = sample("trade.json")
    record = market_data(session().decode(wrapped("bnbbtc@trade", payload), RECEIVED))
    assert record == MarketData(
        exchange="binance",
        symbol="BNBBTC",
        kind="trade",
        price=0.001,
        volume=100.0,
        timestamp=datetime(2022, 12, 31, 19, 43, 2, 136000, tzinfo=UTC),
        received_at=RECEIVED,
        side="sell",  # m=true: the buyer was the maker, so the taker sold
        trade_id="12345",
    )
    assert record.received_at is RECEIVED


def test_constructed_combined_trade_sample_decodes_like_the_wrapped_payload() -> None:
    s = session()
    combined = market_data(s.decode((FIXTURES / "combined_trade.json").read_bytes(), RECEIVED))
    plain = market_data(s.decode(wrapped("bnbbtc@trade", sample("trade.json")), RECEIVED))
    assert combined == plain


def test_trade_where_the_buyer_took_is_a_buy() -> None:
    payload = {**sample("trade.json"), "m": False}
    assert market_data(session().decode(wrapped("bnbbtc@trade", payload), RECEIVED)).side == "buy"


def test_agg_trade_sample_uses_the_aggregate_id_and_trade_time() -> None:
    payload = {**sample("aggTrade.json"), "T": 1672515782999, "a": 987654321012}
    venue = BinanceUsdm()
    record = market_data(session(venue).decode(wrapped("bnbbtc@aggTrade", payload), RECEIVED))
    assert record.exchange == "binance-usdm"
    assert record.kind == "trade"
    assert record.symbol == "BNBBTC"
    assert record.trade_id == "987654321012"
    assert (record.price, record.volume, record.side) == (0.001, 100.0, "sell")
    assert record.timestamp == at_ms(1672515782999)
    assert record.timestamp.microsecond == 999000
    assert record.bid is record.ask is record.change_24h is None


def test_spot_ticker_sample_carries_last_price_base_volume_quote_and_percent_change() -> None:
    record = market_data(
        session().decode(wrapped("bnbbtc@ticker", sample("ticker.json")), RECEIVED)
    )
    assert record == MarketData(
        exchange="binance",
        symbol="BNBBTC",
        kind="ticker",
        price=0.0025,  # c
        volume=10000.0,  # v, base units
        timestamp=at_ms(1672515782136),  # E
        received_at=RECEIVED,
        bid=0.0024,
        ask=0.0026,
        high_24h=0.0025,
        low_24h=0.0010,
        change_24h=250.0,  # P is already percent ("250.00"), not p (absolute 0.0015)
        bid_size=10.0,  # B
        ask_size=100.0,  # A
    )


def test_book_ticker_sample_is_absorbed_into_the_venue_quotes() -> None:
    venue = BinanceSpot()
    frame = wrapped("bnbusdt@bookTicker", sample("bookTicker.json"))
    assert only(session(venue).decode(frame, RECEIVED)) == Ignored()
    assert venue.quotes.get("BNBUSDT", RECEIVED) == (25.3519, 25.3652)


def test_spot_ticker_prefers_its_own_bid_ask_over_a_cached_quote() -> None:
    venue = BinanceSpot()
    s = session(venue)
    s.decode(wrapped("bnbbtc@bookTicker", {"s": "BNBBTC", "b": "1", "a": "2"}), RECEIVED)
    record = market_data(s.decode(wrapped("bnbbtc@ticker", sample("ticker.json")), RECEIVED))
    assert (record.bid, record.ask) == (0.0024, 0.0026)


def usdm_ticker_frame() -> str:
    """The futures ticker has no b/B/a/A (§2.6)."""
    payload = {k: v for k, v in sample("ticker.json").items() if k not in ("b", "B", "a", "A")}
    payload["s"] = "BNBUSDT"
    return wrapped("bnbusdt@ticker", payload)


def test_usdm_ticker_takes_bid_ask_from_a_book_ticker_decoded_on_another_session() -> None:
    venue = BinanceUsdm()
    market, public = session(venue), session(venue)
    book = {"e": "bookTicker", "u": 400900217, "E": 1568014460893, "T": 1568014460891,
            **sample("bookTicker.json")}
    assert only(public.decode(wrapped("bnbusdt@bookTicker", book), RECEIVED)) == Ignored()
    record = market_data(market.decode(usdm_ticker_frame(), RECEIVED))
    assert record.exchange == "binance-usdm"
    assert (record.bid, record.ask) == (25.3519, 25.3652)
    assert (record.price, record.high_24h, record.low_24h, record.change_24h) == (
        0.0025, 0.0025, 0.0010, 250.0,
    )


def test_usdm_ticker_before_any_book_ticker_has_no_bid_ask() -> None:
    record = market_data(session(BinanceUsdm()).decode(usdm_ticker_frame(), RECEIVED))
    assert record.bid is None and record.ask is None
    assert record.price == 0.0025


def test_quotes_are_not_shared_between_venue_instances() -> None:
    first, second = BinanceUsdm(), BinanceUsdm()
    session(first).decode(wrapped("bnbusdt@bookTicker", sample("bookTicker.json")), RECEIVED)
    record = market_data(session(second).decode(usdm_ticker_frame(), RECEIVED))
    assert record.bid is None


@pytest.mark.parametrize("op", ["subscribe", "unsubscribe"])
def test_book_ticker_request_forgets_the_cached_quote(op: str) -> None:
    venue = BinanceUsdm()
    public = session(venue)
    public.decode(wrapped("bnbusdt@bookTicker", sample("bookTicker.json")), RECEIVED)
    other = {"s": "ETHUSDT", "b": "1", "B": "3", "a": "2", "A": "4"}
    public.decode(wrapped("ethusdt@bookTicker", other), RECEIVED)
    getattr(session(venue), op)(["bnbusdt@bookTicker"])  # e.g. a reconnected /public session
    assert "BNBUSDT" not in venue.quotes
    assert venue.quotes.get("ETHUSDT", RECEIVED) == (1.0, 2.0)


def test_usdm_ticker_ignores_a_quote_older_than_quote_max_age() -> None:
    venue = BinanceUsdm()
    venue.quote_max_age = 3.0
    public, market = session(venue), session(venue)
    public.decode(wrapped("bnbusdt@bookTicker", sample("bookTicker.json")), RECEIVED)
    fresh = market_data(market.decode(usdm_ticker_frame(), RECEIVED + timedelta(seconds=3)))
    assert (fresh.bid, fresh.ask) == (25.3519, 25.3652)
    # the /public connection is down or backing off: its last quote must not pass for current
    stale = market_data(market.decode(usdm_ticker_frame(), RECEIVED + timedelta(seconds=3.001)))
    assert (stale.bid, stale.ask) == (None, None)


def test_quotes_are_dropped_when_the_connection_that_carried_them_is_lost() -> None:
    venue = BinanceUsdm()
    public, market = session(venue), session(venue)
    public.subscribe(["bnbusdt@bookTicker"])
    public.decode(wrapped("bnbusdt@bookTicker", sample("bookTicker.json")), RECEIVED)
    market.subscribe(["bnbusdt@ticker"])
    market.connection_lost()  # another connection's loss leaves the quote alone
    assert "BNBUSDT" in venue.quotes
    public.connection_lost()
    assert "BNBUSDT" not in venue.quotes
    record = market_data(session(venue).decode(usdm_ticker_frame(), RECEIVED))
    assert (record.bid, record.ask) == (None, None)


def test_mini_ticker_sample_is_an_unhandled_stream() -> None:
    error = decode_error(
        session().decode(wrapped("bnbbtc@miniTicker", sample("miniTicker.json")), RECEIVED)
    )
    assert "unhandled stream" in error.reason and "bnbbtc@miniTicker" in error.reason


@pytest.mark.parametrize(
    "ms", [0, 1, 999, 1000, 1672515782136, 1723161255342, 1999999999999, 4102444799999]
)
def test_timestamps_are_exact_to_the_millisecond(ms: int) -> None:
    payload = {**sample("trade.json"), "T": ms}
    record = market_data(session().decode(wrapped("bnbbtc@trade", payload), RECEIVED))
    assert record.timestamp == at_ms(ms)
    assert record.timestamp.tzinfo is UTC


# ---- recorded traffic -------------------------------------------------------------------------


def test_every_recorded_trade_decodes_to_a_valid_trade() -> None:
    venue = BinanceSpot()
    s = session(venue)
    validator = Validator(frozenset({"BTCUSDT"}))
    trades = book_tickers = 0
    for line, message in recorded(RECORDED_TRADES):
        data = message["data"]
        events = s.decode(line, RECEIVED)
        if message["stream"] == "btcusdt@bookTicker":
            assert events == [Ignored()]
            assert venue.quotes.get("BTCUSDT", RECEIVED) == (float(data["b"]), float(data["a"]))
            book_tickers += 1
            continue
        assert message["stream"] == "btcusdt@trade"
        record = market_data(events)
        assert record.kind == "trade" and record.exchange == "binance" and record.symbol == "BTCUSDT"
        assert record.price == float(data["p"])
        assert record.volume == float(data["q"])
        assert record.trade_id == str(data["t"])
        assert record.side == ("sell" if data["m"] else "buy")
        assert record.timestamp == at_ms(data["T"])
        assert record.received_at is RECEIVED
        # received_at as the trade time, so the clock-skew check does not depend on the date
        assert validator.reason(attrs.evolve(record, received_at=record.timestamp)) is None
        trades += 1
    assert (trades, book_tickers) == (200, 100)


def test_every_recorded_agg_trade_decodes_and_other_streams_are_decode_errors() -> None:
    s = session()
    validator = Validator(frozenset({"BTCUSDT", "ETHUSDT", "DOTUSDT"}))
    trades = unhandled = 0
    for line, message in recorded(RECORDED_AGG_TRADES):
        data = message["data"]
        if not message["stream"].endswith("@aggTrade"):
            error = decode_error(s.decode(line, RECEIVED))
            assert error.reason == f"unhandled stream {message['stream']!r}"
            unhandled += 1
            continue
        record = market_data(s.decode(line, RECEIVED))
        assert record.kind == "trade" and record.symbol == data["s"]
        assert record.price == float(data["p"])
        assert record.volume == float(data["q"])
        assert record.trade_id == str(data["a"])
        assert record.side == ("sell" if data["m"] else "buy")
        assert record.timestamp == at_ms(data["T"])
        assert validator.reason(attrs.evolve(record, received_at=record.timestamp)) is None
        trades += 1
    assert (trades, unhandled) == (280, 10)


# ---- bad input never raises -------------------------------------------------------------------

TRADE = sample("trade.json")


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ("{", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        ("", "malformed JSON"),
        ('{"stream": "x@trade", "data": NaN}', "malformed JSON"),
        ("[1, 2]", "not a JSON object"),
        ("42", "not a JSON object"),
        ('"btcusdt@trade"', "not a JSON object"),
        ("null", "not a JSON object"),
        ('{"e": "trade", "s": "BTCUSDT"}', "not a combined-stream event"),
        ("{}", "not a combined-stream event"),
        ('{"stream": "btcusdt@trade"}', "missing field 'data'"),
        (wrapped("btcusdt@trade", None), "TypeError"),
        (wrapped("btcusdt@trade", [TRADE]), "TypeError"),
        (wrapped("btcusdt@trade", "p"), "TypeError"),
        (json.dumps({"stream": 7, "data": TRADE}), "'stream' is not a string: 7"),
        (wrapped("btcusdt@trade", {k: v for k, v in TRADE.items() if k != "p"}), "'p'"),
        (wrapped("btcusdt@trade", {k: v for k, v in TRADE.items() if k != "T"}), "'T'"),
        (wrapped("btcusdt@trade", {k: v for k, v in TRADE.items() if k != "m"}), "'m'"),
        (wrapped("btcusdt@trade", {**TRADE, "p": "abc"}), "ValueError"),
        (wrapped("btcusdt@trade", {**TRADE, "p": None}), "TypeError"),
        (wrapped("btcusdt@trade", {**TRADE, "q": ["1"]}), "TypeError"),
        (wrapped("btcusdt@trade", {**TRADE, "T": "1672515782136"}), "TypeError"),
        (wrapped("btcusdt@trade", {**TRADE, "T": 10**30}), "bad"),
        (wrapped("btcusdt@trade", {**TRADE, "m": "true"}), "'m' is not a boolean"),
        (wrapped("btcusdt@trade", {**TRADE, "t": "12345"}), "'t' is not an integer"),
        (wrapped("btcusdt@trade", {**TRADE, "s": 5}), "'s' is not a string"),
        (wrapped("btcusdt@aggTrade", TRADE), "'a'"),
        (wrapped("btcusdt@ticker", TRADE), "'c'"),
        (wrapped("btcusdt@bookTicker", {"s": "BTCUSDT", "b": "1"}), "'a'"),
        (wrapped("btcusdt@depth@100ms", {}), "unhandled stream 'btcusdt@depth@100ms'"),
        (wrapped("btcusdt@kline_1m", {}), "unhandled stream"),
        (wrapped("", TRADE), "unhandled stream"),
    ],
)
def test_bad_frame_is_a_decode_error_naming_the_problem(frame: str | bytes, why: str) -> None:
    error = decode_error(session().decode(frame, RECEIVED))
    assert why in error.reason
    assert len(error.frame) <= 203


def test_every_truncation_of_a_frame_is_a_decode_error_never_a_record() -> None:
    line = next(x for x in RECORDED_TRADES.read_text().splitlines() if "@trade" in x)
    assert type(market_data(session().decode(line, RECEIVED))) is MarketData  # whole, it is a trade
    s = session()
    for end in range(len(line)):
        events = s.decode(line[:end], RECEIVED)
        assert len(events) == 1 and type(events[0]) is DecodeError, (end, events)


@pytest.mark.parametrize("stream", ["x@trade", "x@aggTrade", "x@ticker", "x@bookTicker"])
@pytest.mark.parametrize("bad", [None, True, [], {}, "", "x", -1, 2**63 - 1])
def test_any_wrong_field_type_gives_an_event_never_an_exception(stream: str, bad: Any) -> None:
    payload = {**sample("ticker.json"), **sample("trade.json"), "a": 1}
    s = session()
    for key in list(payload):
        frame = orjson.dumps({"stream": stream, "data": {**payload, key: bad}})
        events = s.decode(frame, RECEIVED)
        assert len(events) == 1
        assert isinstance(events[0], DecodeError | MarketData | Ignored)


def test_decode_error_excerpt_is_bounded() -> None:
    frame = wrapped("btcusdt@depth@100ms", {"b": [["1", "2"]] * 1000})
    error = decode_error(session().decode(frame, RECEIVED))
    assert error.frame == frame[:200] + "..."


def test_malformed_reply_fields_do_not_raise() -> None:
    s = session()
    s.subscribe(["a@trade"])
    assert only(s.decode('{"result": null, "id": [1]}', RECEIVED)) == Ignored()
    assert only(s.decode('{"result": null}', RECEIVED)) == Ignored()
    error = only(s.decode('{"code": 2, "msg": "x", "id": {"a": 1}}', RECEIVED))
    assert error == SubscribeRejected(None, (), "code 2: x")


# ---- instruments ------------------------------------------------------------------------------


def test_parse_instruments_keeps_only_trading_symbols() -> None:
    body = {
        "timezone": "UTC",
        "symbols": [
            {"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC"},
            {"symbol": "ETHUSDT", "status": "TRADING"},
            {"symbol": "LUNAUSDT", "status": "BREAK"},
            {"symbol": "OLDUSDT", "status": "HALT"},
            {"symbol": "NEWUSDT"},
        ],
    }
    for venue in (BinanceSpot(), BinanceUsdm()):
        assert venue.parse_instruments(body) == InstrumentPage(frozenset({"BTCUSDT", "ETHUSDT"}))


@pytest.mark.parametrize(
    "body",
    [None, [], "x", {}, {"symbols": None}, {"symbols": {"BTCUSDT": {}}},
     {"symbols": ["BTCUSDT"]}, {"symbols": [{"status": "TRADING"}]},
     {"symbols": [{"symbol": 1, "status": "TRADING"}]}],
)
def test_parse_instruments_rejects_a_malformed_body(body: Any) -> None:
    with pytest.raises(ValueError, match="exchangeInfo"):
        BinanceSpot().parse_instruments(body)


def test_trades_of_one_millisecond_share_its_time_and_the_next_one_gets_its_own() -> None:
    """The last trade time's datetime is reused: each trade still carries its own ``T``."""
    s = session()

    def trade(trade_id: int, ms: Any) -> list[Event]:
        payload = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": trade_id, "p": "1.5", "q": "2",
                   "T": ms, "m": True, "M": True}
        return s.decode(wrapped("btcusdt@trade", payload), RECEIVED)

    first, second = market_data(trade(1, 1723100000123)), market_data(trade(2, 1723100000123))
    third = market_data(trade(3, 1723100000124))
    assert first.timestamp == second.timestamp == at_ms(1723100000123)
    assert third.timestamp == at_ms(1723100000124)
    assert "TypeError" in decode_error(trade(4, "1723100000124")).reason  # a string is still bad
    assert market_data(trade(5, 1723100000124)).timestamp == at_ms(1723100000124)
