"""The Coinbase Exchange adapter driven with literal frames: documented samples, recorded traffic
and bad input; gaps counted by trade id; the product list."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest

from feedd.exchanges import make_venue, venue_ids
from feedd.exchanges.base import (
    ConnectLimit,
    DecodeError,
    Event,
    Heartbeat,
    Ignored,
    InstrumentPage,
    Retry,
    SequenceGap,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
)
from feedd.exchanges.coinbase_exchange import (
    MAX_TOPICS_PER_REQUEST,
    CoinbaseExchange,
    CoinbaseExchangeSession,
    split_topic,
)
from feedd.feed.validate import Validator
from feedd.model import MarketData, Message

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "coinbase_exchange"
RECORDED = FIXTURES / "recorded_exchange_feed_2021-04-17.ndjson"
RECEIVED = datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=UTC)
EVENT_TYPES = (
    MarketData, SubscribeAck, SubscribeRejected, Retry, Heartbeat, SequenceGap, Ignored, DecodeError
)


def sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def frame(obj: Any) -> str:
    return json.dumps(obj)


def session(*topics: str) -> CoinbaseExchangeSession:
    made = CoinbaseExchange().new_session()
    assert isinstance(made, CoinbaseExchangeSession)
    if topics:
        made.subscribe(list(topics))
    return made


def requests(frames: list[Message]) -> list[Any]:
    assert all(isinstance(f, str) for f in frames)  # text frames
    return [orjson.loads(f) for f in frames]


def of_type(events: list[Event], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def records(events: list[Event]) -> list[MarketData]:
    return of_type(events, MarketData)


def only(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


def match(trade_id: int, product: str = "BTC-USD", sequence: int = 50, side: str = "sell",
          kind: str = "match") -> str:
    return frame({**sample("match.json"), "type": kind, "trade_id": trade_id, "product_id": product,
                  "sequence": sequence, "side": side})


def heartbeat(last_trade_id: int, sequence: int, product: str = "BTC-USD") -> str:
    return frame({**sample("heartbeat.json"), "last_trade_id": last_trade_id, "sequence": sequence,
                  "product_id": product})


def listing(**channels: list[str]) -> str:
    return frame({"type": "subscriptions",
                  "channels": [{"name": name, "product_ids": ids} for name, ids in channels.items()]})


def error(message: str = "Failed to subscribe", reason: str | None = None) -> str:
    body = {"type": "error", "message": message}
    return frame(body if reason is None else {**body, "reason": reason})


# ---- venue facts ------------------------------------------------------------------------------


def test_venue_states_its_protocol_facts() -> None:
    venue = CoinbaseExchange()
    assert venue.venue_id == "coinbase-exchange"
    assert venue.default_url == "wss://ws-feed.exchange.coinbase.com"
    assert venue.default_rest_url == "https://api.exchange.coinbase.com"
    assert venue.instruments_path() == "/products"
    # the websocket rate-limits page: 100 client messages and 8 connection requests a second per IP
    assert (venue.max_messages_per_second, venue.message_limit_scope) == (100, "address")
    assert venue.connect_limit == ConnectLimit(8, 1.0)
    assert venue.ping_interval is None and venue.pong_timeout is None  # the heartbeat channel instead
    assert venue.rotate_after is None and venue.uppercase_symbols
    assert venue.max_streams_per_connection == 200 and venue.max_chars_per_connection is None


def test_registry_discovers_coinbase_exchange() -> None:
    assert "coinbase-exchange" in venue_ids()
    assert isinstance(make_venue("coinbase-exchange"), CoinbaseExchange)


def test_topics_name_channel_and_product_on_the_only_route() -> None:
    venue = CoinbaseExchange()
    assert venue.topics(Subscription("BTC-USD", "trades")) == [Topic("", "matches:BTC-USD")]
    assert venue.topics(Subscription("BTC-USD", "ticker")) == [Topic("", "ticker:BTC-USD")]
    assert venue.url("", "wss://example.test") == "wss://example.test"
    with pytest.raises(ValueError, match="only the default route"):
        venue.url("public", "wss://example.test")
    assert venue.symbol_problem("BTC-USDC") is None


@pytest.mark.parametrize("topic", ["BTC-USD", ":BTC-USD", "ticker:", ""])
def test_a_malformed_topic_is_refused(topic: str) -> None:
    with pytest.raises(ValueError, match="not a coinbase-exchange topic"):
        split_topic(topic)


# ---- requests ---------------------------------------------------------------------------------


def test_subscribe_is_one_request_naming_each_channel_with_its_products_and_their_heartbeat() -> None:
    [sent] = requests(session().subscribe(["matches:ETH-USD", "ticker:ETH-USD", "ticker:ETH-EUR"]))
    assert sent == {"type": "subscribe", "channels": [
        {"name": "matches", "product_ids": ["ETH-USD"]},
        {"name": "ticker", "product_ids": ["ETH-USD", "ETH-EUR"]},
        {"name": "heartbeat", "product_ids": ["ETH-USD", "ETH-EUR"]},
    ]}
    # the documented channel object, {"name", "product_ids"}, as the heartbeat sample sends it
    documented = sample("heartbeat_subscribe_request.json")
    assert set(sent) == set(documented) and set(sent["channels"][2]) == set(documented["channels"][0])


def test_a_products_heartbeat_is_asked_once_per_connection() -> None:
    s = session("matches:BTC-USD")
    [sent] = requests(s.subscribe(["ticker:BTC-USD", "ticker:ETH-USD"]))
    assert sent["channels"][-1] == {"name": "heartbeat", "product_ids": ["ETH-USD"]}
    [again] = requests(s.subscribe(["matches:ETH-USD"]))
    assert [c["name"] for c in again["channels"]] == ["matches"]
    assert requests(session().subscribe([])) == []


def test_requests_are_batched_to_the_per_request_bound() -> None:
    topics = [f"{c}:P{i}-USD" for i in range(MAX_TOPICS_PER_REQUEST) for c in ("matches", "ticker")]
    sent = requests(session().subscribe(topics))
    assert len(sent) == 2
    for request in sent:
        named = [p for c in request["channels"] if c["name"] != "heartbeat" for p in c["product_ids"]]
        assert len(named) == MAX_TOPICS_PER_REQUEST


def test_unsubscribe_drops_a_products_heartbeat_with_its_last_topic() -> None:
    s = session("matches:BTC-USD", "ticker:BTC-USD")
    [first] = requests(s.unsubscribe(["ticker:BTC-USD"]))
    assert first == {"type": "unsubscribe", "channels": [{"name": "ticker", "product_ids": ["BTC-USD"]}]}
    [last] = requests(s.unsubscribe(["matches:BTC-USD"]))
    assert last["channels"] == [{"name": "matches", "product_ids": ["BTC-USD"]},
                                {"name": "heartbeat", "product_ids": ["BTC-USD"]}]
    # the documented unsubscribe names channels the same way
    assert set(sample("unsubscribe_request.json")) == set(last)
    [back] = requests(s.subscribe(["ticker:BTC-USD"]))
    assert back["channels"][-1] == {"name": "heartbeat", "product_ids": ["BTC-USD"]}


def test_there_is_no_client_ping() -> None:
    assert session().ping() is None


# ---- replies ----------------------------------------------------------------------------------


def test_the_documented_subscriptions_reply_acks_the_topics_it_lists() -> None:
    s = session("ticker:ETH-USD", "ticker:ETH-EUR", "ticker:ETH-BTC")
    events = s.decode(json.dumps(sample("subscriptions.json")), RECEIVED)
    assert events == [SubscribeAck(1, ("ticker:ETH-USD", "ticker:ETH-EUR", "ticker:ETH-BTC"), "subscribe")]


def test_a_topic_missing_from_the_reply_is_refused_by_name() -> None:
    s = session("matches:BTC-USD", "matches:ETH-USD")
    events = s.decode(listing(matches=["BTC-USD"], heartbeat=["BTC-USD", "ETH-USD"]), RECEIVED)
    assert events == [SubscribeAck(1, ("matches:BTC-USD",), "subscribe"),
                      SubscribeRejected(1, ("matches:ETH-USD",), "not in the subscriptions reply")]


def test_a_heartbeat_missing_from_the_reply_is_asked_again_with_the_next_request() -> None:
    s = session("matches:BTC-USD")
    acked = SubscribeAck(1, ("matches:BTC-USD",), "subscribe")
    assert s.decode(listing(matches=["BTC-USD"]), RECEIVED) == [acked]
    [sent] = requests(s.subscribe(["ticker:BTC-USD"]))
    assert sent["channels"][-1] == {"name": "heartbeat", "product_ids": ["BTC-USD"]}


def test_a_later_request_already_in_a_reply_is_acked_at_once() -> None:
    s = session("matches:BTC-USD")
    s.subscribe(["ticker:BTC-USD"])
    events = s.decode(listing(matches=["BTC-USD"], ticker=["BTC-USD"], heartbeat=["BTC-USD"]), RECEIVED)
    assert events == [SubscribeAck(1, ("matches:BTC-USD",), "subscribe"),
                      SubscribeAck(2, ("ticker:BTC-USD",), "subscribe")]
    assert s.decode(listing(matches=["BTC-USD"], ticker=["BTC-USD"]), RECEIVED) == [Ignored()]


def test_unsubscribe_is_acked_when_the_reply_no_longer_lists_the_topic() -> None:
    s = session("matches:BTC-USD", "ticker:BTC-USD")
    s.decode(listing(matches=["BTC-USD"], ticker=["BTC-USD"], heartbeat=["BTC-USD"]), RECEIVED)
    s.unsubscribe(["ticker:BTC-USD", "matches:BTC-USD"])
    assert s.decode(listing(matches=["BTC-USD"]), RECEIVED) == [
        SubscribeAck(2, ("ticker:BTC-USD",), "unsubscribe"),
        SubscribeRejected(2, ("matches:BTC-USD",), "still in the subscriptions reply after unsubscribe"),
    ]


def test_an_error_refuses_the_product_it_names_and_asks_for_the_rest_again_with_heartbeats() -> None:
    s = session("matches:BTC-USD", "matches:BAD-USD", "ticker:BTC-USD")
    events = s.decode(error(reason="BAD-USD is not a valid product"), RECEIVED)
    reason = "Failed to subscribe: BAD-USD is not a valid product"
    assert events == [SubscribeRejected(1, ("matches:BAD-USD",), reason),
                      Retry("subscribe", ("matches:BTC-USD", "ticker:BTC-USD"), reason)]
    # nothing of the refused request was taken: the retry asks BTC-USD's heartbeat again
    [again] = requests(s.subscribe(["matches:BTC-USD", "ticker:BTC-USD"]))
    assert again["channels"][-1] == {"name": "heartbeat", "product_ids": ["BTC-USD"]}


def test_an_error_naming_none_of_its_products_refuses_the_whole_request() -> None:
    s = session("matches:BTC-USD", "ticker:ETH-USD")
    events = s.decode(error(reason="No channels provided"), RECEIVED)
    assert events == [SubscribeRejected(1, ("matches:BTC-USD", "ticker:ETH-USD"),
                                        "Failed to subscribe: No channels provided")]


def test_an_error_answering_an_unsubscribe_refuses_its_named_product_and_retries_the_rest() -> None:
    s = session("matches:BTC-USD", "matches:ETH-USD")
    s.decode(listing(matches=["BTC-USD", "ETH-USD"]), RECEIVED)
    s.unsubscribe(["matches:BTC-USD", "matches:ETH-USD"])
    events = s.decode(error("Failed to unsubscribe", "ETH-USD is not a valid product"), RECEIVED)
    reason = "Failed to unsubscribe: ETH-USD is not a valid product"
    assert events == [SubscribeRejected(2, ("matches:ETH-USD",), reason),
                      Retry("unsubscribe", ("matches:BTC-USD",), reason)]


def test_the_documented_error_with_no_request_pending_is_unattributed_with_its_text() -> None:
    events = session().decode(json.dumps(sample("error.json")), RECEIVED)
    assert events == [SubscribeRejected(None, (), "error message")]
    assert session().decode('{"type": "error"}', RECEIVED) == [
        SubscribeRejected(None, (), "error without a message")
    ]


def test_an_error_not_about_subscribing_settles_no_request() -> None:
    s = session("matches:BTC-USD")
    assert s.decode(error("ErrSlowConsume"), RECEIVED) == [SubscribeRejected(None, (), "ErrSlowConsume")]
    # the request still waits for its own answer
    acked = SubscribeAck(1, ("matches:BTC-USD",), "subscribe")
    assert s.decode(listing(matches=["BTC-USD"]), RECEIVED) == [acked]


# ---- market data ------------------------------------------------------------------------------


def test_the_documented_match_is_a_trade_with_the_taker_side_and_the_exchange_time() -> None:
    s = session("matches:BTC-USD")
    record = only(s.decode(json.dumps(sample("match.json")), RECEIVED))
    assert record == MarketData(
        "coinbase-exchange", "BTC-USD", "trade", 400.23, 5.23512,
        datetime(2014, 11, 7, 8, 19, 27, 28459, tzinfo=UTC), RECEIVED, side="buy", trade_id="10",
    )


@pytest.mark.parametrize(("maker", "taker"), [("buy", "sell"), ("sell", "buy")])
def test_the_record_side_is_the_opposite_of_the_maker_side_coinbase_sends(maker: str, taker: str) -> None:
    [record] = records(session("matches:BTC-USD").decode(match(10, side=maker), RECEIVED))
    assert record.side == taker


def test_the_recorded_last_match_is_not_published_but_starts_the_count() -> None:
    s = session("matches:BAND-GBP")
    last = sample("last_match_recorded.json")
    assert s.decode(json.dumps(last), RECEIVED) == [Ignored()]
    following = frame({**last, "type": "match", "trade_id": last["trade_id"] + 2,
                       "sequence": last["sequence"] + 9})
    events = s.decode(following, RECEIVED)
    assert events[0] == SequenceGap(1, "BAND-GBP trade_id 881615 after 881613")
    assert [r.trade_id for r in records(events)] == ["881615"]


def test_the_documented_ticker_carries_price_volume_range_quote_time_and_percent_change() -> None:
    s = session("ticker:ETH-USD")
    record = only(s.decode(json.dumps(sample("ticker.json")), RECEIVED))
    assert isinstance(record, MarketData)
    assert (record.exchange, record.symbol, record.kind) == ("coinbase-exchange", "ETH-USD", "ticker")
    assert (record.price, record.volume) == (1285.22, 245532.79269678)
    assert (record.bid, record.ask, record.high_24h, record.low_24h) == (1285.04, 1285.27, 1313.8, 1280.52)
    assert record.change_24h == pytest.approx((1285.22 - 1310.79) / 1310.79 * 100)
    assert record.timestamp == datetime(2022, 10, 19, 23, 28, 22, 61769, tzinfo=UTC)
    assert (record.side, record.trade_id) == (None, None)


def test_a_ticker_without_open_or_quote_has_none_and_an_older_one_is_dropped() -> None:
    s = session("ticker:ETH-USD")
    bare = {k: v for k, v in sample("ticker.json").items() if k not in ("open_24h", "best_bid", "best_ask")}
    [record] = records(s.decode(frame(bare), RECEIVED))
    assert (record.change_24h, record.bid, record.ask) == (None, None, None)
    older = {**sample("ticker.json"), "sequence": bare["sequence"] - 1}
    assert s.decode(frame(older), RECEIVED) == [Ignored()]
    assert records(s.decode(frame({**older, "sequence": bare["sequence"] + 1}), RECEIVED))


def test_the_documented_heartbeat_is_a_heartbeat() -> None:
    assert session().decode(json.dumps(sample("heartbeat.json")), RECEIVED) == [Heartbeat()]


@pytest.mark.parametrize("name", ["l2update.json", "level2_snapshot.json"])
def test_channels_feedd_does_not_subscribe_are_ignored(name: str) -> None:
    assert session().decode(json.dumps(sample(name)), RECEIVED) == [Ignored()]


@pytest.mark.parametrize("kind", ["status", "ticker_batch", "received", "a_type_added_later"])
def test_unknown_and_unsubscribed_types_are_ignored_as_coinbase_asks(kind: str) -> None:
    assert session().decode(frame({"type": kind, "product_id": 1}), RECEIVED) == [Ignored()]


# ---- gaps ----------------------------------------------------------------------------------------


def test_a_trade_id_jump_is_a_gap_counting_the_trades_missed_before_the_trade() -> None:
    s = session("matches:BTC-USD")
    s.decode(match(10, kind="last_match"), RECEIVED)
    assert len(records(s.decode(match(11, sequence=53), RECEIVED))) == 1  # sequence jumps are no loss
    events = s.decode(match(15, sequence=60), RECEIVED)
    assert events[0] == SequenceGap(3, "BTC-USD trade_id 15 after 11")
    assert [r.trade_id for r in records(events)] == ["15"]


def test_a_repeated_or_late_trade_is_not_published_again() -> None:
    s = session("matches:BTC-USD")
    s.decode(match(10), RECEIVED)
    assert s.decode(match(10), RECEIVED) == [Ignored()]
    assert s.decode(match(9), RECEIVED) == [Ignored()]


def test_products_are_counted_apart() -> None:
    s = session("matches:BTC-USD", "matches:ETH-USD")
    s.decode(match(10), RECEIVED)
    events = s.decode(match(500, product="ETH-USD"), RECEIVED)
    assert not of_type(events, SequenceGap) and records(events)
    assert not of_type(s.decode(match(11), RECEIVED), SequenceGap)


def test_a_heartbeat_past_the_last_match_tells_of_trades_missed() -> None:
    s = session("matches:BTC-USD")
    s.decode(match(10, sequence=50), RECEIVED)
    assert s.decode(heartbeat(10, 55), RECEIVED) == [Heartbeat()]
    events = s.decode(heartbeat(13, 90), RECEIVED)
    assert events == [Heartbeat(), SequenceGap(3, "BTC-USD heartbeat last_trade_id 13, last match 10")]
    # counted once: the next match follows on from the heartbeat's count
    assert not of_type(s.decode(match(14, sequence=95), RECEIVED), SequenceGap)


def test_a_heartbeat_older_than_the_last_match_says_nothing_of_gaps() -> None:
    s = session("matches:BTC-USD")
    s.decode(match(10, sequence=50), RECEIVED)
    assert s.decode(heartbeat(12, 49), RECEIVED) == [Heartbeat()]


def test_heartbeats_count_nothing_where_the_connection_takes_no_matches() -> None:
    s = session("ticker:BTC-USD")
    s.decode(match(10), RECEIVED)  # in flight past an unsubscribe, or another connection's
    assert s.decode(heartbeat(20, 90), RECEIVED) == [Heartbeat()]
    t = session("matches:BTC-USD")
    t.decode(match(10), RECEIVED)
    t.unsubscribe(["matches:BTC-USD"])
    assert t.decode(heartbeat(20, 90), RECEIVED) == [Heartbeat()]


def test_a_new_connection_counts_from_its_own_last_match() -> None:
    venue = CoinbaseExchange()
    first, second = venue.new_session(), venue.new_session()
    for s in (first, second):
        s.subscribe(["matches:BTC-USD"])
    first.decode(match(10), RECEIVED)
    first.connection_lost()
    assert second.decode(match(40, kind="last_match"), RECEIVED) == [Ignored()]
    assert not of_type(second.decode(match(41), RECEIVED), SequenceGap)


# ---- recorded traffic --------------------------------------------------------------------------


def recorded() -> list[tuple[str, dict[str, Any]]]:
    return [(line, json.loads(line)) for line in RECORDED.read_text().splitlines()]


def test_every_recorded_frame_decodes_to_its_record_with_no_gap() -> None:
    lines = recorded()
    products = lines[0][1]["channels"][0]["product_ids"]
    s = session(*(f"ticker:{p}" for p in products))
    s.subscribe([f"matches:{p}" for p in products])
    validator = Validator(frozenset(products))
    events = [(msg, s.decode(line, RECEIVED)) for line, msg in lines[1:]]  # the 1st answers level2
    flat = [e for _, each in events for e in each]
    assert not of_type(flat, DecodeError) and not of_type(flat, SequenceGap)
    assert not of_type(flat, SubscribeRejected)
    assert [a.topics for a in of_type(flat, SubscribeAck)] == [
        tuple(f"ticker:{p}" for p in products), tuple(f"matches:{p}" for p in products)
    ]
    counts = {kind: sum(1 for msg, _ in events if msg["type"] == kind) for kind in ("match", "ticker")}
    trades = [r for r in records(flat) if r.kind == "trade"]
    tickers = [r for r in records(flat) if r.kind == "ticker"]
    assert (len(trades), len(tickers), counts) == (97, 107, {"match": 97, "ticker": 107})
    for msg, each in events:
        if msg["type"] in ("last_match", "l2update"):
            assert each == [Ignored()]
        elif msg["type"] == "match":
            [record] = each
            assert (record.symbol, record.trade_id) == (msg["product_id"], str(msg["trade_id"]))
            assert (record.price, record.volume) == (float(msg["price"]), float(msg["size"]))
            assert record.timestamp == datetime.fromisoformat(msg["time"])
            assert validator.reason(attrs.evolve(record, received_at=record.timestamp)) is None
        elif msg["type"] == "ticker":
            [record] = each
            assert (record.bid, record.ask) == (float(msg["best_bid"]), float(msg["best_ask"]))
            opened = float(msg["open_24h"])
            assert record.change_24h == pytest.approx((float(msg["price"]) - opened) / opened * 100)
            assert validator.reason(attrs.evolve(record, received_at=record.timestamp)) is None


def test_the_recorded_tickers_side_the_takers_is_the_trades_record_side() -> None:
    # a ticker and the match of the same trade share its trade_id: the ticker's side is the taker's
    # (Coinbase's), the match's the maker's; the record's side must be the ticker's
    s = session()
    lines = recorded()
    products = lines[0][1]["channels"][0]["product_ids"]
    s.subscribe([f"matches:{p}" for p in products])
    sides = {(r.symbol, r.trade_id): r.side for line, _ in lines for r in records(s.decode(line, RECEIVED))}
    tickers = {(m["product_id"], str(m["trade_id"])): m["side"] for _, m in lines if m["type"] == "ticker"}
    checked = [key for key in tickers if key in sides]
    assert len(checked) > 80
    assert all(sides[key] == tickers[key] for key in checked)


def test_the_recorded_sequence_jumps_between_trades_are_no_gap() -> None:
    matches = [m for _, m in recorded() if m["type"] in ("match", "last_match")]
    by_product = {p: [m for m in matches if m["product_id"] == p] for p in {m["product_id"] for m in matches}}
    jumps = [b["sequence"] - a["sequence"] for ms in by_product.values() for a, b in itertools.pairwise(ms)]
    assert max(jumps) > 100 and all(
        b["trade_id"] == a["trade_id"] + 1 for ms in by_product.values() for a, b in itertools.pairwise(ms)
    )


# ---- bad input ------------------------------------------------------------------------------------

MATCH = sample("match.json")
TICKER = sample("ticker.json")
HEARTBEAT = sample("heartbeat.json")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        ("", "malformed JSON"),
        ("[1, 2]", "not a JSON object"),
        ("null", "not a JSON object"),
        ("{}", "without a 'type' string"),
        ('{"type": 7}', "without a 'type' string"),
        (frame({k: v for k, v in MATCH.items() if k != "price"}), "missing field 'price'"),
        (frame({k: v for k, v in MATCH.items() if k != "trade_id"}), "missing field 'trade_id'"),
        (frame({**MATCH, "trade_id": "x1"}), "'trade_id' is not an integer"),
        (frame({**MATCH, "trade_id": True}), "'trade_id' is not an integer"),
        (frame({**MATCH, "trade_id": 1.5}), "'trade_id' is not an integer"),
        (frame({**MATCH, "side": "BUY"}), "'side' is not buy or sell"),
        (frame({**MATCH, "side": None}), "'side' is not buy or sell"),
        (frame({**MATCH, "side": []}), "TypeError"),
        (frame({**MATCH, "price": "abc"}), "ValueError"),
        (frame({**MATCH, "size": None}), "TypeError"),
        (frame({**MATCH, "time": "2014-11-07T08:19:27"}), "not an RFC 3339"),
        (frame({**MATCH, "time": 1415348367}), "not a string"),
        (frame({**MATCH, "product_id": 5}), "'product_id' is not a string"),
        (frame({**MATCH, "sequence": "n/a"}), "'sequence' is not an integer"),
        (frame({**MATCH, "type": "last_match", "trade_id": None}), "'trade_id' is not an integer"),
        (frame({k: v for k, v in TICKER.items() if k != "price"}), "bad 'ticker' message: missing field"),
        (frame({k: v for k, v in TICKER.items() if k != "time"}), "missing field 'time'"),
        (frame({**TICKER, "volume_24h": "n/a"}), "ValueError"),
        (frame({**TICKER, "best_bid": []}), "TypeError"),
        (frame({**TICKER, "open_24h": "x"}), "ValueError"),
        (frame({**TICKER, "sequence": -1.5}), "'sequence' is not an integer"),
        (frame({k: v for k, v in HEARTBEAT.items() if k != "last_trade_id"}), "field 'last_trade_id'"),
        (frame({**HEARTBEAT, "sequence": None}), "'sequence' is not an integer"),
        ('{"type": "subscriptions"}', "missing field 'channels'"),
        ('{"type": "subscriptions", "channels": {}}', "'channels' is not a list"),
        ('{"type": "subscriptions", "channels": [{"name": "ticker"}]}', "missing field 'product_ids'"),
        ('{"type": "subscriptions", "channels": [{"name": "x", "product_ids": "BTC-USD"}]}', "not a list"),
        ('{"type": "subscriptions", "channels": [7]}', "TypeError"),
    ],
)
def test_bad_frame_is_a_decode_error_naming_the_problem(raw: str | bytes, why: str) -> None:
    s = session("matches:BTC-USD", "ticker:ETH-USD")
    error = only(s.decode(raw, RECEIVED))
    assert isinstance(error, DecodeError), error
    assert why in error.reason
    assert len(error.frame) <= 203


def test_every_truncation_of_a_frame_decodes_without_raising() -> None:
    s = session("matches:BTC-USD", "ticker:ETH-USD")
    for line in (json.dumps(MATCH), json.dumps(TICKER), json.dumps(HEARTBEAT)):
        for end in range(len(line)):
            events = s.decode(line[:end], RECEIVED)
            assert events and all(isinstance(e, DecodeError) for e in events)


@pytest.mark.parametrize("kind", ["match", "last_match", "ticker", "heartbeat", "subscriptions", "error"])
@pytest.mark.parametrize("bad", [None, True, [], {}, "", "x", -1, 2**63, 1.5])
def test_any_wrong_field_type_gives_events_never_an_exception(kind: str, bad: Any) -> None:
    payload = {**TICKER, **MATCH, **HEARTBEAT, "channels": [{"name": "matches", "product_ids": ["BTC-USD"]}],
               "message": "Failed to subscribe", "reason": "BTC-USD is not a valid product"}
    for key in payload:
        s = session("matches:BTC-USD", "ticker:BTC-USD")
        events = s.decode(orjson.dumps({**payload, "type": kind, key: bad}), RECEIVED)
        assert events and all(isinstance(e, EVENT_TYPES) for e in events)


def test_decode_error_excerpt_is_bounded() -> None:
    raw = frame({**MATCH, "price": "x", "padding": "y" * 1000})
    error = only(session().decode(raw, RECEIVED))
    assert isinstance(error, DecodeError) and error.frame == raw[:200] + "..."


# ---- instruments ----------------------------------------------------------------------------------


def product(product_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": product_id, "base_currency": product_id.split("-")[0], "status": "online",
            "trading_disabled": False, "cancel_only": False, **fields}


def test_parse_instruments_keeps_the_products_that_trade() -> None:
    body = [product("BTC-USD"), product("ETH-USD", cancel_only=True), product("OLD-USD", status="delisted"),
            product("OFF-USD", status="offline"), product("HALT-USD", trading_disabled=True)]
    assert CoinbaseExchange().parse_instruments(body) == InstrumentPage(frozenset({"BTC-USD", "ETH-USD"}))


@pytest.mark.parametrize(
    ("body", "why"),
    [({"products": []}, "not a JSON array"), (None, "not a JSON array"),
     ([{"product_id": "BTC-USD"}], "'id'"), (["BTC-USD"], "'id'"), ([{"id": 5}], "'id'")],
)
def test_parse_instruments_rejects_a_malformed_body(body: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        CoinbaseExchange().parse_instruments(body)


def test_the_history_page_asks_for_the_ids_below_its_cursor_and_reads_them_oldest_first() -> None:
    venue = CoinbaseExchange()
    assert venue.history_path("BTC-USD", 101, 50) == "/products/BTC-USD/trades?after=151&limit=50"
    body = [
        {"time": "2026-12-07T12:00:01.5Z", "trade_id": 102, "price": "100.5", "size": "0.2", "side": "sell"},
        {"time": "2026-12-07T12:00:01Z", "trade_id": 101, "price": "100", "size": "0.1", "side": "buy"},
    ]
    at = datetime(2026, 12, 7, 12, 0, 2, tzinfo=UTC)
    first, second = venue.parse_history("BTC-USD", body, at)
    assert (first.trade_id, first.side, first.price, first.volume) == ("101", "sell", 100.0, 0.1)
    assert (second.trade_id, second.side) == ("102", "buy")  # the maker sold: an up-tick, a buy
    assert first.received_at == at and first.timestamp == datetime(2026, 12, 7, 12, 0, 1, tzinfo=UTC)


def test_a_history_answer_of_another_shape_is_a_value_error_naming_it() -> None:
    venue = CoinbaseExchange()
    at = datetime(2026, 12, 7, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a JSON array"):
        venue.parse_history("BTC-USD", {"message": "NotFound"}, at)
    with pytest.raises(ValueError, match="missing field 'trade_id'"):
        venue.parse_history("BTC-USD", [{"time": "2026-12-07T12:00:01Z", "price": "1", "size": "1",
                                         "side": "buy"}], at)
