"""The OKX v5 adapter driven with literal frames: documented samples, recorded traffic, the
simulator's protocol object, and a list of bad inputs; then the instrument walk."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio

from feedd.exchanges import make_venue, venue_ids
from feedd.exchanges.base import (
    DecodeError,
    Event,
    Ignored,
    InstrumentPage,
    Pong,
    Retry,
    Rotate,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
)
from feedd.exchanges.okx import Okx, OkxSession
from feedd.feed.instruments import load_instruments
from feedd.feed.validate import Validator
from feedd.model import MarketData
from feedd.sim import OkxSimulator
from feedd.sim.okx import OkxConnection, OkxProtocol

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "okx"
RECORDED = FIXTURES / "recorded_public_2022-05-13.ndjson"
RECEIVED = datetime(2023, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


def sample(name: str) -> str:
    return (FIXTURES / name).read_text()


def session(venue: Okx | None = None) -> OkxSession:
    session = (venue or Okx()).new_session()
    assert isinstance(session, OkxSession)
    return session


def one(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


def contract(inst_id: str, ct_val: str, ct_type: str, state: str = "live") -> dict[str, Any]:
    return {"instType": "FUTURES" if inst_id[-1].isdigit() else "SWAP", "instId": inst_id, "ctVal": ct_val,
            "ctMult": "1", "ctValCcy": "USD" if ct_type == "inverse" else inst_id.split("-")[0],
            "ctType": ct_type, "state": state}


def with_contracts(*entries: dict[str, Any]) -> Okx:
    venue = Okx()
    venue.instruments_path("SWAP")
    venue.parse_instruments({"code": "0", "msg": "", "data": list(entries)})
    return venue


# ---- the venue's facts -------------------------------------------------------------------------


def test_the_venue_states_okxs_documented_facts() -> None:
    venue = make_venue("okx")
    assert "okx" in venue_ids()
    assert venue.default_url == "wss://ws.okx.com:8443/ws/v5/public"
    assert venue.default_rest_url == "https://www.okx.com"
    assert venue.connect_limit is not None
    assert (venue.connect_limit.attempts, venue.connect_limit.window) == (3, 1.0)  # per IP
    assert (venue.ping_interval, venue.ping_mode, venue.pong_timeout) == (20.0, "idle", 10.0)
    assert venue.ping_interval < 30  # the idle cut
    assert venue.message_limit_scope == "connection" and venue.uppercase_symbols


def test_topics_name_the_channel_and_the_instrument_as_okx_writes_it() -> None:
    venue = Okx()
    for symbol in ("BTC-USDT", "BTC-USDT-SWAP", "BTC-USD-251226"):
        assert venue.topics(Subscription(symbol, "trades")) == [Topic("", f"trades:{symbol}")]
        assert venue.topics(Subscription(symbol, "ticker")) == [Topic("", f"tickers:{symbol}")]
    assert venue.url("", "wss://x/ws/v5/public") == "wss://x/ws/v5/public"
    with pytest.raises(ValueError):
        venue.url("business", "wss://x")


def test_options_are_refused_naming_what_the_venue_carries() -> None:
    venue = Okx()
    assert venue.symbol_problem("BTC-USD-SWAP") is None and venue.symbol_problem("BTC-USD-251226") is None
    problem = venue.symbol_problem("BTC-USD-260828-45000-C")
    assert problem is not None and "option" in problem


# ---- requests ----------------------------------------------------------------------------------


def test_subscribe_request_has_the_documented_shape_with_a_string_id() -> None:
    [frame] = session().subscribe(["tickers:BTC-USDT"])
    documented = json.loads(sample("subscribe_request.json"))
    assert orjson.loads(frame) == {**documented, "id": "1"}


def test_unsubscribe_request_has_the_documented_shape() -> None:
    [frame] = session().unsubscribe(["tickers:BTC-USDT"])
    assert orjson.loads(frame) == {"id": "1", **json.loads(sample("unsubscribe_request.json"))}


def test_many_topics_go_in_one_request_and_a_request_stays_under_64_kb() -> None:
    topics = [f"trades:COIN{n:04d}-USDT-SWAP" for n in range(3000)]
    frames = session().subscribe(topics)
    assert len(frames) > 1 and all(len(frame) < 64 * 1024 for frame in frames)
    sent = [f"{a['channel']}:{a['instId']}" for frame in frames for a in orjson.loads(frame)["args"]]
    assert sent == topics
    assert len(session().subscribe(topics[:240])) == 1


def test_ids_count_up_across_requests_and_afresh_per_session() -> None:
    first = session()
    ids = [orjson.loads(f)["id"] for f in first.subscribe(["trades:A-B"]) + first.unsubscribe(["trades:A-B"])]
    assert ids == ["1", "2"]
    assert orjson.loads(session().subscribe(["trades:A-B"])[0])["id"] == "1"


def test_ping_is_the_text_ping_and_the_text_pong_is_a_pong() -> None:
    s = session()
    assert s.ping() == "ping"
    assert s.decode("pong", RECEIVED) == [Pong()]
    assert s.decode(b"pong", RECEIVED) == [Pong()]


# ---- replies -----------------------------------------------------------------------------------


def test_each_arg_is_acked_alone_by_its_request_id() -> None:
    s = session()
    s.subscribe(["trades:BTC-USDT", "tickers:BTC-USDT"])
    ack = {"id": "1", "event": "subscribe", "connId": "a4d3ae55"}
    assert s.decode(orjson.dumps({**ack, "arg": {"channel": "tickers", "instId": "BTC-USDT"}}), RECEIVED) == [
        SubscribeAck("1", ("tickers:BTC-USDT",), "subscribe")]
    assert s.decode(orjson.dumps({**ack, "arg": {"channel": "trades", "instId": "BTC-USDT"}}), RECEIVED) == [
        SubscribeAck("1", ("trades:BTC-USDT",), "subscribe")]


def test_the_documented_ack_and_unsubscribe_ack_name_their_topic() -> None:
    s = session()
    assert one(s.decode(sample("subscribe_ok.json"), RECEIVED)) == SubscribeAck(
        "1512", ("tickers:BTC-USDT",), "subscribe")
    s.unsubscribe(["tickers:BTC-USDT"])
    # the documented unsubscribe ack has no id: it is tied to the pending request holding its topic
    assert one(s.decode(sample("unsubscribe_ok.json"), RECEIVED)) == SubscribeAck(
        "1", ("tickers:BTC-USDT",), "unsubscribe")


def test_a_refusal_naming_its_instrument_rejects_it_and_asks_again_for_the_rest() -> None:
    s = session()
    s.subscribe(["trades:ETH-XYZ", "trades:BTC-USDT", "tickers:BTC-USDT"])
    error = {"id": "1", "event": "error", "code": "60018", "connId": "x",
             "msg": "Wrong URL or channel:trades,instId:ETH-XYZ doesn't exist. Please use the correct URL"}
    rejected, retry = s.decode(orjson.dumps(error), RECEIVED)
    assert isinstance(rejected, SubscribeRejected)
    assert (rejected.request_id, rejected.topics) == ("1", ("trades:ETH-XYZ",))
    assert rejected.reason.startswith("60018: Wrong URL")
    assert retry == Retry("subscribe", ("tickers:BTC-USDT", "trades:BTC-USDT"), rejected.reason)


def test_a_refusal_without_an_id_is_tied_to_the_request_whose_topic_it_names() -> None:
    s = session()
    s.subscribe(["tickers:ETH-XYZ"])
    error = {"event": "error", "code": "60018",
             "msg": "Wrong URL or channel:tickers,instId:ETH-XYZ doesn't exist."}
    assert one(s.decode(orjson.dumps(error), RECEIVED)) == SubscribeRejected(
        "1", ("tickers:ETH-XYZ",), "60018: " + error["msg"])


def test_a_refusal_naming_no_topic_retries_each_topic_in_a_request_of_its_own() -> None:
    s = session()
    s.subscribe(["trades:A-B", "trades:C-D"])
    error = {"id": "1", "event": "error", "code": "60014", "msg": "Requests too frequent."}
    assert one(s.decode(orjson.dumps(error), RECEIVED)) == Retry(
        "subscribe", ("trades:A-B", "trades:C-D"), "60014: Requests too frequent.")
    frames = s.subscribe(["trades:A-B", "trades:C-D", "trades:E-F"])
    assert [len(orjson.loads(f)["args"]) for f in frames] == [1, 1, 1]
    alone = {"id": "2", "event": "error", "code": "60014", "msg": "Requests too frequent."}
    assert one(s.decode(orjson.dumps(alone), RECEIVED)) == SubscribeRejected(
        "2", ("trades:A-B",), "60014: Requests too frequent.")


def test_the_documented_error_of_no_known_request_is_reported_unattributed() -> None:
    event = one(session().decode(sample("subscribe_error_60012.json"), RECEIVED))
    assert isinstance(event, SubscribeRejected)
    assert (event.request_id, event.topics) == ("1512", ())
    assert event.reason.startswith("60012: Invalid request")


def test_the_upgrade_notice_rotates_and_other_notices_are_ignored() -> None:
    event = one(session().decode(sample("notice_64008.json"), RECEIVED))
    assert isinstance(event, Rotate) and "64008" in event.reason
    other = {"event": "notice", "code": "64009", "msg": "something else"}
    assert session().decode(orjson.dumps(other), RECEIVED) == [Ignored()]


def test_the_simulators_replies_are_attributed_exactly() -> None:
    protocol = OkxProtocol(instruments=("BTC-USDT", "BTC-USDT-SWAP"), clock=lambda: 0.0)
    conn = OkxConnection("/ws/v5/public")
    s = session()
    [frame] = s.subscribe(["trades:BTC-USDT", "trades:NOPE-USDT", "tickers:BTC-USDT-SWAP"])
    assert isinstance(frame, str)
    events = [e for reply in protocol.receive(conn, frame).frames for e in s.decode(reply, RECEIVED)]
    acks = [e for e in events if isinstance(e, SubscribeAck)]
    assert {t for a in acks for t in a.topics} == {"trades:BTC-USDT", "tickers:BTC-USDT-SWAP"}
    [rejected] = [e for e in events if isinstance(e, SubscribeRejected)]
    assert rejected.topics == ("trades:NOPE-USDT",)
    assert protocol.receive(conn, "ping").frames == ("pong",)


# ---- market data -------------------------------------------------------------------------------


def test_the_documented_trade_decodes_with_every_field() -> None:
    record = one(session().decode(sample("trades_push.json"), RECEIVED))
    assert record == MarketData(
        "okx", "BTC-USDT", "trade", 42219.9, 0.12060306,
        datetime(2021, 8, 27, 7, 21, 37, 897000, tzinfo=UTC), RECEIVED, side="buy", trade_id="130639474",
    )


def test_the_documented_spot_ticker_decodes_base_volume_bid_ask_and_percent() -> None:
    record = one(session().decode(sample("tickers_push.json"), RECEIVED))
    assert record == MarketData(
        "okx", "BTC-USDT", "ticker", 9999.99, 2222.0, datetime(2020, 8, 10, 2, 26, 23, 85000, tzinfo=UTC),
        RECEIVED, bid=8888.88, ask=9999.99, high_24h=10000.0, low_24h=8888.88, change_24h=11.111,
        bid_size=5.0, ask_size=11.0,  # bidSz, askSz: base currency on spot
    )


def test_derivative_tickers_take_the_base_currency_volume() -> None:
    frame = {"arg": {"channel": "tickers", "instId": "BTC-USDT-SWAP"}, "data": [{
        "instType": "SWAP", "instId": "BTC-USDT-SWAP", "last": "100", "open24h": "80", "vol24h": "5000",
        "volCcy24h": "50", "bidPx": "", "askPx": "", "ts": "1597026383085"}]}
    record = one(session().decode(orjson.dumps(frame), RECEIVED))
    assert isinstance(record, MarketData)
    assert (record.volume, record.change_24h, record.bid, record.ask) == (50.0, 25.0, None, None)


def test_linear_contracts_become_base_units_by_their_contract_value() -> None:
    venue = with_contracts(contract("BTC-USDT-SWAP", "0.01", "linear"))
    frame = {"arg": {"channel": "trades", "instId": "BTC-USDT-SWAP"}, "data": [{
        "instId": "BTC-USDT-SWAP", "tradeId": "9", "px": "60000", "sz": "25", "side": "sell", "ts": "1"}]}
    record = one(session(venue).decode(orjson.dumps(frame), RECEIVED))
    assert isinstance(record, MarketData)
    assert (record.volume, record.side) == (pytest.approx(0.25), "sell")


def test_inverse_contracts_become_base_units_at_the_trade_price() -> None:
    venue = with_contracts(contract("BTC-USD-220527", "100", "inverse"))
    record = one(session(venue).decode(sample("trades_push_recorded_2022.json"), RECEIVED))
    assert isinstance(record, MarketData)
    assert record.volume == pytest.approx(100 / 30218.8) and record.trade_id == "7849"


def test_a_derivative_trade_of_unknown_contract_value_is_a_decode_error_not_contracts() -> None:
    event = one(session().decode(sample("trades_push_recorded_2022.json"), RECEIVED))
    assert isinstance(event, DecodeError) and "contract value of BTC-USD-220527 unknown" in event.reason


def test_a_bad_trade_row_is_a_decode_error_and_its_neighbours_still_decode() -> None:
    good = {"instId": "BTC-USDT", "tradeId": "1", "px": "1", "sz": "1", "side": "buy", "ts": "1"}
    frame = {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [good, {**good, "side": "up"}, good]}
    events = session().decode(orjson.dumps(frame), RECEIVED)
    assert [type(e) for e in events] == [MarketData, DecodeError, MarketData]


def test_every_recorded_frame_decodes_to_an_ack_a_record_or_an_unsubscribed_channel() -> None:
    venue = with_contracts(contract("BTC-USD-220527", "100", "inverse"),
                           contract("UNI-USD-SWAP", "10", "inverse"))
    s = session(venue)
    counts: dict[str, int] = {}
    validator = Validator({"BTC-USDT", "BTC-USD-220527", "UNI-USD-SWAP"})
    for line in RECORDED.read_text().splitlines():
        for event in s.decode(line, datetime.now(UTC)):
            if isinstance(event, MarketData):
                counts[event.kind] = counts.get(event.kind, 0) + 1
                assert event.timestamp < RECEIVED and event.volume > 0
                assert validator.reason(attrs_evolve_now(event)) is None
            elif isinstance(event, DecodeError):
                assert event.reason == "unhandled channel 'books'"
                counts["books"] = counts.get("books", 0) + 1
            else:
                assert isinstance(event, SubscribeAck)
                counts["ack"] = counts.get("ack", 0) + 1
    assert counts == {"ack": 18, "ticker": 28, "trade": 74, "books": 290}


def attrs_evolve_now(record: MarketData) -> MarketData:
    """The record as if sent now (the validator refuses 2022 timestamps as far from now)."""
    return attrs.evolve(record, timestamp=datetime.now(UTC) - timedelta(seconds=1))


TRADE = '{"arg": {"channel": "trades", "instId": "A-B"}, "data": [%s]}'
TICKER = '{"arg": {"channel": "tickers", "instId": "%s"}, "data": [%s]}'

BAD = [
    ("not json", "malformed JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"event": "subscribe"}', "bad 'subscribe' reply"),
    ('{"event": "subscribe", "arg": "x"}', "bad 'subscribe' reply"),
    ('{"event": "subscribe", "arg": {"channel": 1, "instId": "A-B"}}', "bad 'subscribe' reply"),
    ('{"event": "dance"}', "unknown event"),
    ('{"data": []}', "no 'arg' object"),
    ('{"arg": {"channel": "trades"}, "data": []}', "missing field"),
    ('{"arg": {"channel": "trades", "instId": "A-B"}}', "missing field"),
    ('{"arg": {"channel": "trades", "instId": "A-B"}, "data": {}}', "'data' is not a list"),
    ('{"arg": {"channel": "candle1m", "instId": "A-B"}, "data": []}', "unhandled channel"),
    (TRADE % '{"px": "1"}', "missing field"),
    (TRADE % '{"side": "buy", "px": "x", "sz": "1", "ts": "1", "tradeId": "1"}', "ValueError"),
    (TRADE % '{"side": "buy", "px": "1", "sz": "1", "ts": 1, "tradeId": "1"}', "millisecond"),
    (TRADE % '{"side": "buy", "px": "1", "sz": "1", "ts": "-1", "tradeId": "1"}', "millisecond"),
    (TRADE % '{"side": "buy", "px": "1", "sz": "1", "ts": "1", "tradeId": 1}', "not a string"),
    (TRADE % '{"side": null, "px": "1", "sz": "1", "ts": "1", "tradeId": "1"}', "not buy or sell"),
    (TRADE % '"x"', "TypeError"),
    (TICKER % ("A-B", '"x"'), "not an object"),
    (TICKER % ("A-B", '{"last": "1", "vol24h": "1"}'), "missing field"),
    (TICKER % ("A-B", '{"last": null, "vol24h": "1", "ts": "1"}'), "TypeError"),
    (TICKER % ("A-B", '{"last": "1", "vol24h": "1", "ts": "1", "open24h": "zz"}'), "not a number"),
    (TICKER % ("A-B", '{"last": "1", "vol24h": "1", "ts": "1", "open24h": 3}'), "not a string"),
    (TICKER % ("A-B-SWAP", '{"last": "1", "vol24h": "1", "ts": "1"}'), "missing field 'volCcy24h'"),
    ("x" * 5000, "malformed JSON"),
]


@pytest.mark.parametrize(("frame", "reason"), BAD)
def test_bad_input_is_a_decode_error_with_a_bounded_excerpt(frame: str, reason: str) -> None:
    s = session()
    s.subscribe(["trades:A-B"])
    events = s.decode(frame, RECEIVED)
    assert len(events) == 1 and isinstance(events[0], DecodeError), events
    assert reason in events[0].reason
    assert len(events[0].frame) <= 203


# ---- instruments -------------------------------------------------------------------------------


def test_the_instrument_walk_pages_through_spot_swaps_and_futures() -> None:
    venue = Okx()
    assert venue.instruments_path() == "/api/v5/public/instruments?instType=SPOT"
    spot = venue.parse_instruments(json.loads(sample("instruments_spot_response.json")))
    assert spot == InstrumentPage(frozenset({"BTC-USDT"}), "SWAP")
    assert venue.instruments_path("SWAP").endswith("instType=SWAP")
    swaps = venue.parse_instruments({"code": "0", "data": [
        contract("BTC-USDT-SWAP", "0.01", "linear"), contract("XYZ-USDT-SWAP", "1", "linear", "suspend")]})
    assert swaps == InstrumentPage(frozenset({"BTC-USDT-SWAP"}), "FUTURES")
    venue.instruments_path("FUTURES")
    assert venue.parse_instruments({"code": "0", "data": []}) == InstrumentPage(frozenset(), None)
    assert "BTC-USDT-SWAP" in venue.contracts and "XYZ-USDT-SWAP" not in venue.contracts
    with pytest.raises(ValueError):
        venue.instruments_path("OPTION")


@pytest.mark.parametrize(
    "body",
    [[], {"code": "50014", "msg": "Parameter instType can not be empty."}, {"code": "0"},
     {"code": "0", "data": [{"instType": "SPOT"}]}],
)
def test_a_bad_instruments_answer_is_a_value_error(body: Any) -> None:
    with pytest.raises(ValueError):
        Okx().parse_instruments(body)


async def test_the_instrument_list_of_the_simulator_holds_every_type_and_its_contracts(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    sim = OkxSimulator()
    await nursery.start(sim.serve)
    venue = Okx()
    loaded = await load_instruments(venue, sim.rest_url, str(tmp_path))
    assert loaded.symbols == frozenset(sim.instruments)
    assert len(venue.contracts) == 3
    assert venue.contracts.base_units("BTC-USDT-SWAP", 10, 50_000) == pytest.approx(0.1)
    assert venue.contracts.base_units("BTC-USD-SWAP", 5, 50_000) == pytest.approx(0.01)


def test_a_bbo_tbt_push_is_a_quote_in_base_units_at_okx_time() -> None:
    venue = with_contracts(contract("BTC-USDT-SWAP", "0.01", "linear"))
    frame = {"arg": {"channel": "bbo-tbt", "instId": "BTC-USDT-SWAP"}, "data": [{
        "asks": [["8476.98", "415", "0", "13"]], "bids": [["8476.97", "256", "0", "12"]],
        "ts": "1597026383085", "seqId": 123}]}
    record = one(session(venue).decode(orjson.dumps(frame), RECEIVED))
    assert isinstance(record, MarketData)
    assert (record.kind, record.bid, record.ask) == ("quote", 8476.97, 8476.98)
    # contracts times ctVal (0.01)
    assert (record.bid_size, record.ask_size) == (pytest.approx(2.56), pytest.approx(4.15))
    assert record.timestamp == datetime(2020, 8, 10, 2, 26, 23, 85000, tzinfo=UTC)


def test_a_bbo_tbt_push_of_an_unknown_contract_is_a_decode_error_not_contracts() -> None:
    frame = {"arg": {"channel": "bbo-tbt", "instId": "BTC-USDT-SWAP"}, "data": [{
        "asks": [["2", "1", "0", "1"]], "bids": [["1", "1", "0", "1"]], "ts": "1"}]}
    [event] = session().decode(orjson.dumps(frame), RECEIVED)
    assert "contract value of BTC-USDT-SWAP unknown" in getattr(event, "reason", "")


def test_recent_trades_are_read_oldest_first_and_derivatives_in_base_units() -> None:
    venue = Okx()
    venue.contracts.put("BTC-USDT-SWAP", 0.01, False)
    assert venue.recent_path("BTC-USDT", 500) == "/api/v5/market/trades?instId=BTC-USDT&limit=500"
    body = {"code": "0", "msg": "", "data": [
        {"instId": "BTC-USDT-SWAP", "side": "sell", "sz": "3", "px": "50000", "tradeId": "12",
         "ts": "1700000000002"},
        {"instId": "BTC-USDT-SWAP", "side": "buy", "sz": "2", "px": "50000", "tradeId": "11",
         "ts": "1700000000001"},
    ]}
    at = datetime(2026, 12, 7, tzinfo=UTC)
    first, second = venue.parse_recent("BTC-USDT-SWAP", body, at)
    assert (first.trade_id, first.side, first.volume) == ("11", "buy", 0.02)
    assert (second.trade_id, second.side) == ("12", "sell")
    with pytest.raises(ValueError, match="code '50011'"):
        venue.parse_recent("BTC-USDT", {"code": "50011", "msg": "Rate limit reached"}, at)
