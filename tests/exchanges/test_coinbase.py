"""The Coinbase Advanced Trade adapter driven with literal frames: documented samples, recorded
traffic and bad input; then through the real connection runner on trio's mock clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing

from feedd.errors import TransportError
from feedd.exchanges import make_venue, venue_ids
from feedd.exchanges.base import (
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
from feedd.exchanges.coinbase import Coinbase, CoinbaseSession, RecentTradeIds, split_topic
from feedd.exchanges.fields import parse_rfc3339
from feedd.feed.runner import ConnectionRunner, RunnerSettings
from feedd.feed.status import VenueStatus
from feedd.feed.validate import Validator
from feedd.model import MarketData, Message

# The recorded frames these tests read (the recorded_*.ndjson fixture) are AGPL-3.0-or-later
# captures from cryptofeed's `v3` branch: test input only, never shipped; nothing made from them
# goes into feedd/
# (tests/fixtures/coinbase/README.md; the simulator's tapes: feedd/sim/data/coinbase/README.md).
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "coinbase"
RECORDED = FIXTURES / "recorded_advanced_trade_2026-08-09.ndjson"
#: what cryptofeed subscribed in the recording, in order (fixtures README)
RECORDED_CHANNELS = ("market_trades", "candles", "ticker", "level2")
RECORDED_PRODUCTS = ("BTC-USD", "ETH-USD")

RECEIVED = datetime(2026, 8, 9, 21, 5, 50, 123456, tzinfo=UTC)


def sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def session(venue: Coinbase | None = None) -> CoinbaseSession:
    made = (venue or Coinbase()).new_session()
    assert isinstance(made, CoinbaseSession)
    return made


def only(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


def records(events: list[Event]) -> list[MarketData]:
    return [e for e in events if isinstance(e, MarketData)]


def of_type(events: list[Event], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def decode_error(events: list[Event]) -> DecodeError:
    event = only(events)
    assert isinstance(event, DecodeError), event
    assert event.reason
    return event


def requests(frames: list[Message]) -> list[Any]:
    assert all(isinstance(f, str) for f in frames)  # text frames
    return [orjson.loads(f) for f in frames]


def without_jwt(documented: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in documented.items() if k != "jwt"}


def message(channel: str, events: list[Any], sequence: int | None = None,
            timestamp: str = "2026-08-09T21:05:50.100000001Z") -> str:
    body: dict[str, Any] = {"channel": channel, "timestamp": timestamp, "events": events}
    if sequence is not None:
        body["sequence_num"] = sequence
    return json.dumps(body)


def trade(trade_id: str, side: str = "BUY", product: str = "BTC-USD", price: str = "65083.67",
          size: str = "0.002", time: str = "2026-08-09T21:05:42.514318Z") -> dict[str, Any]:
    return {"product_id": product, "trade_id": trade_id, "price": price, "size": size,
            "time": time, "side": side}


def trades_frame(kind: str, trades: list[Any], sequence: int | None = None) -> str:
    return message("market_trades", [{"type": kind, "trades": trades}], sequence)


def subscriptions_frame(listed: dict[str, Any], sequence: int | None = None) -> str:
    return message("subscriptions", [{"subscriptions": listed}], sequence)


def recorded() -> list[tuple[str, dict[str, Any]]]:
    lines = RECORDED.read_text().splitlines()
    assert 0 < len(lines) <= 300
    return [(line, json.loads(line)) for line in lines]


def recorded_session(venue: Coinbase | None = None) -> CoinbaseSession:
    """A session that sent what the recording's client sent, so its replies answer it."""
    s = session(venue)
    frames = s.subscribe([f"{c}:{p}" for c in RECORDED_CHANNELS for p in RECORDED_PRODUCTS])
    sent = requests(frames)
    assert [r["channel"] for r in sent] == [*RECORDED_CHANNELS, "heartbeats"]
    return s


# ---- venue facts ------------------------------------------------------------------------------


def test_venue_states_its_protocol_facts() -> None:
    venue = Coinbase()
    assert venue.venue_id == "coinbase"
    assert venue.default_url == "wss://advanced-trade-ws.coinbase.com"
    assert venue.default_rest_url == "https://api.coinbase.com"
    assert venue.instruments_path() == "/api/v3/brokerage/market/products"
    assert venue.max_messages_per_second == 8  # unauthenticated messages, per the rate-limit page
    assert venue.message_limit_scope == "address"  # "per IP address": shared by every connection
    assert venue.ping_interval is None  # no client ping: heartbeats are the liveness signal
    assert venue.pong_timeout is None
    assert venue.uppercase_symbols is True
    assert venue.max_streams_per_connection >= 2
    assert venue.max_chars_per_connection is None  # no character budget is documented


def test_registry_discovers_coinbase() -> None:
    assert "coinbase" in venue_ids()
    made = make_venue("coinbase")
    assert isinstance(made, Coinbase)
    assert make_venue("coinbase") is not made


def test_topics_name_channel_and_product_on_the_only_route() -> None:
    venue = Coinbase()
    assert venue.topics(Subscription("BTC-USD", "trades")) == [Topic("", "market_trades:BTC-USD")]
    assert venue.topics(Subscription("BTC-USD", "ticker")) == [Topic("", "ticker:BTC-USD")]
    with pytest.raises(ValueError, match="channel"):
        venue.topics(Subscription("BTC-USD", "book"))  # type: ignore[arg-type]


@pytest.mark.parametrize(("symbol", "usd"), [("BTC-USDC", "BTC-USD"), ("ETH-USDC", "ETH-USD")])
def test_a_usdc_product_is_refused_pointing_to_the_usd_one_whose_data_coinbase_sends(
    symbol: str, usd: str
) -> None:
    # websocket-channels: -USDC products are only available on the user channel; other channels
    # return the same data as the -USD product (labelled as it, so feedd would drop it)
    problem = Coinbase().symbol_problem(symbol)
    assert problem is not None and "\n" not in problem
    assert f"subscribe {usd} instead" in problem
    assert "WebSocket channels" in problem  # where the rule is documented


@pytest.mark.parametrize("symbol", ["BTC-USD", "USDT-USDC", "EURC-USDC", "USDC-USD", "USDC-EUR", "BTC-USDCX"])
def test_usd_products_and_the_documented_usdc_exceptions_stream_as_themselves(symbol: str) -> None:
    assert Coinbase().symbol_problem(symbol) is None


def test_url_is_the_configured_base() -> None:
    venue = Coinbase()
    assert venue.url("", venue.default_url) == venue.default_url
    assert venue.url("", "ws://127.0.0.1:9003") == "ws://127.0.0.1:9003"
    with pytest.raises(ValueError, match="route"):
        venue.url("public", venue.default_url)


@pytest.mark.parametrize("topic", ["BTC-USD", ":BTC-USD", "ticker:", "", "ticker"])
def test_a_malformed_topic_is_refused(topic: str) -> None:
    with pytest.raises(ValueError, match="not a coinbase topic"):
        split_topic(topic)
    with pytest.raises(ValueError, match="not a coinbase topic"):
        session().subscribe([topic])


# ---- requests ---------------------------------------------------------------------------------


def test_subscribe_is_the_documented_public_request_without_jwt() -> None:
    documented = sample("subscribe_request_public_no_jwt.json")
    topics = [f"{documented['channel']}:{p}" for p in documented["product_ids"]]
    first = requests(session().subscribe(topics))[0]
    assert first == documented
    assert list(first) == list(documented)  # same key order as the docs


def test_first_subscribe_sends_one_message_per_channel_then_heartbeats() -> None:
    sent = requests(session().subscribe(
        ["market_trades:ETH-USD", "ticker:ETH-USD", "market_trades:BTC-USD", "ticker:BTC-USD"]
    ))
    assert sent == [
        without_jwt(sample("subscribe_request_market_trades.json")),
        without_jwt(sample("subscribe_request_ticker.json")),
        without_jwt(sample("subscribe_request_heartbeats.json")),  # no products needed
    ]
    assert all("jwt" not in r for r in sent)


def test_heartbeats_are_subscribed_once_per_connection() -> None:
    s = session()
    assert len(s.subscribe(["ticker:BTC-USD"])) == 2
    assert requests(s.subscribe(["ticker:ETH-USD", "market_trades:ETH-USD"])) == [
        {"type": "subscribe", "product_ids": ["ETH-USD"], "channel": "ticker"},
        {"type": "subscribe", "product_ids": ["ETH-USD"], "channel": "market_trades"},
    ]
    # a new connection subscribes heartbeats again
    assert requests(session().subscribe(["ticker:ETH-USD"]))[-1] == {
        "type": "subscribe", "channel": "heartbeats",
    }


def test_unsubscribe_is_one_documented_message_per_channel_and_keeps_heartbeats() -> None:
    documented = sample("unsubscribe_request_public_no_jwt.json")
    s = session()
    topics = [f"{documented['channel']}:{p}" for p in documented["product_ids"]]
    s.subscribe(topics)
    assert requests(s.unsubscribe(topics)) == [documented]
    sent = requests(s.unsubscribe(["ticker:BTC-USD", "market_trades:BTC-USD", "ticker:ETH-USD"]))
    assert sent == [
        {"type": "unsubscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "ticker"},
        {"type": "unsubscribe", "product_ids": ["BTC-USD"], "channel": "market_trades"},
    ]


def test_subscribe_of_nothing_sends_nothing_not_even_heartbeats() -> None:
    s = session()
    assert s.subscribe([]) == []
    assert s.unsubscribe([]) == []
    assert len(s.subscribe(["ticker:BTC-USD"])) == 2  # heartbeats still come with the first


def test_a_repeated_topic_is_asked_once() -> None:
    sent = requests(session().subscribe(["ticker:BTC-USD", "ticker:BTC-USD"]))
    assert sent[0]["product_ids"] == ["BTC-USD"]


def test_there_is_no_client_ping() -> None:
    assert session().ping() is None


# ---- replies ----------------------------------------------------------------------------------


def test_subscriptions_reply_acks_the_topics_it_lists() -> None:
    s = session()
    s.subscribe(["ticker:BTC-USD"])
    events = s.decode(json.dumps(sample("subscriptions_unofficial.json")), RECEIVED)
    assert of_type(events, SubscribeAck) == [SubscribeAck(1, ("ticker:BTC-USD",), "subscribe")]
    assert not of_type(events, SubscribeRejected)


def test_a_product_missing_from_the_reply_is_a_subscription_error_naming_it() -> None:
    s = session()
    s.subscribe(["market_trades:BTC-USD", "market_trades:NOPE-USD", "ticker:BTC-USD"])
    events = s.decode(subscriptions_frame({"market_trades": ["BTC-USD"]}), RECEIVED)
    assert events == [
        SubscribeAck(1, ("market_trades:BTC-USD",), "subscribe"),
        SubscribeRejected(1, ("market_trades:NOPE-USD",), "not in the subscriptions reply"),
    ]
    events = s.decode(
        subscriptions_frame({"market_trades": ["BTC-USD"], "ticker": ["BTC-USD"]}), RECEIVED
    )
    assert events == [SubscribeAck(2, ("ticker:BTC-USD",), "subscribe")]
    # the heartbeats request is settled by the third reply
    events = s.decode(subscriptions_frame(
        {"market_trades": ["BTC-USD"], "ticker": ["BTC-USD"], "heartbeats": ["heartbeats"]}
    ), RECEIVED)
    assert events == [Ignored()]


def test_heartbeats_missing_from_its_reply_is_reported() -> None:
    s = session()
    s.subscribe(["ticker:BTC-USD"])
    s.decode(subscriptions_frame({"ticker": ["BTC-USD"]}), RECEIVED)
    error = only(s.decode(subscriptions_frame({"ticker": ["BTC-USD"]}), RECEIVED))
    assert isinstance(error, SubscribeRejected)
    assert error.topics == ("heartbeats",)


def test_unsubscribe_is_acked_when_the_reply_no_longer_lists_the_topic() -> None:
    s = session()
    s.subscribe(["ticker:BTC-USD", "ticker:ETH-USD"])
    s.decode(subscriptions_frame({"ticker": ["BTC-USD", "ETH-USD"]}), RECEIVED)
    s.decode(subscriptions_frame({"ticker": ["BTC-USD", "ETH-USD"], "heartbeats": ["heartbeats"]}),
             RECEIVED)
    s.unsubscribe(["ticker:ETH-USD"])
    ack = only(s.decode(subscriptions_frame({"ticker": ["BTC-USD"], "heartbeats": ["heartbeats"]}),
                        RECEIVED))
    assert ack == SubscribeAck(3, ("ticker:ETH-USD",), "unsubscribe")
    s.unsubscribe(["ticker:BTC-USD"])
    error = only(s.decode(subscriptions_frame({"ticker": ["BTC-USD"]}), RECEIVED))
    assert error == SubscribeRejected(
        4, ("ticker:BTC-USD",), "still in the subscriptions reply after unsubscribe"
    )


def test_a_reply_nobody_waits_for_is_ignored() -> None:
    unofficial = sample("subscriptions_unofficial.json") | {"sequence_num": 0}
    assert only(session().decode(json.dumps(unofficial), RECEIVED)) == Ignored()
    # the Prime docs' reply has the same envelope (and no client_id)
    assert only(session().decode(json.dumps(sample("subscriptions_prime_official_analog.json")),
                                 RECEIVED)) == Ignored()


BAD_PRODUCT = "Failed to subscribe: BAD-USD is not a valid product"  # the simulator's wording


def error_frame(text: str) -> str:
    return json.dumps({"type": "error", "message": text})


def test_an_error_settles_the_request_it_answers_and_the_rest_of_it_is_retried() -> None:
    # Coinbase refuses a request with a bad product by an error alone, no subscriptions list
    s = session()
    sent = requests(s.subscribe(
        ["market_trades:BTC-USD", "market_trades:BAD-USD", "ticker:BTC-USD", "ticker:BAD-USD"]
    ))
    assert [r["channel"] for r in sent] == ["market_trades", "ticker", "heartbeats"]
    assert s.decode(error_frame(BAD_PRODUCT), RECEIVED) == [
        SubscribeRejected(1, ("market_trades:BAD-USD",), BAD_PRODUCT),
        Retry("subscribe", ("market_trades:BTC-USD",), BAD_PRODUCT),
    ]
    assert s.decode(error_frame(BAD_PRODUCT), RECEIVED) == [
        SubscribeRejected(2, ("ticker:BAD-USD",), BAD_PRODUCT),
        Retry("subscribe", ("ticker:BTC-USD",), BAD_PRODUCT),
    ]
    # the heartbeats reply answers the heartbeats request, not one of the refused ones
    assert s.decode(subscriptions_frame({"heartbeats": ["heartbeats"]}), RECEIVED) == [Ignored()]
    # the runner requests the retried topics again; each is acknowledged by its own reply
    assert requests(s.subscribe(["market_trades:BTC-USD", "ticker:BTC-USD"])) == [
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "market_trades"},
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "ticker"},
    ]
    listed: dict[str, list[str]] = {"heartbeats": ["heartbeats"], "market_trades": ["BTC-USD"]}
    assert s.decode(subscriptions_frame(listed), RECEIVED) == [
        SubscribeAck(4, ("market_trades:BTC-USD",), "subscribe")
    ]
    listed["ticker"] = ["BTC-USD"]
    assert s.decode(subscriptions_frame(listed), RECEIVED) == [
        SubscribeAck(5, ("ticker:BTC-USD",), "subscribe")
    ]
    assert s.decode(subscriptions_frame(listed), RECEIVED) == [Ignored()]  # nothing left pending


def test_an_error_naming_several_products_refuses_each_of_them() -> None:
    s = session()
    s.subscribe(["ticker:A-USD", "ticker:BTC-USD", "ticker:B-USD", "ticker:BTC-USDT"])
    text = "Failed to subscribe: A-USD, B-USD is not a valid product"
    assert s.decode(error_frame(text), RECEIVED) == [
        SubscribeRejected(1, ("ticker:A-USD", "ticker:B-USD"), text),
        Retry("subscribe", ("ticker:BTC-USD", "ticker:BTC-USDT"), text),  # whole ids, not prefixes
    ]


def test_an_error_naming_none_of_its_products_refuses_the_whole_request() -> None:
    # asking again would earn the same error
    s = session()
    s.subscribe(["market_trades:BTC-USD", "market_trades:ETH-USD"])
    frame = '{"type":"error","message":"Failed to subscribe","reason":"internal error"}'
    assert s.decode(frame, RECEIVED) == [SubscribeRejected(
        1, ("market_trades:BTC-USD", "market_trades:ETH-USD"), "Failed to subscribe: internal error"
    )]
    assert s.decode('{"type":"error"}', RECEIVED) == [
        SubscribeRejected(2, ("heartbeats",), "error without a message")
    ]


def test_an_error_answering_an_unsubscribe_refuses_the_named_product_and_retries_the_rest() -> None:
    s = session()
    s.subscribe(["ticker:BTC-USD", "ticker:ETH-USD"])
    s.decode(subscriptions_frame({"ticker": ["BTC-USD", "ETH-USD"]}), RECEIVED)
    s.decode(subscriptions_frame({"ticker": ["BTC-USD", "ETH-USD"], "heartbeats": ["heartbeats"]}),
             RECEIVED)
    s.unsubscribe(["ticker:BTC-USD", "ticker:ETH-USD"])
    text = "Failed to unsubscribe: ETH-USD is busy"
    assert s.decode(error_frame(text), RECEIVED) == [
        SubscribeRejected(3, ("ticker:ETH-USD",), text),
        Retry("unsubscribe", ("ticker:BTC-USD",), text),
    ]


def test_an_error_with_no_request_pending_is_unattributed_with_its_text() -> None:
    s = session()
    frame = '{"type":"error","message":"Failed to subscribe","reason":"XRP-USD is not a valid product"}'
    assert only(s.decode(frame, RECEIVED)) == SubscribeRejected(
        None, (), "Failed to subscribe: XRP-USD is not a valid product"
    )
    assert only(s.decode('{"type":"error"}', RECEIVED)) == SubscribeRejected(
        None, (), "error without a message"
    )
    # an error in the envelope keeps the message count (no false gap after it)
    enveloped = '{"type":"error","message":"x","sequence_num":0}'
    assert s.decode(enveloped, RECEIVED) == [SubscribeRejected(None, (), "x")]
    huge = json.dumps({"type": "error", "message": "m" * 10_000})
    error = only(s.decode(huge, RECEIVED))
    assert isinstance(error, SubscribeRejected) and len(error.reason) <= 203


def test_a_later_request_already_in_a_reply_is_acked_at_once() -> None:
    s = session()
    s.subscribe(["market_trades:BTC-USD"])
    s.subscribe(["ticker:BTC-USD"])  # requests: market_trades, heartbeats, ticker
    events = s.decode(subscriptions_frame({"market_trades": ["BTC-USD"], "ticker": ["BTC-USD"]}),
                      RECEIVED)
    assert events == [
        SubscribeAck(1, ("market_trades:BTC-USD",), "subscribe"),
        SubscribeAck(3, ("ticker:BTC-USD",), "subscribe"),
    ]


# ---- market data from the documented samples --------------------------------------------------


def test_documented_trade_snapshot_is_not_published() -> None:
    assert only(session().decode(json.dumps(sample("market_trades.json")), RECEIVED)) == Ignored()


def test_documented_trade_as_an_update_is_a_trade_with_the_taker_side() -> None:
    documented = sample("market_trades.json")
    documented["events"][0]["type"] = "update"
    record = only(session().decode(json.dumps(documented), RECEIVED))
    assert record == MarketData(
        exchange="coinbase",
        symbol="ETH-USD",
        kind="trade",
        price=1260.01,
        volume=0.3,
        timestamp=datetime(2019, 8, 14, 20, 42, 27, 265000, tzinfo=UTC),
        received_at=RECEIVED,
        side="sell",  # the documented side BUY is the maker's: the taker sold
        trade_id="000000000",
    )


def test_documented_ticker_carries_price_24h_volume_range_change_and_quote() -> None:
    record = only(session().decode(json.dumps(sample("ticker.json")), RECEIVED))
    assert record == MarketData(
        exchange="coinbase",
        symbol="BTC-USD",
        kind="ticker",
        price=21932.98,
        volume=16038.28770938,  # volume_24_h, base units
        timestamp=datetime(2023, 2, 9, 20, 30, 37, 167359, tzinfo=UTC),  # the message's, ns cut
        received_at=RECEIVED,
        bid=21931.98,
        ask=21933.98,
        high_24h=23011.18,
        low_24h=21835.29,
        change_24h=-4.15775596190603,  # price_percent_chg_24_h is already percent
        bid_size=8000.21,  # best_bid_quantity
        ask_size=8038.07770938,  # best_ask_quantity
    )


def test_ticker_without_best_bid_ask_has_none() -> None:
    # ticker_batch's schema, and the AsyncAPI notes, leave best bid/ask out
    documented = sample("ticker.json")
    ticker = documented["events"][0]["tickers"][0]
    for key in ("best_bid", "best_ask", "best_bid_quantity", "best_ask_quantity"):
        del ticker[key]
    ticker["high_24_h"] = ""
    record = only(session().decode(json.dumps(documented), RECEIVED))
    assert isinstance(record, MarketData)
    assert (record.bid, record.ask, record.high_24h) == (None, None, None)
    assert record.price == 21932.98


def test_documented_heartbeat_is_a_heartbeat_whatever_its_counter_type() -> None:
    documented = sample("heartbeats.json")
    assert documented["events"][0]["heartbeat_counter"] == "3049"  # a string in the prose docs
    assert only(session().decode(json.dumps(documented), RECEIVED)) == Heartbeat()
    documented["events"][0]["heartbeat_counter"] = 3049  # an integer in production
    assert only(session().decode(json.dumps(documented), RECEIVED)) == Heartbeat()


@pytest.mark.parametrize("name", ["level2.json", "candles.json"])
def test_channels_feedd_does_not_subscribe_are_ignored(name: str) -> None:
    assert only(session().decode(json.dumps(sample(name)), RECEIVED)) == Ignored()


@pytest.mark.parametrize(("maker", "taker"), [("BUY", "sell"), ("SELL", "buy")])
def test_the_record_side_is_the_opposite_of_coinbase_maker_side(maker: str, taker: str) -> None:
    record = only(session().decode(trades_frame("update", [trade("1", maker)]), RECEIVED))
    assert isinstance(record, MarketData)
    assert record.side == taker


def test_every_trade_of_an_update_is_a_record_oldest_first() -> None:
    batch = [trade("12", "SELL", time="2026-08-09T21:05:51.426861Z"),
             trade("11", "BUY", time="2026-08-09T21:05:51.376358Z")]
    published = records(session().decode(trades_frame("update", batch), RECEIVED))
    assert [(r.trade_id, r.side) for r in published] == [("11", "sell"), ("12", "buy")]


# ---- snapshots and duplicates -----------------------------------------------------------------


def test_snapshot_trades_are_not_published_nor_an_update_repeating_one() -> None:
    s = session()
    snapshot = [trade("3"), trade("2"), trade("1")]
    assert s.decode(trades_frame("snapshot", snapshot, 0), RECEIVED) == [Ignored()]
    published = records(s.decode(trades_frame("update", [trade("4"), trade("3")], 1), RECEIVED))
    assert [r.trade_id for r in published] == ["4"]


def test_no_trade_is_published_twice_across_a_reconnect() -> None:
    venue = Coinbase()
    first = session(venue)
    first.decode(trades_frame("snapshot", [trade("10")], 0), RECEIVED)
    seen = records(first.decode(trades_frame("update", [trade("12"), trade("11")], 1), RECEIVED))
    assert [r.trade_id for r in seen] == ["11", "12"]
    first.connection_lost()
    # the new connection's snapshot holds past trades, some already published, some not: none is
    # published as new; its first update overlaps what the old connection published
    second = session(venue)
    assert second.decode(trades_frame("snapshot", [trade("13"), trade("12"), trade("11")], 0),
                         RECEIVED) == [Ignored()]
    again = records(second.decode(
        trades_frame("update", [trade("14"), trade("12"), trade("11")], 1), RECEIVED
    ))
    assert [r.trade_id for r in again] == ["14"]


def test_the_same_trade_id_on_another_product_is_another_trade() -> None:
    s = session()
    s.decode(trades_frame("update", [trade("7", product="BTC-USD")]), RECEIVED)
    record = only(s.decode(trades_frame("update", [trade("7", product="ETH-USD")]), RECEIVED))
    assert isinstance(record, MarketData) and record.symbol == "ETH-USD"


def test_trade_ids_are_remembered_within_a_bound_per_product() -> None:
    ids = RecentTradeIds(capacity=3)
    assert [ids.add("BTC-USD", str(i)) for i in range(5)] == [True] * 5
    assert ids.count("BTC-USD") == 3
    assert not ids.seen("BTC-USD", "1")  # the oldest are forgotten
    assert ids.seen("BTC-USD", "4")
    assert ids.add("BTC-USD", "4") is False
    assert ids.count("ETH-USD") == 0
    assert Coinbase().trade_ids.capacity == 10_000
    with pytest.raises(ValueError):
        RecentTradeIds(capacity=0)


def test_a_trade_that_fails_to_decode_is_not_remembered() -> None:
    s = session()
    assert isinstance(only(s.decode(trades_frame("update", [trade("5", price="x")]), RECEIVED)),
                      DecodeError)
    record = only(s.decode(trades_frame("update", [trade("5")]), RECEIVED))
    assert isinstance(record, MarketData) and record.trade_id == "5"


# ---- sequence gaps ----------------------------------------------------------------------------


def test_a_sequence_jump_is_a_gap_counting_the_missed_messages() -> None:
    s = session()
    assert not of_type(s.decode(trades_frame("update", [trade("1")], 0), RECEIVED), SequenceGap)
    events = s.decode(message("heartbeats", [{}], 4), RECEIVED)
    assert events == [SequenceGap(3, "sequence_num 4 after 0"), Heartbeat()]
    assert s.decode(message("heartbeats", [{}], 5), RECEIVED) == [Heartbeat()]


def test_the_gap_comes_before_the_records_of_its_message() -> None:
    s = session()
    s.decode(message("heartbeats", [{}], 0), RECEIVED)
    events = s.decode(trades_frame("update", [trade("2"), trade("1")], 2), RECEIVED)
    assert isinstance(events[0], SequenceGap) and events[0].missed == 1
    assert [r.trade_id for r in records(events)] == ["1", "2"]


def test_sequence_counts_per_connection_across_channels_from_zero() -> None:
    venue = Coinbase()
    first = session(venue)
    assert first.decode(message("heartbeats", [{}], 0), RECEIVED) == [Heartbeat()]
    ticker = json.dumps(sample("ticker.json") | {"sequence_num": 1})
    assert not of_type(first.decode(ticker, RECEIVED), SequenceGap)
    # a new connection starts again at 0: no gap against the old one's numbers
    assert session(venue).decode(message("heartbeats", [{}], 0), RECEIVED) == [Heartbeat()]
    # a first message numbered above 0 means the ones before it were lost
    events = session(venue).decode(message("heartbeats", [{}], 3), RECEIVED)
    assert events == [SequenceGap(3, "first sequence_num is 3, not 0"), Heartbeat()]


def test_an_out_of_order_message_is_no_gap_and_still_decoded() -> None:
    s = session()
    s.decode(message("heartbeats", [{}], 5), RECEIVED)
    events = s.decode(trades_frame("update", [trade("1")], 3), RECEIVED)
    assert not of_type(events, SequenceGap)
    assert len(records(events)) == 1
    assert s.decode(message("heartbeats", [{}], 6), RECEIVED) == [Heartbeat()]


def test_sequence_num_as_a_string_is_accepted_and_a_bad_one_is_an_error_not_a_loss() -> None:
    s = session()
    s.decode(message("heartbeats", [{}], 0), RECEIVED)
    numbered = json.dumps(json.loads(message("heartbeats", [{}])) | {"sequence_num": "2"})
    assert s.decode(numbered, RECEIVED) == [SequenceGap(1, "sequence_num 2 after 0"), Heartbeat()]
    frame = json.dumps(json.loads(trades_frame("update", [trade("1")])) | {"sequence_num": 3.5})
    events = s.decode(frame, RECEIVED)
    assert isinstance(events[0], DecodeError) and "sequence_num" in events[0].reason
    assert len(records(events)) == 1


def test_a_message_without_sequence_num_or_client_id_decodes() -> None:
    # production omits client_id (AsyncAPI notes); a hand-made message may omit the number too
    assert only(session().decode(message("heartbeats", [{}]), RECEIVED)) == Heartbeat()


# ---- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digits", "micro"),
    [("", 0), ("5", 500000), ("50", 500000), ("504", 504000), ("5043", 504300), ("50436", 504360),
     ("504361", 504361), ("5043612", 504361), ("50436129", 504361), ("504361999", 504361)],
)
def test_rfc3339_fractions_of_0_to_9_digits_keep_the_microseconds(digits: str, micro: int) -> None:
    text = "2026-08-09T21:05:38" + (f".{digits}" if digits else "") + "Z"
    parsed = parse_rfc3339(text)
    assert parsed == datetime(2026, 8, 9, 21, 5, 38, micro, tzinfo=UTC)
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-08-09T21:05:38.123456789+02:00", datetime(2026, 8, 9, 19, 5, 38, 123456, tzinfo=UTC)),
        ("2026-08-09T21:05:38.1-05:30", datetime(2026, 8, 10, 2, 35, 38, 100000, tzinfo=UTC)),
        ("2026-08-09T21:05:38+00:00", datetime(2026, 8, 9, 21, 5, 38, tzinfo=UTC)),
        ("2026-08-09T21:05:38-00:00", datetime(2026, 8, 9, 21, 5, 38, tzinfo=UTC)),
        ("2026-08-09t21:05:38.999999999z", datetime(2026, 8, 9, 21, 5, 38, 999999, tzinfo=UTC)),
        ("2026-08-09 21:05:38Z", datetime(2026, 8, 9, 21, 5, 38, tzinfo=UTC)),
        ("2026-12-31T23:59:59.9999999995Z", datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_rfc3339_offsets_are_converted_to_utc(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-08-09T21:05:38",  # no offset: a naive time is refused, not guessed
        "2026-08-09T21:05:38.123",
        "2026-08-09",
        "20260809T210538Z",  # ISO 8601 basic format, not RFC 3339
        "2026-08-09T21:05Z",
        "2026-08-09T21:05:38.Z",
        "2026-08-09T21:05:38,5Z",
        "2026-08-09T21:05:38.12345a789Z",
        "2026-08-09T21:05:38.1234567x9Z",
        "2026-08-09T21:05:38.1+0100",
        "2026-08-09T21:05:38 +01:00",
        "2026-08-09T21:05:60Z",
        "2026-02-30T21:05:38Z",
        "2026-08-09 21:05:38.854840045 +0000 UTC m=+41691.260485341",  # the heartbeat's Go time
        "",
        "Z",
    ],
)
def test_rfc3339_rejects_what_is_not_an_rfc3339_date_time(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_rfc3339_error_quotes_a_bounded_slice_of_the_value() -> None:
    with pytest.raises(ValueError) as caught:
        parse_rfc3339("2026-08-09T21:05:38." + "x" * 10_000 + "Z")
    assert len(str(caught.value)) < 120


@pytest.mark.parametrize("value", [None, 1786309548, 1786309548.5, b"2026-08-09T21:05:38Z"])
def test_rfc3339_rejects_a_non_string(value: Any) -> None:
    with pytest.raises(TypeError):
        parse_rfc3339(value)


def test_rfc3339_agrees_with_a_reference_over_many_instants() -> None:
    start = datetime(1999, 12, 31, 23, 0, tzinfo=UTC)
    zones = (UTC, timezone(timedelta(hours=5, minutes=45)), timezone(timedelta(hours=-8)))
    for step in range(0, 10**7, 99_991):
        instant = start + timedelta(days=step // 1000, microseconds=step * 7919)
        for zone in zones:
            local = instant.astimezone(zone)
            offset = local.strftime("%z")
            written = (local.strftime("%Y-%m-%dT%H:%M:%S.%f") + "789"  # nanoseconds
                       + ("Z" if zone is UTC else f"{offset[:3]}:{offset[3:]}"))
            assert parse_rfc3339(written) == instant, written


def test_trade_time_with_nanoseconds_keeps_its_microseconds() -> None:
    frame = trades_frame("update", [trade("1", time="2026-08-09T21:05:48.228568804Z")])
    record = only(session().decode(frame, RECEIVED))
    assert isinstance(record, MarketData)
    assert record.timestamp == datetime(2026, 8, 9, 21, 5, 48, 228568, tzinfo=UTC)


def test_heartbeat_go_time_string_is_not_parsed_or_published() -> None:
    frame = message("heartbeats", [{"current_time": "2026-08-09 21:05:48.854840045 +0000 UTC "
                                                    "m=+41691.260485341", "heartbeat_counter": 41691}])
    assert session().decode(frame, RECEIVED) == [Heartbeat()]


# ---- recorded traffic -------------------------------------------------------------------------


def test_every_recorded_frame_decodes_and_counts_match_the_recording() -> None:
    s = recorded_session()
    validator = Validator(frozenset(RECORDED_PRODUCTS))
    update_trades: list[dict[str, Any]] = []
    tickers: list[tuple[str, dict[str, Any]]] = []
    counts = {"heartbeats": 0, "subscriptions": 0, "snapshot_trades": 0, "ignored": 0}
    published: list[MarketData] = []
    acks: list[SubscribeAck] = []
    missed = 0
    for line, msg in recorded():
        events = s.decode(line, RECEIVED)
        assert not of_type(events, DecodeError), events
        assert not of_type(events, SubscribeRejected), events
        missed += sum(g.missed for g in of_type(events, SequenceGap))
        acks += of_type(events, SubscribeAck)
        published += records(events)
        channel = msg["channel"]
        if channel == "market_trades":
            for event in msg["events"]:
                if event["type"] == "update":
                    update_trades += reversed(event["trades"])
                else:
                    counts["snapshot_trades"] += len(event["trades"])
        elif channel == "ticker":
            tickers += [(msg["timestamp"], t) for e in msg["events"] for t in e["tickers"]]
        elif channel == "heartbeats":
            assert Heartbeat() in events
            counts["heartbeats"] += 1
        elif channel == "subscriptions":
            counts["subscriptions"] += 1
        else:
            assert channel in ("l2_data", "candles")
            assert [e for e in events if not isinstance(e, SequenceGap)] in ([Ignored()], [])
            counts["ignored"] += 1
    trades = [r for r in published if r.kind == "trade"]
    ticks = [r for r in published if r.kind == "ticker"]
    # the fixtures README's figures: 79 trades in updates, 200 in snapshots, 160 tickers
    assert (len(trades), counts["snapshot_trades"], len(ticks)) == (79, 200, 160)
    assert (counts["heartbeats"], counts["subscriptions"], counts["ignored"]) == (25, 5, 16)
    assert [a.topics for a in acks] == [
        tuple(f"{c}:{p}" for p in RECORDED_PRODUCTS) for c in RECORDED_CHANNELS
    ]
    assert missed == 764  # exactly the l2_data frames the fixture leaves out (fixtures README)
    for record, data in zip(trades, update_trades, strict=True):
        assert record.exchange == "coinbase" and record.symbol == data["product_id"]
        assert record.trade_id == data["trade_id"]
        assert (record.price, record.volume) == (float(data["price"]), float(data["size"]))
        assert record.side == {"BUY": "sell", "SELL": "buy"}[data["side"]]
        assert record.timestamp == datetime.fromisoformat(data["time"])
        assert validator.reason(attrs.evolve(record, received_at=record.timestamp)) is None
    for record, (timestamp, data) in zip(ticks, tickers, strict=True):
        assert record.symbol == data["product_id"] and record.price == float(data["price"])
        assert record.volume == float(data["volume_24_h"])
        assert (record.bid, record.ask) == (float(data["best_bid"]), float(data["best_ask"]))
        assert (record.high_24h, record.low_24h) == (float(data["high_24_h"]), float(data["low_24_h"]))
        assert record.change_24h == float(data["price_percent_chg_24_h"])
        assert record.timestamp == parse_rfc3339(timestamp)
        assert validator.reason(attrs.evolve(record, received_at=record.timestamp)) is None
    assert len({(r.symbol, r.trade_id) for r in trades}) == 79


def test_recorded_sequence_gaps_are_exactly_the_frames_left_out() -> None:
    s = recorded_session()
    previous = -1
    for line, msg in recorded():
        gaps = of_type(s.decode(line, RECEIVED), SequenceGap)
        expected = msg["sequence_num"] - previous - 1
        assert [g.missed for g in gaps] == ([expected] if expected else [])
        previous = msg["sequence_num"]


def test_recorded_trades_replayed_on_a_new_connection_are_not_published_again() -> None:
    venue = Coinbase()
    first = recorded_session(venue)
    once = sum(len(records(first.decode(line, RECEIVED))) for line, _ in recorded())
    first.connection_lost()
    second = recorded_session(venue)
    again = [r for line, _ in recorded() for r in records(second.decode(line, RECEIVED))]
    assert once == 79 + 160
    assert [r.kind for r in again] == ["ticker"] * 160  # tickers are state, trades are events


# ---- bad input never raises -------------------------------------------------------------------

TRADE = trade("1")
EVENT_TYPES = (MarketData, SubscribeAck, SubscribeRejected, Heartbeat, SequenceGap, Ignored, DecodeError)
TICKER = sample("ticker.json")["events"][0]["tickers"][0]


def ticker_frame(ticker: Any) -> str:
    return message("ticker", [{"type": "update", "tickers": [ticker]}])


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ("{", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        ("", "malformed JSON"),
        ("[1, 2]", "not a JSON object"),
        ("null", "not a JSON object"),
        ("{}", "neither a channel message nor an error"),
        ('{"channel": 7, "events": []}', "neither a channel message nor an error"),
        ('{"channel": "market_trades"}', "missing field 'events'"),
        ('{"channel": "market_trades", "events": {}}', "bad 'market_trades' message"),
        ('{"channel": "market_trades", "events": [{"type": "update"}]}', "missing field 'trades'"),
        ('{"channel": "market_trades", "events": [{"trades": []}]}', "missing field 'type'"),
        ('{"channel": "market_trades", "events": [{"type": "update", "trades": {}}]}',
         "'trades' is not a list"),
        ('{"channel": "market_trades", "events": [{"type": "delta", "trades": []}]}',
         "unknown market_trades event type"),
        (trades_frame("update", [{k: v for k, v in TRADE.items() if k != "price"}]),
         "bad trade: missing field 'price'"),
        (trades_frame("update", [{k: v for k, v in TRADE.items() if k != "trade_id"}]), "'trade_id'"),
        (trades_frame("update", [{**TRADE, "side": "UNKNOWN_ORDER_SIDE"}]), "'side' is not BUY or SELL"),
        (trades_frame("update", [{**TRADE, "side": None}]), "'side' is not BUY or SELL"),
        (trades_frame("update", [{**TRADE, "price": "abc"}]), "ValueError"),
        (trades_frame("update", [{**TRADE, "size": None}]), "TypeError"),
        (trades_frame("update", [{**TRADE, "time": "2026-08-09T21:05:38"}]), "not an RFC 3339"),
        (trades_frame("update", [{**TRADE, "time": "2026-08-09T21:05:38.123"}]), "without a time offset"),
        (trades_frame("update", [{**TRADE, "time": 1786309548}]), "not a string"),
        (trades_frame("update", [{**TRADE, "trade_id": ""}]), "'trade_id' is not a string"),
        (trades_frame("update", [{**TRADE, "trade_id": None}]), "'trade_id' is not a string"),
        (trades_frame("update", [{**TRADE, "product_id": 5}]), "'product_id' is not a string"),
        (trades_frame("update", ["x"]), "bad trade"),
        (trades_frame("snapshot", [{"price": "1"}]), "bad trade: missing field 'product_id'"),
        (ticker_frame({k: v for k, v in TICKER.items() if k != "price"}), "bad ticker: missing field"),
        (ticker_frame({**TICKER, "volume_24_h": "n/a"}), "bad ticker: ValueError"),
        (ticker_frame({**TICKER, "best_bid": []}), "bad ticker: TypeError"),
        (message("ticker", [{"type": "update", "tickers": {}}]), "'tickers' is not a list"),
        (message("ticker", [{"type": "update", "tickers": []}], timestamp="yesterday"), "RFC 3339"),
        (message("subscriptions", [{"subscriptions": []}]), "'subscriptions' is not an object"),
        (subscriptions_frame({"ticker": "BTC-USD"}), "are not a list"),
        (message("subscriptions", [{}]), "missing field 'subscriptions'"),
    ],
)
def test_bad_frame_is_a_decode_error_naming_the_problem(frame: str | bytes, why: str) -> None:
    s = session()
    s.subscribe(["ticker:BTC-USD"])
    error = decode_error(s.decode(frame, RECEIVED))
    assert why in error.reason
    assert len(error.frame) <= 203


def test_one_bad_trade_does_not_lose_the_others_of_its_batch() -> None:
    frame = trades_frame("update", [trade("3"), {**trade("2"), "price": "x"}, trade("1")])
    events = session().decode(frame, RECEIVED)
    assert [r.trade_id for r in records(events)] == ["1", "3"]
    assert len(of_type(events, DecodeError)) == 1


def test_every_truncation_of_a_frame_decodes_without_raising() -> None:
    line = next(line for line, msg in recorded() if msg["channel"] == "ticker")
    s = session()
    for end in range(len(line)):
        events = s.decode(line[:end], RECEIVED)
        assert events and all(isinstance(e, DecodeError | MarketData | SequenceGap) for e in events)


@pytest.mark.parametrize("channel", ["market_trades", "ticker", "heartbeats", "subscriptions"])
@pytest.mark.parametrize("bad", [None, True, [], {}, "", "x", -1, 2**63, 1.5])
def test_any_wrong_field_type_gives_events_never_an_exception(channel: str, bad: Any) -> None:
    payload = {**TICKER, **TRADE, "current_time": "x", "heartbeat_counter": 1}
    for key in list(payload):
        item = {**payload, key: bad}
        event = {"type": "update", "trades": [item], "tickers": [item], "subscriptions": {"x": [bad]},
                 **item}
        for frame in (
            orjson.dumps({"channel": channel, "timestamp": bad, "sequence_num": 1, "events": [event]}),
            orjson.dumps({"channel": channel, "timestamp": TICKER["price"], "sequence_num": bad,
                          "events": [event]}),
            orjson.dumps({"channel": channel, "events": [bad]}),
            orjson.dumps({"channel": channel, "events": bad}),
        ):
            s = session()
            s.subscribe(["ticker:BTC-USD"])
            events = s.decode(frame, RECEIVED)
            assert events
            assert all(isinstance(e, EVENT_TYPES) for e in events)


def test_decode_error_excerpt_is_bounded() -> None:
    frame = trades_frame("update", [{**trade(str(i)), "price": "x"} for i in range(100)])
    events = session().decode(frame, RECEIVED)
    assert len(events) == 100
    assert all(isinstance(e, DecodeError) and e.frame == frame[:200] + "..." for e in events)


# ---- instruments ------------------------------------------------------------------------------


def product(product_id: str, **fields: Any) -> dict[str, Any]:
    return {"product_id": product_id, "status": "online", "is_disabled": False,
            "trading_disabled": False, **fields}


def test_parse_instruments_keeps_products_that_stream() -> None:
    body = {
        "products": [
            product("BTC-USD", price="65083.67", base_currency_id="BTC"),
            product("ETH-USD"),
            product("BTC-USDC", alias="BTC-USD"),
            product("OLD-USD", status="delisted"),
            product("OFF-USD", status="offline"),
            product("DIS-USD", is_disabled=True),
            {"product_id": "BARE-USD"},  # a minimal entry, e.g. from a simulator
        ],
        "num_products": 7,
    }
    assert Coinbase().parse_instruments(body) == InstrumentPage(
        frozenset({"BTC-USD", "ETH-USD", "BTC-USDC", "BARE-USD"})
    )


def test_parse_instruments_follows_offset_pages_while_num_products_says_there_are_more() -> None:
    venue = Coinbase()
    first = venue.parse_instruments({"products": [product("A-USD"), product("B-USD")],
                                     "num_products": 5})
    assert first == InstrumentPage(frozenset({"A-USD", "B-USD"}), "2")
    assert venue.instruments_path(first.cursor) == "/api/v3/brokerage/market/products?offset=2"
    second = venue.parse_instruments({"products": [product("C-USD"), product("D-USD")],
                                      "num_products": 5})
    assert second.cursor == "4"
    assert venue.instruments_path(second.cursor).endswith("?offset=4")
    last = venue.parse_instruments({"products": [product("E-USD")], "num_products": 5})
    assert last == InstrumentPage(frozenset({"E-USD"}), None)
    # a fresh walk starts from the first page again
    assert venue.instruments_path() == "/api/v3/brokerage/market/products"


@pytest.mark.parametrize(
    "body",
    [
        {"products": [product("A-USD")], "num_products": 1},  # the count of this page
        {"products": [product("A-USD")]},  # no count at all
        {"products": [], "num_products": 10},  # an empty page ends the walk
        {"products": [product("A-USD")], "num_products": "10"},
    ],
)
def test_parse_instruments_stops_when_nothing_says_there_is_more(body: Any) -> None:
    assert Coinbase().parse_instruments(body).cursor is None


@pytest.mark.parametrize(
    "body",
    [None, [], "x", {}, {"products": None}, {"products": {"BTC-USD": {}}}, {"products": ["BTC-USD"]},
     {"products": [{"status": "online"}]}, {"products": [{"product_id": 1}]}],
)
def test_parse_instruments_rejects_a_malformed_body(body: Any) -> None:
    with pytest.raises(ValueError, match="product"):
        Coinbase().parse_instruments(body)


# ---- through the connection runner ------------------------------------------------------------


class Wire:
    """A connected socket for the runner: the test pushes frames in and reads what was sent."""

    def __init__(self) -> None:
        self.push, self._incoming = trio.open_memory_channel[Message | Exception](1000)
        self.sent: list[tuple[float, Any]] = []
        self.opened_at = trio.current_time()

    async def send(self, frame: Message) -> None:
        self.sent.append((trio.current_time() - self.opened_at, orjson.loads(frame)))

    async def receive_batch(self) -> list[Message]:
        item = await self._incoming.receive()
        if isinstance(item, Exception):
            raise item
        return [item]

    async def aclose(self) -> None:
        pass


class Network:
    def __init__(self) -> None:
        self.wires: list[Wire] = []
        self.connected = trio.Event()

    @asynccontextmanager
    async def open(self, url: str, *, connect_timeout: float) -> AsyncIterator[Wire]:
        wire = Wire()
        self.wires.append(wire)
        self.connected.set()
        self.connected = trio.Event()
        yield wire


def now_frames(frames: list[str], at: datetime) -> list[str]:
    """Recorded frames with their times moved to ``at``, so validation's clock check passes."""
    now = at.strftime("%Y-%m-%dT%H:%M:%S.%f")
    moved = []
    for line in frames:
        msg = json.loads(line)
        if msg["channel"] == "market_trades":
            for event in msg["events"]:
                for t in event["trades"]:
                    t["time"] = now + "Z"
        msg["timestamp"] = now + "123Z"
        moved.append(json.dumps(msg))
    return moved


def make_runner(
    venue: Coinbase, topics: list[str], network: Network
) -> tuple[ConnectionRunner, VenueStatus, trio.MemoryReceiveChannel[list[MarketData]]]:
    status = VenueStatus("coinbase")
    send, published = trio.open_memory_channel[list[MarketData]](1000)
    runner = ConnectionRunner(
        venue=venue, url=venue.default_url, name="coinbase/stream#1", topics=topics,
        settings=RunnerSettings(reconnect_interval=1.0), status=status, records=send,
        validator=Validator(frozenset(RECORDED_PRODUCTS)), open_transport=network.open,
    )
    return runner, status, published


async def test_the_runner_sends_every_subscribe_within_five_seconds_at_most_eight_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Coinbase()
    topics = [t.name for i in range(40) for c in ("trades", "ticker")
              for t in venue.topics(Subscription(f"P{i}-USD", c))]
    network = Network()
    runner, _, _ = make_runner(venue, topics, network)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await network.connected.wait()
        wire = network.wires[0]
        # live changes while connected: one subscribe and one unsubscribe message per channel
        for i in range(40, 60):
            runner.add_topics([f"market_trades:P{i}-USD", f"ticker:P{i}-USD"])
        runner.remove_topics(["ticker:P0-USD", "market_trades:P0-USD"])
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    sent = wire.sent
    assert [(m["type"], m["channel"], len(m.get("product_ids", ()))) for _, m in sent] == [
        ("subscribe", "market_trades", 40), ("subscribe", "ticker", 40), ("subscribe", "heartbeats", 0),
        ("subscribe", "market_trades", 20), ("subscribe", "ticker", 20),
        ("unsubscribe", "ticker", 1), ("unsubscribe", "market_trades", 1),
    ]
    assert all(at < 5.0 for at, _ in sent)  # the first message well within the 5-second rule
    for at, _ in sent:
        assert sum(1 for other, _ in sent if at <= other < at + 1.0) <= 8


async def test_the_runner_counts_recorded_gaps_and_publishes_no_trade_twice_across_a_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Coinbase()
    topics = [t.name for p in RECORDED_PRODUCTS for c in ("trades", "ticker")
              for t in venue.topics(Subscription(p, c))]
    network = Network()
    runner, status, published = make_runner(venue, topics, network)
    # the recording's replies answer another client's requests: replay the data, not them
    replay = [(line, msg) for line, msg in recorded() if msg["channel"] != "subscriptions"]
    missed = replay[-1][1]["sequence_num"] + 1 - len(replay)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        for attempt in range(2):
            while len(network.wires) <= attempt:
                await network.connected.wait()
            wire = network.wires[attempt]
            for frame in now_frames([line for line, _ in replay], datetime.now(UTC)):
                await wire.push.send(frame)
            await trio.testing.wait_all_tasks_blocked()
            if attempt == 0:
                await wire.push.send(TransportError("closed by peer: code 1006"))
        nursery.cancel_scope.cancel()
    got: list[MarketData] = []
    events: list[object] = []
    while True:
        try:
            item = published.receive_nowait()
        except trio.WouldBlock:
            break
        if isinstance(item, list):
            got += item
        else:
            events.append(item)
    assert [type(e).__name__ for e in events] == ["Disconnected", "Reconnected"]
    trades = [r for r in got if r.kind == "trade"]
    assert len(trades) == 79  # the second connection's snapshot and updates published none again
    assert sum(r.kind == "ticker" for r in got) == 2 * 160
    assert status.sequence_gaps > 0
    assert status.messages_missed == 2 * missed
    assert status.decode_errors == 0
    assert status.reconnects >= 1


def test_parse_instruments_follows_the_documented_pagination_cursor() -> None:
    venue = Coinbase()
    first = venue.parse_instruments({
        "products": [product("A-USD")], "num_products": 1,
        "pagination": {"next_cursor": "Mg==", "has_next": True, "prev_cursor": "", "has_prev": False},
    })
    assert first.symbols == frozenset({"A-USD"})
    assert venue.instruments_path(first.cursor) == "/api/v3/brokerage/market/products?cursor=Mg%3D%3D"
    last = venue.parse_instruments({
        "products": [product("B-USD")], "num_products": 1,
        "pagination": {"next_cursor": "", "has_next": False},
    })
    assert last.cursor is None


def test_market_trades_are_asked_without_a_key_and_read_oldest_first() -> None:
    venue = Coinbase()
    assert venue.recent_path("BTC-USD", 1000) == "/api/v3/brokerage/market/products/BTC-USD/ticker?limit=1000"
    body = {"trades": [
        {"trade_id": "995098663", "product_id": "BTC-USD", "price": "68923.67", "size": "0.00064",
         "time": "2026-04-07T00:28:58.544778Z", "side": "SELL", "bid": "", "ask": "", "exchange": "coinbase"},
        {"trade_id": "995098662", "product_id": "BTC-USD", "price": "68923.67", "size": "0.00123858",
         "time": "2026-04-07T00:28:58.250358Z", "side": "BUY", "bid": "", "ask": "", "exchange": "coinbase"},
    ], "best_bid": "68923.66", "best_ask": "68923.67"}
    at = datetime(2026, 12, 7, tzinfo=UTC)
    first, second = venue.parse_recent("BTC-USD", body, at)
    assert [first.trade_id, second.trade_id] == ["995098662", "995098663"]
    assert first.volume == 0.00123858 and first.timestamp < second.timestamp
    with pytest.raises(ValueError, match="'trades' list"):
        venue.parse_recent("BTC-USD", {"error": "NOT_FOUND"}, at)
