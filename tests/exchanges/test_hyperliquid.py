"""The Hyperliquid adapter driven with literal frames: documented samples, recorded traffic, a list
of bad inputs, the instrument list (a POSTed ``info`` request) against the simulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio

from feedd.config import ConfigError, parse_config
from feedd.exchanges import make_venue, venue_ids
from feedd.exchanges.base import (
    DecodeError,
    Event,
    Ignored,
    InstrumentPage,
    Pong,
    PostedInstruments,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
)
from feedd.exchanges.hyperliquid import Hyperliquid, HyperliquidSession, RecentTrades
from feedd.feed.instruments import load_instruments
from feedd.feed.validate import Validator
from feedd.model import MarketData, Message
from feedd.sim.hyperliquid import HyperliquidSimulator
from feedd.sim.rest import HttpRequest, HttpResponse

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hyperliquid"
RECORDED = FIXTURES / "recorded_btc_2025-01-26.ndjson"
RECEIVED = datetime(2025, 1, 26, 19, 14, 10, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the first context of the documented metaAndAssetCtxs answer (numbers as strings, no dayBaseVlm)
CTX = json.loads((FIXTURES / "info_metaAndAssetCtxs_response.json").read_text())[1][0]
TRADE = json.loads((FIXTURES / "trades_recorded_unofficial.json").read_text())
TRADE_ITEM = TRADE["data"][0]
GREETING = "Websocket connection established."


def sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def frame(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def session(venue: Hyperliquid | None = None) -> HyperliquidSession:
    made = (venue or Hyperliquid()).new_session()
    assert isinstance(made, HyperliquidSession)
    return made


def only(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


def market_data(events: list[Event]) -> MarketData:
    event = only(events)
    assert isinstance(event, MarketData), event
    return event


def decode_error(events: list[Event]) -> DecodeError:
    event = only(events)
    assert isinstance(event, DecodeError), event
    assert event.reason
    return event


def requests(frames: list[Message]) -> list[Any]:
    assert all(isinstance(f, str) for f in frames)
    return [orjson.loads(f) for f in frames]


def ack(kind: str, coin: str, method: str = "subscribe") -> str:
    data = {"method": method, "subscription": {"type": kind, "coin": coin}}
    return frame({"channel": "subscriptionResponse", "data": data})


def error(text: str) -> str:
    return frame({"channel": "error", "data": text})


def trades(*items: dict[str, Any]) -> str:
    return frame({"channel": "trades", "data": list(items)})


def trade(tid: int, ms: int = 1737918847000, **fields: Any) -> dict[str, Any]:
    return {**TRADE_ITEM, "tid": tid, "time": ms, **fields}


def context(channel: str = "activeAssetCtx", coin: str = "BTC", **fields: Any) -> str:
    return frame({"channel": channel, "data": {"coin": coin, "ctx": {**CTX, **fields}}})


def bbo(coin: str, bid: str | None, ask: str | None) -> str:
    levels = [None if px is None else {"px": px, "sz": "1.5", "n": 3} for px in (bid, ask)]
    return frame({"channel": "bbo", "data": {"coin": coin, "time": 1737918843542, "bbo": levels}})


def subscribed(s: HyperliquidSession, *topics: str) -> None:
    """Subscribe ``topics`` and acknowledge each, as the venue would."""
    s.subscribe(list(topics))
    for topic in topics:
        kind, _, coin = topic.partition(":")
        assert isinstance(only(s.decode(ack(kind, coin), RECEIVED)), SubscribeAck)


# ---- venue facts ------------------------------------------------------------------------------


def test_the_venue_states_its_protocol_facts() -> None:
    venue = make_venue("hyperliquid")
    assert isinstance(venue, Hyperliquid) and "hyperliquid" in venue_ids()
    assert venue.default_url == "wss://api.hyperliquid.xyz/ws"
    assert venue.default_rest_url == "https://api.hyperliquid.xyz"
    # [rl] per IP: 1000 subscriptions over at most 10 connections, 2000 messages a minute, 30 connects
    assert venue.max_streams_per_connection * 10 == 1000
    assert venue.max_chars_per_connection is None
    assert venue.max_messages_per_second * 60 <= 2000 and venue.message_limit_scope == "address"
    assert venue.connect_limit is not None
    assert (venue.connect_limit.attempts, venue.connect_limit.window) == (30, 60.0)
    # [hb] the server cuts a connection it sent nothing for 60 s: a quiet one is pinged well before
    assert venue.ping_mode == "idle" and venue.ping_interval is not None and venue.ping_interval < 30
    assert venue.pong_timeout == 10.0
    assert venue.uppercase_symbols is False  # coins are case-sensitive (kPEPE)
    assert venue.rotate_after is None
    assert make_venue("hyperliquid") is not make_venue("hyperliquid")


def test_trades_take_one_stream_and_a_ticker_its_context_and_best_bid_offer() -> None:
    venue = Hyperliquid()
    assert venue.topics(Subscription("BTC", "trades")) == [Topic("", "trades:BTC")]
    assert venue.topics(Subscription("@107", "ticker")) == [
        Topic("", "activeAssetCtx:@107"), Topic("", "bbo:@107"),
    ]
    assert venue.url("", "ws://127.0.0.1:9/ws") == "ws://127.0.0.1:9/ws"
    with pytest.raises(ValueError, match="route"):
        venue.url("public", venue.default_url)


@pytest.mark.parametrize("coin", ["BTC", "kPEPE", "PURR/USDC", "@107", "xyz:NVDA"])
def test_every_kind_of_coin_name_streams_as_itself_and_is_accepted_in_a_config(coin: str) -> None:
    assert Hyperliquid().symbol_problem(coin) is None
    config = parse_config({"exchanges": {"hyperliquid": {"symbols": [coin]}}})
    assert config.exchanges["hyperliquid"].symbols == (coin,)  # as written: not upper-cased


@pytest.mark.parametrize("symbol", ["BTC@USDT", "BTC/USDT"])
def test_binance_alone_refuses_its_stream_name_separators(symbol: str) -> None:
    with pytest.raises(ConfigError, match="separate Binance stream names"):
        parse_config({"exchanges": {"binance": {"symbols": [symbol]}}})


# ---- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "topic"),
    [
        ("subscribe_trades_request.json", "trades:SOL"),
        ("subscribe_bbo_request_constructed.json", "bbo:BTC"),
        ("subscribe_activeAssetCtx_request_constructed.json", "activeAssetCtx:BTC"),
    ],
)
def test_a_subscribe_is_the_documented_message(name: str, topic: str) -> None:
    assert requests(session().subscribe([topic])) == [sample(name)]


def test_an_unsubscribe_is_the_documented_message() -> None:
    sent = requests(session().unsubscribe(["trades:SOL"]))
    assert sent == [sample("unsubscribe_trades_request_constructed.json")]


def test_each_topic_is_a_message_of_its_own_best_bid_offer_first() -> None:
    sent = requests(session().subscribe(["trades:BTC", "activeAssetCtx:BTC", "bbo:BTC", "trades:xyz:NVDA"]))
    assert [(m["subscription"]["type"], m["subscription"]["coin"]) for m in sent] == [
        ("bbo", "BTC"), ("trades", "BTC"), ("activeAssetCtx", "BTC"), ("trades", "xyz:NVDA"),
    ]


def test_the_ping_is_the_documented_one_and_its_pong_a_pong() -> None:
    s = session()
    ping = s.ping()
    assert ping is not None and orjson.loads(ping) == sample("ping_request.json")
    assert only(s.decode(frame(sample("pong.json")), RECEIVED)) == Pong()


def test_a_topic_that_is_not_type_and_coin_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="<type>:<coin>"):
        session().subscribe(["BTC"])


# ---- replies ----------------------------------------------------------------------------------


def test_the_documented_ack_names_its_request_and_topic() -> None:
    s = session()
    s.subscribe(["trades:SOL"])
    documented = (FIXTURES / "subscription_response.json").read_text().strip()
    assert only(s.decode(documented, RECEIVED)) == SubscribeAck(1, ("trades:SOL",), "subscribe")
    assert only(s.decode(documented, RECEIVED)) == Ignored()  # acked once


def test_an_unsubscribe_ack_names_its_topic_and_op() -> None:
    s = session()
    s.subscribe(["bbo:BTC"])
    s.unsubscribe(["bbo:BTC"])
    gone = only(s.decode(ack("bbo", "BTC", "unsubscribe"), RECEIVED))
    assert gone == SubscribeAck(2, ("bbo:BTC",), "unsubscribe")
    assert only(s.decode(ack("bbo", "BTC"), RECEIVED)) == SubscribeAck(1, ("bbo:BTC",), "subscribe")


def test_an_ack_of_a_request_never_sent_is_ignored() -> None:
    assert only(session().decode(ack("trades", "ETH"), RECEIVED)) == Ignored()


def test_an_error_quoting_a_subscription_refuses_that_request_alone() -> None:
    s = session()
    s.subscribe(["trades:BTC", "trades:NOPE"])
    # the server writes the subscription in its own field order, with the fields it knows
    text = 'Invalid subscription {"coin":"NOPE","type":"trades"}'
    assert only(s.decode(error(text), RECEIVED)) == SubscribeRejected(2, ("trades:NOPE",), text)
    assert only(s.decode(ack("trades", "BTC"), RECEIVED)) == SubscribeAck(1, ("trades:BTC",), "subscribe")


def test_already_subscribed_and_already_unsubscribed_are_the_wish_granted() -> None:
    s = session()
    s.subscribe(["activeAssetCtx:UNI"])
    held = only(s.decode(error('Already subscribed: {"type":"activeAssetCtx","coin":"UNI"}'), RECEIVED))
    assert held == SubscribeAck(1, ("activeAssetCtx:UNI",), "subscribe")
    s.unsubscribe(["trades:UNI"])
    gone = only(s.decode(error('Already unsubscribed: {"type":"trades","coin":"UNI"}'), RECEIVED))
    assert gone == SubscribeAck(2, ("trades:UNI",), "unsubscribe")


@pytest.mark.parametrize(
    "text",
    [
        "Cannot subscribe to more than 1000 channels.",
        "Cannot send more than 2000 messages per minute.",
        'Invalid subscription {"type":"trades","coin":"ETH"}',  # no such request pending
        "Invalid subscription {not json",
    ],
)
def test_an_error_naming_no_pending_request_is_reported_unattributed(text: str) -> None:
    s = session()
    s.subscribe(["trades:BTC"])
    assert only(s.decode(error(text), RECEIVED)) == SubscribeRejected(None, (), text)


def test_an_error_without_text_is_still_reported() -> None:
    refusal = only(session().decode('{"channel":"error","data":null}', RECEIVED))
    assert isinstance(refusal, SubscribeRejected) and refusal.topics == () and "error" in refusal.reason


@pytest.mark.parametrize("greeting", [GREETING, GREETING.encode()])
def test_the_old_servers_greeting_is_ignored(greeting: str | bytes) -> None:
    assert only(session().decode(greeting, RECEIVED)) == Ignored()


# ---- trades -----------------------------------------------------------------------------------


def test_the_recorded_trade_sample_decodes_with_every_field() -> None:
    record = market_data(session().decode(frame(TRADE), RECEIVED))
    assert record == MarketData(
        "hyperliquid", "BTC", "trade", 105056.0, 0.02222, EPOCH + timedelta(milliseconds=1737918847000),
        RECEIVED, side="buy", trade_id="917211710228416",
    )


@pytest.mark.parametrize(("wire", "taker"), [("B", "buy"), ("A", "sell")])
def test_side_is_the_takers(wire: str, taker: str) -> None:
    assert market_data(session().decode(trades(trade(1, side=wire)), RECEIVED)).side == taker


@pytest.mark.parametrize("ms", [0, 999, 1737918847000, 4102444799999])
def test_trade_times_are_exact_to_the_millisecond(ms: int) -> None:
    record = market_data(session().decode(trades(trade(1, ms)), RECEIVED))
    assert record.timestamp == EPOCH + timedelta(milliseconds=ms)


def test_a_trade_message_is_a_record_per_trade_in_order_and_a_bad_one_stands_alone() -> None:
    events = session().decode(trades(trade(1), {**trade(2), "px": "x"}, trade(3, 1737918848000)), RECEIVED)
    assert [type(e).__name__ for e in events] == ["MarketData", "DecodeError", "MarketData"]
    assert [e.trade_id for e in events if isinstance(e, MarketData)] == ["1", "3"]


def test_a_snapshot_publishes_only_the_trades_no_connection_delivered() -> None:
    venue = Hyperliquid()
    first = session(venue)
    subscribed(first, "trades:BTC")
    assert len(first.decode(trades(trade(1), trade(2)), RECEIVED)) == 2  # the first snapshot: all new
    first.connection_lost()
    second = session(venue)  # the reconnect: its snapshot overlaps what the first delivered
    subscribed(second, "trades:BTC")
    fresh = second.decode(trades(trade(1), trade(2), trade(3)), RECEIVED)
    assert [e.trade_id for e in fresh if isinstance(e, MarketData)] == ["3"]
    # updates are published whatever was seen (a rotation's overlap sorts its copies out)
    assert len(second.decode(trades(trade(2), trade(4)), RECEIVED)) == 2


def test_trades_are_the_same_only_when_time_and_tid_are() -> None:
    venue = Hyperliquid()
    first = session(venue)
    first.decode(trades(trade(7, 1000)), RECEIVED)
    second = session(venue)
    subscribed(second, "trades:BTC")
    assert len(second.decode(trades(trade(7, 1000), trade(7, 2000)), RECEIVED)) == 1


def test_recent_trades_are_bounded_per_coin() -> None:
    recent = RecentTrades(capacity=3)
    assert all(recent.add("BTC", (ms, 1)) for ms in range(5))
    assert recent.count("BTC") == 3 and recent.add("BTC", (0, 1)) and not recent.add("BTC", (4, 1))
    with pytest.raises(ValueError, match="capacity"):
        RecentTrades(capacity=0)


# ---- tickers ----------------------------------------------------------------------------------


def test_the_documented_context_is_a_ticker_with_the_quote_of_the_best_bid_offer() -> None:
    s = session()
    assert only(s.decode(bbo("BTC", "14.31", "14.318"), RECEIVED)) == Ignored()
    record = market_data(s.decode(context(), RECEIVED))
    assert record == MarketData(
        "hyperliquid", "BTC", "ticker", 14.314, 1169046.29406 / 14.314, RECEIVED, RECEIVED,
        bid=14.31, ask=14.318, change_24h=(14.3161 - 15.322) / 15.322 * 100,
        bid_size=1.5, ask_size=1.5,  # the bbo's sizes
    )


def test_a_bbo_of_a_coin_subscribed_to_quotes_is_a_quote_at_its_time() -> None:
    venue = Hyperliquid()
    venue.quotes.streamed.add("BTC")
    [record] = venue.new_session().decode(bbo("BTC", "14.31", "14.318"), RECEIVED)
    assert isinstance(record, MarketData)
    assert (record.kind, record.bid, record.bid_size, record.ask, record.ask_size) == (
        "quote", 14.31, 1.5, 14.318, 1.5)
    assert record.timestamp == datetime.fromtimestamp(1737918843542 / 1000, UTC)
    assert only(venue.new_session().decode(bbo("BTC", None, "14.318"), RECEIVED)) == Ignored()


def test_base_volume_is_taken_as_sent_and_numbers_may_be_json_numbers() -> None:
    record = market_data(session().decode(context(dayBaseVlm=40346.92583, markPx=80454.0, midPx=80459.5,
                                                  prevDayPx=83180.0), RECEIVED))
    assert (record.price, record.volume, record.bid, record.ask) == (80459.5, 40346.92583, None, None)
    assert record.change_24h == pytest.approx(-3.2772, abs=1e-4)


def test_without_a_book_the_price_is_the_mark_and_without_a_previous_day_no_change() -> None:
    record = market_data(session().decode(context(midPx=None, prevDayPx="0.0"), RECEIVED))
    assert (record.price, record.change_24h) == (14.3161, None)


def test_a_spot_context_is_a_ticker_of_its_pair() -> None:
    spot = context("activeSpotAssetCtx", "@107", circulatingSupply="1")
    record = market_data(session().decode(spot, RECEIVED))
    assert (record.symbol, record.kind) == ("@107", "ticker")


def test_a_one_sided_or_stale_or_lost_quote_is_not_attached() -> None:
    venue = Hyperliquid()
    venue.quote_max_age = 5.0
    s = session(venue)
    s.subscribe(["bbo:BTC"])
    s.decode(bbo("BTC", "14.31", "14.318"), RECEIVED)
    later = RECEIVED + timedelta(seconds=6)
    assert market_data(s.decode(context(), later)).bid is None  # stale
    s.decode(bbo("BTC", "14.31", "14.318"), RECEIVED)
    s.decode(bbo("BTC", None, "14.318"), RECEIVED)
    assert market_data(s.decode(context(), RECEIVED)).ask is None  # one-sided
    s.decode(bbo("BTC", "14.31", "14.318"), RECEIVED)
    s.connection_lost()
    assert market_data(session(venue).decode(context(), RECEIVED)).bid is None  # its connection is gone


# ---- recorded traffic -------------------------------------------------------------------------


def test_every_recorded_trade_decodes_with_its_fields_and_passes_validation() -> None:
    s = session()
    validator = Validator(frozenset({"BTC"}))
    pairs: list[tuple[Event, dict[str, Any]]] = []
    for line in RECORDED.read_text().splitlines():
        message = json.loads(line)
        events = s.decode(line, RECEIVED)
        if message["channel"] == "l2Book":  # never subscribed by feedd
            assert "unhandled channel 'l2Book'" in decode_error(events).reason
            continue
        assert len(events) == len(message["data"])
        pairs.extend(zip(events, message["data"], strict=True))
    assert len(pairs) == 64
    for record, sent in pairs:
        assert isinstance(record, MarketData)
        assert (record.symbol, record.trade_id, record.price, record.volume) == (
            "BTC", str(sent["tid"]), float(sent["px"]), float(sent["sz"]),
        )
        assert record.timestamp == EPOCH + timedelta(milliseconds=sent["time"])
        assert validator.reason(attrs.evolve(record, received_at=record.timestamp)) is None
    assert {r.side for r, _ in pairs} == {"buy", "sell"}


def test_recorded_sides_are_the_takers_every_buy_at_the_ask_every_sell_at_the_bid() -> None:
    bid = ask = None
    checked = 0
    for line in RECORDED.read_text().splitlines()[3:]:  # after the first snapshot of past trades
        message = json.loads(line)
        if message["channel"] == "l2Book":
            bid, ask = (float(side[0]["px"]) for side in message["data"]["levels"])
            continue
        assert bid is not None and ask is not None
        for sent in message["data"]:
            price = float(sent["px"])
            assert price >= ask if sent["side"] == "B" else price <= bid, sent
            checked += 1
    assert checked == 34


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        ("", "malformed JSON"),
        ("Websocket connection", "malformed JSON"),
        ("[1]", "not a JSON object"),
        ("{}", "no 'channel' string"),
        ('{"channel": 7}', "no 'channel' string"),
        ('{"channel": "l2Book", "data": {}}', "unhandled channel 'l2Book'"),
        ('{"channel": "allMids", "data": {"mids": {}}}', "unhandled channel 'allMids'"),
        ('{"channel": "trades"}', "missing field 'data'"),
        (frame({"channel": "trades", "data": TRADE_ITEM}), "'data' is not a list"),
        (trades(None), "bad trade"),  # type: ignore[arg-type]
        (trades({k: v for k, v in TRADE_ITEM.items() if k != "px"}), "missing field 'px'"),
        (trades({k: v for k, v in TRADE_ITEM.items() if k != "tid"}), "missing field 'tid'"),
        (trades(trade(1, side="buy")), "'side' is not B or A"),
        (trades(trade(1, side=["B"])), "TypeError"),
        (trades(trade(1, px="abc")), "ValueError"),
        (trades(trade(1, px=True)), "'px' is not a number"),
        (trades(trade(1, sz=None)), "'sz' is not a number"),
        (trades(trade(1, ms="1737918847000")), "'time' or 'tid' is not an integer"),  # type: ignore[arg-type]
        (trades(trade(1.5)), "'time' or 'tid' is not an integer"),  # type: ignore[arg-type]
        (trades(trade(1, 2**62)), "bad trade"),
        (trades(trade(1, coin=5)), "'coin' is not a string"),
        ('{"channel": "bbo", "data": {"coin": "BTC", "bbo": []}}', "ValueError"),
        ('{"channel": "bbo", "data": {"coin": "BTC"}}', "missing field 'bbo'"),
        (bbo("BTC", "1", "2").replace('"px":"1",', ""), "missing field 'px'"),
        (bbo("BTC", "NaN", "2"), "'px' is not finite"),
        ('{"channel": "bbo", "data": {"coin": "BTC", "bbo": [{"px": "x"}, {"px": "1"}]}}', "ValueError"),
        ('{"channel": "bbo", "data": []}', "bad 'bbo' message"),
        ('{"channel": "activeAssetCtx", "data": {"coin": "BTC", "ctx": []}}', "'ctx' is not an object"),
        ('{"channel": "activeAssetCtx", "data": {"coin": "BTC"}}', "missing field 'ctx'"),
        (context(markPx=None), "'markPx' is not a number"),
        (context(markPx="x"), "ValueError"),
        (context(midPx=False), "'midPx' is not a number"),
        (context(dayNtlVlm=[]), "'dayNtlVlm' is not a number"),
        (context(prevDayPx="1e99999"), "'prevDayPx' is not finite"),
        ('{"channel": "activeAssetCtx", "data": {"coin": "BTC", "ctx": {"markPx": NaN}}}', "malformed JSON"),
        ('{"channel": "activeAssetCtx", "data": {"coin": "BTC", "ctx": {"markPx": "1"}}}', "missing field"),
        ('{"channel": "subscriptionResponse"}', "subscriptionResponse without"),
        ('{"channel": "subscriptionResponse", "data": {"method": "subscribe"}}', "without a method"),
        (ack("trades", "BTC", "post"), "subscriptionResponse without"),
    ],
)
def test_bad_frame_is_a_decode_error_naming_the_problem(raw: str | bytes, why: str) -> None:
    found = decode_error(session().decode(raw, RECEIVED))
    assert why in found.reason
    assert len(found.frame) <= 203


def test_every_truncation_of_a_frame_decodes_without_raising() -> None:
    s = session()
    for line in (frame(TRADE), context(), bbo("BTC", "1", "2"), ack("trades", "BTC")):
        for end in range(len(line)):
            events = s.decode(line[:end], RECEIVED)
            assert all(isinstance(e, DecodeError | MarketData) for e in events)


@pytest.mark.parametrize("bad", [None, True, [], {}, "", "x", -1, 2**63 - 1, 1.5, float("nan")])
def test_any_wrong_field_type_gives_events_never_an_exception(bad: Any) -> None:
    s = session()
    subscribed(s, "trades:BTC")
    messages = [TRADE, *(orjson.loads(f) for f in (context(), bbo("BTC", "1", "2"), ack("bbo", "X")))]
    for message in messages:
        for key in message:
            s.decode(frame({**message, key: bad}), RECEIVED)
        inner = message["data"][0] if isinstance(message["data"], list) else message["data"]
        for key in inner:
            data = [{**inner, key: bad}] if isinstance(message["data"], list) else {**inner, key: bad}
            events = s.decode(frame({**message, "data": data}), RECEIVED)
            assert all(isinstance(e, DecodeError | MarketData | Ignored | SubscribeAck) for e in events)
    for key in CTX:
        events = s.decode(context(**{key: bad}), RECEIVED)
        assert all(isinstance(e, DecodeError | MarketData) for e in events)
    events = s.decode(frame({"channel": "error", "data": bad}), RECEIVED)
    assert all(isinstance(e, SubscribeRejected) for e in events)


def test_decode_error_excerpt_is_bounded() -> None:
    raw = frame({"channel": "l2Book", "data": {"levels": [[{"px": "1", "sz": "2", "n": 1}] * 1000] * 2}})
    assert decode_error(session().decode(raw, RECEIVED)).frame == raw[:200] + "..."


# ---- instruments ------------------------------------------------------------------------------


def test_the_instrument_list_is_two_posted_info_requests() -> None:
    venue = Hyperliquid()
    assert isinstance(venue, PostedInstruments)
    assert venue.instruments_path() == venue.instruments_path("spotMeta") == "/info"
    assert venue.instruments_body() == sample("info_meta_request_constructed.json")
    assert venue.instruments_body("spotMeta") == sample("info_spotMeta_request_constructed.json")
    with pytest.raises(ValueError, match="no instrument page"):
        venue.instruments_body("perpDexs")


def test_the_documented_meta_lists_the_perpetuals_not_delisted_then_asks_for_spot() -> None:
    page = Hyperliquid().parse_instruments(sample("info_meta_response.json"))
    assert page == InstrumentPage(frozenset({"BTC", "ETH", "HPOS"}), "spotMeta")  # LOOM is delisted


def test_spot_meta_lists_its_pairs_by_the_names_they_stream_as_and_is_the_last_page() -> None:
    body = {
        "tokens": [{"name": "USDC", "index": 0}, {"name": "PURR", "index": 1}, {"name": "HYPE", "index": 15}],
        "universe": [
            {"name": "PURR/USDC", "tokens": [1, 0], "index": 0, "isCanonical": True},
            {"name": "@107", "tokens": [15, 0], "index": 107, "isCanonical": False},
        ],
    }
    assert Hyperliquid().parse_instruments(body) == InstrumentPage(frozenset({"PURR/USDC", "@107"}))


@pytest.mark.parametrize(
    "body",
    [None, [], {"universe": {}}, {"marginTables": []}, {"universe": [{"szDecimals": 5}]},
     {"universe": [{"name": 7}]}, {"universe": ["BTC"]}],
)
def test_a_malformed_info_answer_is_a_value_error(body: Any) -> None:
    with pytest.raises(ValueError, match=r"universe|info answer"):
        Hyperliquid().parse_instruments(body)


class InfoLog(HyperliquidSimulator):
    """The simulator, keeping the body of every REST request."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bodies: list[Any] = []

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        self.bodies.append((request.method, request.path, orjson.loads(request.body)))
        return super()._answer_rest(request)


async def test_the_instrument_list_is_posted_page_by_page_and_cached(tmp_path: Path) -> None:
    sim = InfoLog(perps=("BTC", "ETH"), spot=("PURR/USDC", "@107"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        fetched = await load_instruments(Hyperliquid(), sim.rest_url, str(tmp_path))
        sim.rest_fail(True)
        cached = await load_instruments(Hyperliquid(), sim.rest_url, str(tmp_path))
        nursery.cancel_scope.cancel()
    expected = frozenset({"BTC", "ETH", "PURR/USDC", "@107"})
    assert (fetched.symbols, fetched.source) == (expected, "rest")
    assert (cached.symbols, cached.source) == (expected, "cache")
    assert sim.bodies[:2] == [("POST", "/info", {"type": "meta"}), ("POST", "/info", {"type": "spotMeta"})]
