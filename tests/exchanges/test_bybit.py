"""The Bybit v5 adapter driven with literal frames: documented samples, recorded traffic, the
simulator's protocol object, and a list of bad inputs."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio

from feedd.exchanges import make_venue, venue_ids
from feedd.exchanges.base import (
    CHANNELS,
    DecodeError,
    Event,
    Ignored,
    InstrumentPage,
    Message,
    Pong,
    Retry,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
)
from feedd.exchanges.bybit import BybitInverse, BybitLinear, BybitSession, BybitSpot, _BybitVenue
from feedd.feed.instruments import load_instruments
from feedd.feed.validate import Validator
from feedd.model import MarketData
from feedd.sim import BybitSimulator
from feedd.sim.bybit import BybitConnection, BybitProtocol
from feedd.sim.protocol import Accept
from feedd.sim.rest import HttpRequest, HttpResponse

# The recorded frames these tests read (the recorded_*.ndjson fixtures, and ../shared's full
# recordings) are AGPL-3.0-or-later captures from cryptofeed's `v3` branch: test input only, never
# shipped; nothing made from them goes into feedd/
# (tests/fixtures/bybit/README.md; the simulator's tapes: feedd/sim/data/bybit/README.md).
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bybit"
RECORDED_LINEAR = FIXTURES / "recorded_linear_2026-08-09.ndjson"
RECORDED_SPOT = FIXTURES / "recorded_spot_2026-08-09.ndjson"
#: the project's full recordings, in ../shared beside the clone (CI checks it out there)
FULL_RECORDINGS = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "recorded" / "bybit"

RECEIVED = datetime(2023, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def at_ms(ms: int) -> datetime:
    """Reference conversion, exact by construction."""
    return EPOCH + timedelta(milliseconds=ms)


def session(venue: _BybitVenue | None = None) -> BybitSession:
    made = (venue or BybitLinear()).new_session()
    assert isinstance(made, BybitSession)
    return made


def frame(obj: Any) -> str:
    return orjson.dumps(obj).decode()


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
    """The decoded JSON of every request sent; requests go out as text frames."""
    assert all(isinstance(f, str) for f in frames)
    return [orjson.loads(f) for f in frames]


def reply(req_id: str, *, success: bool = True, ret_msg: str = "", op: str = "subscribe") -> str:
    return frame({"success": success, "ret_msg": ret_msg, "conn_id": "c", "req_id": req_id, "op": op})


def book(symbol: str, bid: str | None, ask: str | None, kind: str = "snapshot") -> str:
    """An ``orderbook.1`` frame in the documented shape ([ob]; the recordings hold depth 200)."""
    data = {
        "s": symbol,
        "b": [[bid, "1.5"]] if bid is not None else [],
        "a": [[ask, "2.5"]] if ask is not None else [],
        "u": 7,
        "seq": 9,
    }
    return frame({"topic": f"orderbook.1.{symbol}", "type": kind, "ts": 1673853746003, "data": data,
                  "cts": 1673853746001})


def recorded(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for line in path.read_text().splitlines():
        yield line, json.loads(line)


# ---- venue facts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("venue", "venue_id", "url", "category", "per_request"),
    [
        (BybitSpot, "bybit", "wss://stream.bybit.com/v5/public/spot", "spot", 10),
        (BybitLinear, "bybit-linear", "wss://stream.bybit.com/v5/public/linear", "linear", 100),
        (BybitInverse, "bybit-inverse", "wss://stream.bybit.com/v5/public/inverse", "inverse", 100),
    ],
)
def test_each_venue_states_its_protocol_facts(
    venue: type[_BybitVenue], venue_id: str, url: str, category: str, per_request: int
) -> None:
    made = venue()
    assert made.venue_id == venue_id
    assert made.default_url == url
    assert made.default_rest_url == "https://api.bybit.com"
    assert made.category == category
    assert made.max_args_per_request == per_request
    assert made.ping_interval == 20.0  # Bybit's recommendation ([connect])
    assert made.ping_mode == "always"
    assert made.pong_timeout == 10.0
    assert made.uppercase_symbols is True
    assert made.max_streams_per_connection == 400
    # [connect] "you cannot have length of 'args' array over 21,000 characters", whatever the symbols
    assert made.max_chars_per_connection == 21_000


def test_registry_discovers_the_three_bybit_venues() -> None:
    assert {"bybit", "bybit-linear", "bybit-inverse"} <= set(venue_ids())
    assert isinstance(make_venue("bybit"), BybitSpot)
    assert isinstance(make_venue("bybit-linear"), BybitLinear)
    assert isinstance(make_venue("bybit-inverse"), BybitInverse)
    assert make_venue("bybit") is not make_venue("bybit")


def test_spot_ticker_channel_adds_the_level_one_book_for_bid_and_ask() -> None:
    venue = BybitSpot()
    assert venue.topics(Subscription("BTCUSDT", "trades")) == [Topic("", "publicTrade.BTCUSDT")]
    assert venue.topics(Subscription("BTCUSDT", "ticker")) == [
        Topic("", "tickers.BTCUSDT"),
        Topic("", "orderbook.1.BTCUSDT"),
    ]


@pytest.mark.parametrize("venue", [BybitLinear, BybitInverse])
def test_derivative_tickers_carry_their_own_bid_and_ask(venue: type[_BybitVenue]) -> None:
    made = venue()
    assert made.topics(Subscription("BTC-26DEC25", "ticker")) == [Topic("", "tickers.BTC-26DEC25")]
    assert made.topics(Subscription("BTCUSD", "trades")) == [Topic("", "publicTrade.BTCUSD")]


def test_url_is_the_configured_endpoint_on_the_only_route() -> None:
    venue = BybitLinear()
    assert venue.url("", venue.default_url) == venue.default_url
    assert venue.url("", "ws://127.0.0.1:9001/v5/public/linear") == "ws://127.0.0.1:9001/v5/public/linear"
    with pytest.raises(ValueError, match="route"):
        venue.url("public", venue.default_url)


# ---- requests ---------------------------------------------------------------------------------


def test_subscribe_request_has_the_documented_shape_with_a_string_req_id() -> None:
    documented = sample("subscribe_request.json")
    [sent] = requests(session(BybitSpot()).subscribe(documented["args"]))
    assert sent["op"] == documented["op"] == "subscribe"
    assert sorted(sent["args"]) == sorted(documented["args"])  # books first (see below)
    assert sent["req_id"] == "1"
    assert set(sent) == set(documented)


def test_unsubscribe_request_has_the_documented_shape() -> None:
    documented = sample("unsubscribe_request.json")
    [sent] = requests(session().unsubscribe(documented["args"]))
    assert (sent["op"], sent["args"]) == ("unsubscribe", ["publicTrade.ETHUSD"])
    assert set(sent) == set(documented)


def test_spot_subscribes_at_most_ten_topics_per_request() -> None:
    topics = [f"publicTrade.S{i}USDT" for i in range(25)]
    sent = requests(session(BybitSpot()).subscribe(topics))
    assert [len(r["args"]) for r in sent] == [10, 10, 5]
    assert [r["req_id"] for r in sent] == ["1", "2", "3"]
    assert [t for r in sent for t in r["args"]] == topics


def test_derivatives_subscribe_a_hundred_topics_per_request() -> None:
    topics = [f"tickers.S{i}USDT" for i in range(250)]
    for venue in (BybitLinear(), BybitInverse()):
        assert [len(r["args"]) for r in requests(session(venue).subscribe(topics))] == [100, 100, 50]


def test_req_ids_count_up_across_subscribe_and_unsubscribe_and_afresh_per_session() -> None:
    venue = BybitSpot()
    s = session(venue)
    frames = [*s.subscribe(["tickers.A"]), *s.unsubscribe(["tickers.A"]), *s.subscribe(["tickers.B"])]
    assert [r["req_id"] for r in requests(frames)] == ["1", "2", "3"]
    assert requests(session(venue).subscribe(["tickers.A"]))[0]["req_id"] == "1"


def test_level_one_books_are_requested_before_the_tickers_they_quote() -> None:
    # a spot ticker's bid/ask come from orderbook.1, whose snapshot Bybit sends on subscription:
    # asked for first, it usually arrives before the first ticker
    topics = ["tickers.A", "publicTrade.A", "orderbook.1.A", "tickers.B", "orderbook.1.B"]
    [sent] = requests(session(BybitSpot()).subscribe(topics))
    assert sent["args"] == ["orderbook.1.A", "orderbook.1.B", "tickers.A", "publicTrade.A", "tickers.B"]
    many = [f"{kind}.S{i}" for i in range(8) for kind in ("tickers", "orderbook.1")]
    first, second = requests(session(BybitSpot()).subscribe(many))
    assert first["args"] == [f"orderbook.1.S{i}" for i in range(8)] + ["tickers.S0", "tickers.S1"]
    assert second["args"] == [f"tickers.S{i}" for i in range(2, 8)]


def test_subscribe_of_nothing_sends_nothing() -> None:
    assert session().subscribe([]) == []
    assert session().unsubscribe([]) == []


def test_ping_is_the_documented_json_ping() -> None:
    ping = session().ping()
    assert isinstance(ping, str)
    assert orjson.loads(ping)["op"] == sample("ping_request.json")["op"] == "ping"


# ---- replies ----------------------------------------------------------------------------------


def test_spot_ack_names_the_topics_of_its_request() -> None:
    s = session(BybitSpot())
    s.subscribe(["orderbook.1.BTCUSDT", "publicTrade.BTCUSDT"])
    documented = {**sample("subscribe_ok_spot.json"), "req_id": "1"}  # Bybit echoes our req_id
    assert only(s.decode(frame(documented), RECEIVED)) == SubscribeAck(
        "1", ("orderbook.1.BTCUSDT", "publicTrade.BTCUSDT"), "subscribe"
    )


def test_each_batch_is_acked_with_its_own_topics_in_any_order() -> None:
    s = session(BybitSpot())
    topics = [f"tickers.S{i}USDT" for i in range(15)]
    s.subscribe(topics)
    assert only(s.decode(reply("2", ret_msg="subscribe"), RECEIVED)) == SubscribeAck(
        "2", tuple(topics[10:]), "subscribe"
    )
    assert only(s.decode(reply("1", ret_msg="subscribe"), RECEIVED)) == SubscribeAck(
        "1", tuple(topics[:10]), "subscribe"
    )


def test_unsubscribe_ack_names_its_topics_and_op() -> None:
    s = session()
    s.subscribe(["tickers.BTCUSDT"])
    s.unsubscribe(["tickers.BTCUSDT"])
    assert only(s.decode(reply("2", op="unsubscribe"), RECEIVED)) == SubscribeAck(
        "2", ("tickers.BTCUSDT",), "unsubscribe"
    )


def test_an_ack_without_our_req_id_is_ignored_and_a_request_is_acked_once() -> None:
    s = session()
    s.subscribe(["tickers.BTCUSDT"])
    # the documented linear ack has req_id "" (what Bybit echoes when none was sent); the
    # option/spread ack (an endpoint feedd does not use) has none at all
    assert only(s.decode(json.dumps(sample("subscribe_ok_linear.json")), RECEIVED)) == Ignored()
    assert only(s.decode(json.dumps(sample("subscribe_ok_option.json")), RECEIVED)) == Ignored()
    assert isinstance(only(s.decode(reply("1"), RECEIVED)), SubscribeAck)
    assert only(s.decode(reply("1"), RECEIVED)) == Ignored()


@pytest.mark.parametrize("name", ["pong_spot.json", "pong_linear.json", "pong_option.json"])
def test_every_documented_pong_is_a_pong_never_a_subscribe_ack(name: str) -> None:
    s = session()
    s.subscribe(["tickers.BTCUSDT"])
    # a pending request with req_id "" must not take the linear pong (req_id "") as its ack
    s._pending[""] = ("subscribe", ("tickers.ETHUSDT",))
    assert s.decode(json.dumps(sample(name)), RECEIVED) == [Pong()]
    assert s.decode(reply("1"), RECEIVED) == [SubscribeAck("1", ("tickers.BTCUSDT",), "subscribe")]


# ---- refusals: one bad topic fails the whole request at Bybit ---------------------------------


def test_documented_refusal_names_the_bad_topic_and_retries_its_batch_mates() -> None:
    s = session(BybitSpot())
    s.subscribe(["tickers.BTCUSDT", "tickers.XUSDT", "publicTrade.XUSDT"])
    # the sample carries no req_id: the request is found by the topic the refusal names
    events = s.decode(json.dumps(sample("subscribe_fail.json")), RECEIVED)
    assert events == [
        SubscribeRejected("1", ("tickers.XUSDT",), "Invalid symbol :[tickers.XUSDT]"),
        Retry("subscribe", ("tickers.BTCUSDT", "publicTrade.XUSDT"), "Invalid symbol :[tickers.XUSDT]"),
    ]
    assert s.decode(reply("1"), RECEIVED) == [Ignored()]  # no longer pending


@pytest.mark.parametrize(
    "ret_msg",
    [
        "error:handler not found,topic:tickers.XUSDTX",
        "Invalid symbol :[tickers.XUSDTX]",
        "tickers.XUSDTX: no such symbol",  # a wording never seen: the topic is still a word of it
    ],
)
def test_a_refusal_names_exactly_the_topic_it_mentions(ret_msg: str) -> None:
    s = session()
    s.subscribe(["tickers.XUSDT", "tickers.XUSDTX", "tickers.X"])  # prefixes of the bad one
    events = s.decode(reply("1", success=False, ret_msg=ret_msg), RECEIVED)
    assert events == [
        SubscribeRejected("1", ("tickers.XUSDTX",), ret_msg),
        Retry("subscribe", ("tickers.XUSDT", "tickers.X"), ret_msg),
    ]


def test_a_refusal_of_a_single_topic_request_needs_no_retry() -> None:
    s = session()
    s.subscribe(["tickers.XUSDT"])
    events = s.decode(reply("1", success=False, ret_msg="error:handler not found,topic:tickers.XUSDT"),
                      RECEIVED)
    reason = "error:handler not found,topic:tickers.XUSDT"
    assert events == [SubscribeRejected("1", ("tickers.XUSDT",), reason)]


def test_an_already_subscribed_topic_is_acked_and_the_rest_retried() -> None:
    s = session()
    s.subscribe(["tickers.BTCUSDT", "tickers.ETHUSDT"])
    ret_msg = "error:already subscribed,topic:tickers.BTCUSDT"
    assert s.decode(reply("1", success=False, ret_msg=ret_msg), RECEIVED) == [
        SubscribeAck("1", ("tickers.BTCUSDT",), "subscribe"),
        Retry("subscribe", ("tickers.ETHUSDT",), ret_msg),
    ]


def test_a_refusal_naming_no_topic_retries_each_topic_in_a_request_of_its_own() -> None:
    s = session(BybitSpot())
    batch = ["tickers.A", "tickers.B", "tickers.C"]
    s.subscribe(batch)
    assert s.decode(reply("1", success=False, ret_msg="args size >10"), RECEIVED) == [
        Retry("subscribe", tuple(batch), "args size >10")
    ]
    # the runner asks again (with one more topic added meanwhile): the suspects go one by one
    sent = requests(s.subscribe([*batch, "tickers.D"]))
    assert [r["args"] for r in sent] == [["tickers.A"], ["tickers.B"], ["tickers.C"], ["tickers.D"]]
    # so the next refusal is attributed even though it names nothing
    assert s.decode(reply("3", success=False, ret_msg="oops"), RECEIVED) == [
        SubscribeRejected("3", ("tickers.B",), "oops")
    ]
    # isolation is one-off: a later subscribe batches again
    assert len(s.subscribe(batch)) == 1


def test_a_refusal_of_an_unsubscribe_retries_the_unsubscribe_of_the_rest() -> None:
    s = session()
    s.unsubscribe(["tickers.A", "tickers.B"])
    ret_msg = "error:handler not found,topic:tickers.B"
    assert s.decode(reply("1", success=False, ret_msg=ret_msg, op="unsubscribe"), RECEIVED) == [
        SubscribeRejected("1", ("tickers.B",), ret_msg),
        Retry("unsubscribe", ("tickers.A",), ret_msg),
    ]


def test_a_refusal_of_no_known_request_is_reported_unattributed() -> None:
    s = session()
    assert s.decode(reply("", success=False, ret_msg="error:invalid op", op=""), RECEIVED) == [
        SubscribeRejected(None, (), "error:invalid op")
    ]
    assert s.decode(reply("77", success=False, ret_msg="nope"), RECEIVED) == [
        SubscribeRejected("77", (), "nope")
    ]
    failure = {"success": False, "conn_id": "c", "op": "subscribe"}
    [error] = s.decode(frame(failure), RECEIVED)
    assert isinstance(error, SubscribeRejected) and "refused" in error.reason


def negotiate(
    protocol: BybitProtocol, conn: BybitConnection, s: BybitSession, topics: list[str]
) -> list[Event]:
    """Play the session against the simulator's protocol object until nothing is left to send,
    doing what the runner does with a Retry (everything is still wanted here)."""
    events: list[Event] = []
    outgoing = list(s.subscribe(topics))
    while outgoing:
        answer = protocol.receive(conn, str(outgoing.pop(0)))
        for text in answer.frames:
            for event in s.decode(text, RECEIVED):
                events.append(event)
                if isinstance(event, Retry):
                    outgoing.extend(s.subscribe(list(event.topics)))
    return events


@pytest.mark.parametrize("category", ["spot", "linear", "inverse"])
def test_invalid_symbols_are_refused_by_name_while_their_batch_mates_get_subscribed(category: str) -> None:
    good = "BTCUSD" if category == "inverse" else "BTCUSDT"
    protocol = BybitProtocol(symbols={"spot": [good], "linear": [good], "inverse": [good]})
    opened = protocol.open(f"/v5/public/{category}", "")
    assert isinstance(opened, Accept)
    conn = opened.connection
    venue = {"spot": BybitSpot, "linear": BybitLinear, "inverse": BybitInverse}[category]()
    topics = sorted(
        t.name for symbol in (good, "NOPEUSDT", "ZZZUSDT") for channel in CHANNELS
        for t in venue.topics(Subscription(symbol, channel))
    )
    events = negotiate(protocol, conn, session(venue), topics)
    refused = {t for e in events if isinstance(e, SubscribeRejected) for t in e.topics}
    acked = {t for e in events if isinstance(e, SubscribeAck) for t in e.topics}
    assert refused == {t for t in topics if good not in t}
    assert acked == set(conn.topics) == {t for t in topics if good in t}
    assert all(e.topics for e in events if isinstance(e, SubscribeRejected))


# ---- trades -----------------------------------------------------------------------------------


def test_documented_trade_decodes_with_every_field() -> None:
    record = market_data(session().decode(json.dumps(sample("linear_publicTrade.json")), RECEIVED))
    assert record == MarketData(
        exchange="bybit-linear",
        symbol="BTCUSDT",
        kind="trade",
        price=16578.5,
        volume=0.001,
        timestamp=at_ms(1672304486865),  # T, the fill time
        received_at=RECEIVED,
        side="buy",  # S is the taker's side (§1.6, §4)
        trade_id="20f43950-d8dd-5b31-9112-a178eb6023af",
    )
    assert record.received_at is RECEIVED


def test_every_element_of_a_trade_message_is_one_record_in_order() -> None:
    message = sample("linear_publicTrade.json")
    first = message["data"][0]
    message["data"] = [
        first,
        {**first, "S": "Sell", "i": "second", "p": "16578.00", "v": "2.5", "T": 1672304486866},
        {**first, "i": "block", "BT": True, "RPI": False},
        {**first, "i": "rpi", "BT": False, "RPI": True},
    ]
    records = [e for e in session().decode(frame(message), RECEIVED) if isinstance(e, MarketData)]
    assert [r.trade_id for r in records] == [first["i"], "second", "block", "rpi"]
    assert (records[1].side, records[1].price, records[1].volume) == ("sell", 16578.0, 2.5)
    assert records[1].timestamp == at_ms(1672304486866)
    # block and RPI trades are printed on the tape: passed through as ordinary trades
    assert records[2].price == records[3].price == 16578.5


def test_a_bad_trade_is_a_decode_error_and_its_neighbours_still_decode() -> None:
    message = sample("linear_publicTrade.json")
    good = message["data"][0]
    message["data"] = [good, {**good, "S": "Hold"}, {**good, "i": "after"}]
    events = session().decode(frame(message), RECEIVED)
    assert [type(e) for e in events] == [MarketData, DecodeError, MarketData]
    assert isinstance(events[1], DecodeError) and "'S' is not Buy or Sell" in events[1].reason


def test_inverse_trade_sizes_in_usd_contracts_become_base_volume() -> None:
    message = sample("linear_publicTrade.json")
    message["topic"] = "publicTrade.BTCUSD"
    message["data"][0] |= {"s": "BTCUSD", "v": "5000", "p": "20000.00"}
    record = market_data(session(BybitInverse()).decode(frame(message), RECEIVED))
    assert (record.exchange, record.symbol, record.price) == ("bybit-inverse", "BTCUSD", 20000.0)
    assert record.volume == 0.25  # 5000 contracts of 1 USD at 20,000 USD per BTC


@pytest.mark.parametrize("ms", [0, 999, 1672304486865, 1786310817583, 4102444799999])
def test_trade_times_are_exact_to_the_millisecond(ms: int) -> None:
    message = sample("linear_publicTrade.json")
    message["data"][0]["T"] = ms
    assert market_data(session().decode(frame(message), RECEIVED)).timestamp == at_ms(ms)


# ---- spot tickers: full snapshots, bid/ask from orderbook.1 -----------------------------------


def test_spot_ticker_sample_in_percent_without_a_quote_has_no_bid_ask() -> None:
    record = market_data(session(BybitSpot()).decode(json.dumps(sample("spot_tickers.json")), RECEIVED))
    assert record == MarketData(
        exchange="bybit",
        symbol="BTCUSDT",
        kind="ticker",
        price=21109.77,
        volume=6780.866843,  # volume24h, base units
        timestamp=at_ms(1673853746003),  # ts
        received_at=RECEIVED,
        bid=None,
        ask=None,
        high_24h=21426.99,
        low_24h=20575.0,
        change_24h=1.96,  # price24hPcnt "0.0196" is a fraction
    )


def test_spot_ticker_takes_bid_ask_from_a_level_one_book_of_another_session() -> None:
    venue = BybitSpot()
    books, tickers = session(venue), session(venue)
    assert books.decode(book("BTCUSDT", "21109.7", "21109.8"), RECEIVED) == [Ignored()]
    record = market_data(tickers.decode(json.dumps(sample("spot_tickers.json")), RECEIVED))
    assert (record.bid, record.ask) == (21109.7, 21109.8)


def test_level_one_deltas_replace_and_delete_levels() -> None:
    venue = BybitSpot()
    s = session(venue)
    s.decode(book("BTCUSDT", "100.5", "101.0"), RECEIVED)
    s.decode(book("BTCUSDT", "100.6", None, kind="delta"), RECEIVED)
    assert venue.quotes.get("BTCUSDT", RECEIVED) == (100.6, 101.0)
    delta = {"topic": "orderbook.1.BTCUSDT", "type": "delta", "ts": 1, "data": {
        "s": "BTCUSDT", "b": [["100.6", "0"], ["100.4", "3"]], "a": [["100.9", "1"], ["101.0", "0"]]}}
    s.decode(frame(delta), RECEIVED)
    assert venue.quotes.get("BTCUSDT", RECEIVED) == (100.4, 100.9)
    one_sided = {**delta, "data": {"s": "BTCUSDT", "b": [], "a": [["100.9", "0"]]}}
    s.decode(frame(one_sided), RECEIVED)
    assert venue.quotes.get("BTCUSDT", RECEIVED) == (None, None)  # no ask: no quote to attach


def test_a_book_delta_before_its_snapshot_is_a_decode_error() -> None:
    error = decode_error(session(BybitSpot()).decode(book("BTCUSDT", "1", "2", kind="delta"), RECEIVED))
    assert "before its snapshot" in error.reason


def test_spot_ticker_ignores_a_quote_older_than_quote_max_age() -> None:
    venue = BybitSpot()
    venue.quote_max_age = 2.0
    s = session(venue)
    s.decode(book("BTCUSDT", "1.5", "2.5"), RECEIVED)
    ticker = json.dumps(sample("spot_tickers.json"))
    fresh = market_data(s.decode(ticker, RECEIVED + timedelta(seconds=2)))
    assert (fresh.bid, fresh.ask) == (1.5, 2.5)
    stale = market_data(s.decode(ticker, RECEIVED + timedelta(seconds=2.001)))
    assert (stale.bid, stale.ask) == (None, None)


def test_quotes_are_dropped_when_the_connection_that_carried_them_is_lost() -> None:
    venue = BybitSpot()
    books, tickers = session(venue), session(venue)
    books.subscribe(["orderbook.1.BTCUSDT"])
    books.decode(book("BTCUSDT", "1.5", "2.5"), RECEIVED)
    tickers.subscribe(["tickers.BTCUSDT"])
    tickers.connection_lost()  # another connection's loss leaves the quote alone
    assert venue.quotes.get("BTCUSDT", RECEIVED) == (1.5, 2.5)
    books.connection_lost()
    assert "BTCUSDT" not in venue.quotes


@pytest.mark.parametrize("op", ["subscribe", "unsubscribe"])
def test_a_book_request_forgets_the_cached_quote(op: str) -> None:
    venue = BybitSpot()
    s = session(venue)
    s.decode(book("BTCUSDT", "1.5", "2.5"), RECEIVED)
    s.decode(book("ETHUSDT", "3.5", "4.5"), RECEIVED)
    getattr(session(venue), op)(["orderbook.1.BTCUSDT"])  # e.g. a reconnected session
    assert "BTCUSDT" not in venue.quotes
    assert venue.quotes.get("ETHUSDT", RECEIVED) == (3.5, 4.5)


# ---- linear / inverse tickers: snapshot, then deltas merged ------------------------------------


def test_linear_snapshot_sample_carries_its_own_bid_ask_and_percent() -> None:
    record = market_data(session().decode(json.dumps(sample("linear_tickers_snapshot.json")), RECEIVED))
    assert record == MarketData(
        exchange="bybit-linear",
        symbol="BTCUSDT",
        kind="ticker",
        price=66666.6,
        volume=73191.387,
        timestamp=at_ms(1760325052630),
        received_at=RECEIVED,
        bid=66666.6,
        ask=66666.7,
        high_24h=79266.3,
        low_24h=65076.9,
        change_24h=-15.8315,  # exactly: "-0.158315" shifted, not -0.158315 * 100
        bid_size=23789.165,  # bid1Size
        ask_size=23775.469,  # ask1Size
    )


def test_a_delta_keeps_every_field_it_does_not_hold() -> None:
    s = session()
    s.decode(json.dumps(sample("linear_tickers_snapshot.json")), RECEIVED)
    later = RECEIVED + timedelta(seconds=1)
    record = market_data(s.decode(json.dumps(sample("linear_tickers_delta_unofficial.json")), later))
    assert record.bid == 79114.5  # from the delta
    assert (record.price, record.volume, record.ask) == (66666.6, 73191.387, 66666.7)  # kept
    assert (record.high_24h, record.low_24h, record.change_24h) == (79266.3, 65076.9, -15.8315)
    assert record.timestamp == at_ms(1787590405983)  # the delta's own ts
    assert record.received_at is later


def test_a_delta_before_its_snapshot_is_a_decode_error_never_a_half_record() -> None:
    delta = json.dumps(sample("linear_tickers_delta_unofficial.json"))
    error = decode_error(session().decode(delta, RECEIVED))
    assert error.reason == "ticker delta for BTCUSDT before its snapshot"


def test_ticker_state_starts_over_on_reconnect_and_on_a_new_snapshot() -> None:
    venue = BybitLinear()
    first = session(venue)
    first.decode(json.dumps(sample("linear_tickers_snapshot.json")), RECEIVED)
    delta = json.dumps(sample("linear_tickers_delta_unofficial.json"))
    assert isinstance(only(first.decode(delta, RECEIVED)), MarketData)
    first.connection_lost()
    second = session(venue)  # the runner makes a fresh session per connection attempt
    assert isinstance(only(second.decode(delta, RECEIVED)), DecodeError)
    # a new snapshot replaces the state: no field of the old one survives
    snapshot = sample("linear_tickers_snapshot.json")
    snapshot["data"] = {"symbol": "BTCUSDT", "lastPrice": "1.5", "volume24h": "2"}
    record = market_data(first.decode(frame(snapshot), RECEIVED))
    assert (record.price, record.bid, record.high_24h, record.change_24h) == (1.5, None, None, None)


def test_resubscribing_a_ticker_waits_for_its_new_snapshot() -> None:
    s = session()
    s.decode(json.dumps(sample("linear_tickers_snapshot.json")), RECEIVED)
    s.unsubscribe(["tickers.BTCUSDT"])
    s.subscribe(["tickers.BTCUSDT"])
    delta = json.dumps(sample("linear_tickers_delta_unofficial.json"))
    assert isinstance(only(s.decode(delta, RECEIVED)), DecodeError)


def test_futures_snapshot_with_empty_funding_fields_decodes() -> None:
    snapshot = json.dumps(sample("linear_futures_tickers_snapshot.json"))
    record = market_data(session().decode(snapshot, RECEIVED))
    assert (record.symbol, record.price, record.volume) == ("BTC-26DEC25", 109401.5, 0.0)
    assert record.change_24h == 0.0
    assert (record.bid, record.ask) == (111254.5, 131001.0)


def test_inverse_ticker_volume_is_the_base_coin_turnover() -> None:
    snapshot = sample("linear_tickers_snapshot.json")
    snapshot["topic"] = "tickers.BTCUSD"
    # market/tickers' inverse example: volume24h in USD contracts, turnover24h in BTC
    snapshot["data"] |= {"symbol": "BTCUSD", "volume24h": "49337318", "turnover24h": "2352.94950046"}
    record = market_data(session(BybitInverse()).decode(frame(snapshot), RECEIVED))
    assert (record.exchange, record.volume) == ("bybit-inverse", 2352.94950046)


@pytest.mark.parametrize(
    ("fraction", "percent"),
    [("0.0196", 1.96), ("-0.158315", -15.8315), ("0", 0.0), ("0.001624", 0.1624), ("1e-05", 0.001),
     ("-0.0049", -0.49), ("12.5", 1250.0), ("", None)],
)
def test_change_is_the_fraction_in_percent_exactly(fraction: str, percent: float | None) -> None:
    message = sample("spot_tickers.json")
    message["data"]["price24hPcnt"] = fraction
    assert market_data(session(BybitSpot()).decode(frame(message), RECEIVED)).change_24h == percent


# ---- recorded traffic -------------------------------------------------------------------------


def expected_counts(path: Path) -> Counter[str]:
    """Records per topic the recording holds: one per trade in publicTrade.data, one per ticker."""
    counts: Counter[str] = Counter()
    for _, message in recorded(path):
        topic = message.get("topic", "")
        if topic.startswith("publicTrade."):
            counts[topic] += len(message["data"])
        elif topic.startswith("tickers."):
            counts[topic] += 1
    return counts


@pytest.mark.parametrize(("path", "venue"), [(RECORDED_LINEAR, BybitLinear), (RECORDED_SPOT, BybitSpot)])
def test_every_recorded_frame_decodes_with_a_record_per_trade_and_ticker(
    path: Path, venue: type[_BybitVenue]
) -> None:
    s = session(venue())
    counts: Counter[str] = Counter()
    replies = unhandled = 0
    for line, message in recorded(path):
        events = s.decode(line, RECEIVED)
        topic = message.get("topic")
        if topic is None:  # the recorder sent no req_id: nothing to attribute
            assert events == [Ignored()]
            replies += 1
        elif topic.startswith(("orderbook.200.", "kline.")):
            assert decode_error(events).reason == f"unhandled topic {topic!r}"
            unhandled += 1
        else:
            assert all(isinstance(e, MarketData) for e in events), events
            counts[topic] += len(events)
    assert counts == expected_counts(path)
    assert unhandled == 6
    if venue is BybitLinear:
        assert sum(counts[t] for t in counts if t.startswith("publicTrade.")) == 327
        assert sum(counts[t] for t in counts if t.startswith("tickers.")) == 758
        assert replies == 17
    else:
        assert sum(counts[t] for t in counts if t.startswith("publicTrade.")) == 20
        assert sum(counts[t] for t in counts if t.startswith("tickers.")) == 81
        assert replies == 7


def full_recording(name: str) -> Path:
    """A full recording of ../shared; missing, it fails the test under CI and skips it elsewhere."""
    path = FULL_RECORDINGS / name
    if not path.is_file():
        reason = f"{path} is missing: the full recordings come with ../shared beside the clone"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


#: what the recorder subscribed and feedd never does: the only topics allowed a DecodeError
NOT_SUBSCRIBED = ("orderbook.200", "kline.1")


@pytest.mark.parametrize(
    ("name", "venue", "trades", "tickers", "acks"),
    [
        ("cryptofeed_bybit_v5_linear_2026-08-09.ndjson", BybitLinear, 327, 758, 17),
        ("cryptofeed_bybit_v5_spot_2026-08-09.ndjson", BybitSpot, 20, 81, 7),
    ],
)
def test_every_frame_of_the_full_recordings_decodes_with_a_record_per_trade_and_ticker(
    name: str, venue: type[_BybitVenue], trades: int, tickers: int, acks: int
) -> None:
    lines = full_recording(name).read_text().splitlines()
    # what the recording holds, counted from the raw JSON alone
    expected: Counter[str] = Counter()
    unhandled: Counter[str] = Counter()
    replies = 0
    for line in lines:
        message = json.loads(line)
        topic = message.get("topic")
        if topic is None:
            replies += 1
        elif topic.startswith("publicTrade."):
            expected[topic] += len(message["data"])
        elif topic.startswith("tickers."):
            expected[topic] += 1
        else:
            unhandled[topic] += 1
    # what the adapter makes of it, frame by frame and in order (ticker deltas need their snapshot)
    s = session(venue())
    records: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    ignored = 0
    for line in lines:
        for event in s.decode(line, RECEIVED):
            if isinstance(event, MarketData):
                records[f"{'publicTrade' if event.kind == 'trade' else 'tickers'}.{event.symbol}"] += 1
            elif isinstance(event, DecodeError):
                assert event.reason.startswith("unhandled topic "), event
                errors[json.loads(line)["topic"]] += 1
            else:
                assert event == Ignored(), event  # a subscribe ack without our req_id
                ignored += 1
    assert records == expected
    assert errors == unhandled
    assert {topic.rpartition(".")[0] for topic in errors} == set(NOT_SUBSCRIBED)
    assert ignored == replies == acks
    # the whole recording, as its README counts it, not a trimmed copy
    assert sum(n for topic, n in records.items() if topic.startswith("publicTrade.")) == trades
    assert sum(n for topic, n in records.items() if topic.startswith("tickers.")) == tickers


@pytest.mark.parametrize(("path", "venue"), [(RECORDED_LINEAR, BybitLinear), (RECORDED_SPOT, BybitSpot)])
def test_every_recorded_trade_keeps_its_fields_and_passes_validation(
    path: Path, venue: type[_BybitVenue]
) -> None:
    s = session(venue())
    validator = Validator(frozenset({"BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"}))
    trades = []
    for line, message in recorded(path):
        if message.get("topic", "").startswith("publicTrade."):
            records = s.decode(line, RECEIVED)
            assert len(records) == len(message["data"])
            trades.extend(zip(records, message["data"], strict=True))
    for record, trade in trades:
        assert isinstance(record, MarketData)
        assert (record.kind, record.symbol, record.trade_id) == ("trade", trade["s"], trade["i"])
        assert record.price == float(trade["p"]) and record.volume == float(trade["v"])
        assert record.side == trade["S"].lower()
        assert record.timestamp == at_ms(trade["T"])
        assert validator.reason(attrs.evolve(record, received_at=record.timestamp)) is None
    assert {r.side for r, _ in trades} == {"buy", "sell"}


def test_recorded_linear_deltas_merged_reproduce_the_full_ticker_at_every_step() -> None:
    s = session()
    state: dict[str, dict[str, str]] = {}  # reference: the last value Bybit gave for each field
    steps = 0
    for line, message in recorded(RECORDED_LINEAR):
        if not message.get("topic", "").startswith("tickers."):
            continue
        data = message["data"]
        if message["type"] == "snapshot":
            state[data["symbol"]] = dict(data)
        else:
            for key, value in data.items():
                state[data["symbol"]][key] = value
        full = state[data["symbol"]]
        record = market_data(s.decode(line, RECEIVED))
        assert record.symbol == full["symbol"]
        assert record.price == float(full["lastPrice"])
        assert record.volume == float(full["volume24h"])
        assert (record.bid, record.ask) == (float(full["bid1Price"]), float(full["ask1Price"]))
        assert (record.high_24h, record.low_24h) == (float(full["highPrice24h"]), float(full["lowPrice24h"]))
        assert record.change_24h == round(float(full["price24hPcnt"]) * 100, 4)
        assert record.timestamp == at_ms(message["ts"])
        assert s._tickers[record.symbol] == full
        steps += 1
    assert steps == 758
    assert {symbol: len(fields) for symbol, fields in state.items()} == {
        "BTCUSDT": 27, "ETHUSDT": 27, "SOLUSDT": 27, "DOGEUSDT": 27,  # no delta adds a field
    }


def test_recorded_spot_tickers_carry_the_quote_of_the_level_one_book() -> None:
    venue = BybitSpot()
    s = session(venue)
    with_quote = 0
    for line, message in recorded(RECORDED_SPOT):
        if not message.get("topic", "").startswith("tickers."):
            continue
        symbol = message["data"]["symbol"]
        s.decode(book(symbol, "100.1", "100.2"), RECEIVED)
        record = market_data(s.decode(line, RECEIVED))
        assert (record.bid, record.ask) == (100.1, 100.2)
        assert record.change_24h == round(float(message["data"]["price24hPcnt"]) * 100, 2)
        with_quote += 1
    assert with_quote == 81


# ---- bad input never raises -------------------------------------------------------------------

TRADE = sample("linear_publicTrade.json")
TRADE_ITEM = TRADE["data"][0]
TICKER = sample("linear_tickers_snapshot.json")


def trade_with(**fields: Any) -> str:
    return frame({**TRADE, "data": [{**TRADE_ITEM, **fields}]})


def trade_without(key: str) -> str:
    return frame({**TRADE, "data": [{k: v for k, v in TRADE_ITEM.items() if k != key}]})


def ticker_with(**fields: Any) -> str:
    return frame({**TICKER, "data": {**TICKER["data"], **fields}})


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        ("", "malformed JSON"),
        ("[1, 2]", "not a JSON object"),
        ("null", "not a JSON object"),
        ("{}", "not a topic message, pong or reply"),
        ('{"topic": 7, "data": []}', "'topic' is not a string"),
        ('{"topic": "orderbook.50.BTCUSDT", "data": {}}', "unhandled topic 'orderbook.50.BTCUSDT'"),
        ('{"topic": "kline.1.BTCUSDT", "data": []}', "unhandled topic"),
        ('{"topic": "publicTrade", "data": []}', "unhandled topic"),
        ('{"topic": "publicTrade.BTCUSDT"}', "missing field 'data'"),
        (frame({**TRADE, "data": TRADE_ITEM}), "'data' is not a list"),
        (frame({**TRADE, "data": [None]}), "TypeError"),
        (trade_without("p"), "missing field 'p'"),
        (trade_without("S"), "missing field 'S'"),
        (trade_without("i"), "missing field 'i'"),
        (trade_with(S="buy"), "'S' is not Buy or Sell"),
        (trade_with(S=["Buy"]), "TypeError"),
        (trade_with(p="abc"), "ValueError"),
        (trade_with(v=None), "TypeError"),
        (trade_with(T="1672304486865"), "'T' is not integer milliseconds"),
        (trade_with(T=2**62), "bad trade"),
        (trade_with(i=12345), "'i' is not a string"),
        (trade_with(s=5), "'s' is not a string"),
        (frame({**TICKER, "data": [TICKER["data"]]}), "'data' is not an object"),
        (frame({k: v for k, v in TICKER.items() if k != "ts"}), "missing field 'ts'"),
        (frame({**TICKER, "ts": "1760325052630"}), "'ts' is not integer milliseconds"),
        (frame({**TICKER, "type": "update"}), "'type' is neither snapshot nor delta"),
        (frame({k: v for k, v in TICKER.items() if k != "type"}), "missing field 'type'"),
        (ticker_with(lastPrice=""), "ValueError"),
        (ticker_with(volume24h=None), "TypeError"),
        (ticker_with(price24hPcnt="x"), "'price24hPcnt' is not a number"),
        (ticker_with(price24hPcnt="sNaN"), "'price24hPcnt' is not a number"),
        (ticker_with(price24hPcnt=0.5), "'price24hPcnt' is not a string"),
        (ticker_with(price24hPcnt="1e999999999"), "'price24hPcnt' is not a number"),
        (frame({k: v for k, v in TICKER.items() if k != "data"} | {"data": {"lastPrice": "1"}}), "volume24h"),
        (book("BTCUSDT", "x", "1"), "ValueError"),
        (book("BTCUSDT", "1", "2").replace('"b":[["1","1.5"]]', '"b":[["1"]]'), "ValueError"),
        (book("BTCUSDT", "1", "2").replace('"b":[["1","1.5"]]', '"b":[[]]'), "ValueError"),
        (book("BTCUSDT", "1", "2").replace('"b":[["1","1.5"]]', '"b":{"1":"2"}'), "side is not a list"),
        ('{"topic": "orderbook.1.BTCUSDT", "type": "snapshot", "data": {"a": []}}', "missing field 'b'"),
        ('{"topic": "orderbook.1.BTCUSDT", "type": "x", "data": {}}', "neither snapshot nor delta"),
        ('{"success": "yes", "ret_msg": "", "op": "subscribe"}', "'success' is not a boolean"),
    ],
)
def test_bad_frame_is_a_decode_error_naming_the_problem(raw: str | bytes, why: str) -> None:
    error = decode_error(session().decode(raw, RECEIVED))
    assert why in error.reason
    assert len(error.frame) <= 203


def test_every_truncation_of_a_frame_decodes_without_raising() -> None:
    lines = RECORDED_LINEAR.read_text().splitlines()
    s = session()
    for line in (lines[0], next(x for x in lines if "publicTrade" in x)):
        for end in range(len(line)):
            events = s.decode(line[:end], RECEIVED)
            assert all(isinstance(e, DecodeError | MarketData) for e in events)


@pytest.mark.parametrize("bad", [None, True, [], {}, "", "x", -1, 2**63 - 1, 1.5])
@pytest.mark.parametrize("venue", [BybitSpot, BybitLinear, BybitInverse])
def test_any_wrong_field_type_gives_events_never_an_exception(venue: type[_BybitVenue], bad: Any) -> None:
    s = session(venue())
    messages = [TRADE, TICKER, sample("spot_tickers.json"), orjson.loads(book("BTCUSDT", "1", "2"))]
    for message in messages:
        for key in message:
            s.decode(frame({**message, key: bad}), RECEIVED)
        inner = message["data"][0] if isinstance(message["data"], list) else message["data"]
        for key in inner:
            data = [{**inner, key: bad}] if isinstance(message["data"], list) else {**inner, key: bad}
            for kind in ("snapshot", "delta"):
                events = s.decode(frame({**message, "type": kind, "data": data}), RECEIVED)
                assert all(isinstance(e, DecodeError | MarketData | Ignored) for e in events)
    for key in ("success", "ret_msg", "req_id", "op"):
        s.subscribe(["tickers.BTCUSDT"])
        base = {"success": False, "ret_msg": "x", "req_id": "1", "op": "subscribe"}
        events = s.decode(frame({**base, key: bad}), RECEIVED)
        assert events and all(not isinstance(e, MarketData) for e in events)


def test_decode_error_excerpt_is_bounded() -> None:
    raw = frame({"topic": "orderbook.50.BTCUSDT", "data": {"b": [["1", "2"]] * 1000}})
    assert decode_error(session().decode(raw, RECEIVED)).frame == raw[:200] + "..."


# ---- instruments ------------------------------------------------------------------------------


def instruments_body(entries: list[Any], cursor: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"category": "linear", "list": entries}
    if cursor is not None:
        result["nextPageCursor"] = cursor
    return {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": 1}


def test_parse_instruments_keeps_trading_symbols_and_follows_the_cursor() -> None:
    entries = [
        {"symbol": "BTCUSDT", "status": "Trading", "contractType": "LinearPerpetual"},
        {"symbol": "NEWUSDT", "status": "PreLaunch"},
        {"symbol": "OLDUSDT", "status": "Closed"},
        {"symbol": "ETHUSDT", "status": "Trading"},
    ]
    venue = BybitLinear()
    page = venue.parse_instruments(instruments_body(entries, "first%3DBTCUSDT%26last%3DETHUSDT"))
    assert page == InstrumentPage(frozenset({"BTCUSDT", "ETHUSDT"}), "first%3DBTCUSDT%26last%3DETHUSDT")
    assert venue.parse_instruments(instruments_body(entries, "")).cursor is None
    assert venue.parse_instruments(instruments_body(entries)).cursor is None  # spot: no cursor


def test_derivative_instruments_path_pages_by_limit_and_sends_the_cursor_encoded() -> None:
    assert BybitInverse().instruments_path() == "/v5/market/instruments-info?category=inverse&limit=1000"
    assert BybitLinear().instruments_path("first%3DA%26last%3DB") == (
        "/v5/market/instruments-info?category=linear&limit=1000&cursor=first%253DA%2526last%253DB"
    )


def test_spot_instruments_path_sends_neither_limit_nor_cursor() -> None:
    # [instruments-info] "Spot does not support pagination, so limit, cursor are invalid."
    assert BybitSpot().instruments_path() == "/v5/market/instruments-info?category=spot"
    with pytest.raises(ValueError, match="one page"):
        BybitSpot().instruments_path("first%3DA%26last%3DB")


def test_spot_instruments_are_one_page_whatever_cursor_the_body_holds() -> None:
    body = instruments_body([{"symbol": "BTCUSDT", "status": "Trading"}], "first%3DBTCUSDT%26last%3DBTCUSDT")
    assert BybitSpot().parse_instruments(body) == InstrumentPage(frozenset({"BTCUSDT"}))


@pytest.mark.parametrize(
    "body",
    [
        None, [], "x", {},
        {"retCode": 10001, "retMsg": "params error", "result": {}},
        {"retCode": 0, "result": None},
        {"retCode": 0, "result": {"list": None}},
        {"retCode": 0, "result": {"list": ["BTCUSDT"]}},
        {"retCode": 0, "result": {"list": [{"status": "Trading"}]}},
        {"retCode": 0, "result": {"list": [], "nextPageCursor": 5}},
    ],
)
def test_parse_instruments_rejects_a_malformed_body(body: Any) -> None:
    with pytest.raises(ValueError, match="instruments-info"):
        BybitLinear().parse_instruments(body)


class QueryLog(BybitSimulator):
    """The simulator, keeping the query of every REST request it answers."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.queries: list[dict[str, list[str]]] = []

    def _answer_rest(self, request: HttpRequest) -> HttpResponse:
        self.queries.append(request.query)
        return super()._answer_rest(request)


@pytest.mark.parametrize(
    ("venue", "category"), [(BybitSpot, "spot"), (BybitLinear, "linear"), (BybitInverse, "inverse")]
)
async def test_instrument_list_is_walked_page_by_page_and_cached(
    tmp_path: Path, venue: type[_BybitVenue], category: str
) -> None:
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT")
    sim = QueryLog(symbols=symbols, inverse_symbols=("BTCUSD", "ETHUSD", "XRPUSD"))
    expected = frozenset(sim.symbols[category])
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        made = venue()
        # pages of one instrument: every cursor of the walk is followed (spot has one page)
        made.instruments_path = lambda cursor=None: (  # type: ignore[method-assign]
            type(made).instruments_path(made, cursor).replace("limit=1000", "limit=1")
        )
        fetched = await load_instruments(made, sim.rest_url, str(tmp_path))
        sim.rest_fail(True)
        cached = await load_instruments(made, sim.rest_url, str(tmp_path))
        nursery.cancel_scope.cancel()
    assert (fetched.symbols, fetched.source) == (expected, "rest")
    assert (cached.symbols, cached.source) == (expected, "cache")
    if category == "spot":  # one page, asked for without limit or cursor
        assert sim.queries == [{"category": ["spot"]}]
    else:
        assert len(sim.queries) == len(expected)
        assert sim.queries[0] == {"category": [category], "limit": ["1"]}
        assert all(set(query) == {"category", "limit", "cursor"} for query in sim.queries[1:])


def test_recent_trades_are_asked_per_category_and_read_oldest_first_inverse_in_base_units() -> None:
    assert BybitSpot().recent_path("BTCUSDT", 60) == (
        "/v5/market/recent-trade?category=spot&symbol=BTCUSDT&limit=60")
    assert (BybitSpot().recent_page, BybitLinear().recent_page) == (60, 1000)
    body = {"retCode": 0, "retMsg": "OK", "result": {"category": "inverse", "list": [
        {"execId": "b", "symbol": "BTCUSD", "price": "50000", "size": "100", "side": "Sell",
         "time": "1672052955759", "isBlockTrade": False},
        {"execId": "a", "symbol": "BTCUSD", "price": "50000", "size": "50", "side": "Buy",
         "time": "1672052955758", "isBlockTrade": False},
    ]}}
    at = datetime(2026, 12, 7, tzinfo=UTC)
    first, second = BybitInverse().parse_recent("BTCUSD", body, at)
    assert (first.trade_id, first.side, first.volume) == ("a", "buy", 0.001)  # 50 USD contracts
    assert (second.trade_id, second.side, second.volume) == ("b", "sell", 0.002)
    assert first.timestamp == datetime.fromtimestamp(1672052955.758, UTC)
    with pytest.raises(ValueError, match="retCode 10001"):
        BybitSpot().parse_recent("BTCUSDT", {"retCode": 10001, "retMsg": "bad"}, at)


def test_the_option_venue_is_not_recovered_by_time() -> None:
    from feedd.exchanges.base import RecentTrades
    from feedd.exchanges.bybit_option import BybitOption

    assert isinstance(BybitLinear(), RecentTrades) and not isinstance(BybitOption(), RecentTrades)
