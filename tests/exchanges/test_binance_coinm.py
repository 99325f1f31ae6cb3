"""The Binance COIN-M adapter driven with literal frames: documented samples and recorded traffic."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from feedd.exchanges import make_venue, venue_ids
from feedd.exchanges.base import (
    DecodeError,
    Event,
    Heartbeat,
    Ignored,
    InstrumentPage,
    Rotate,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
)
from feedd.exchanges.binance_coinm import BinanceCoinm, CoinmSession, default_contract_size
from feedd.feed.validate import Validator
from feedd.model import MarketData

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "binance_coinm"
RECORDED_DELIVERY = FIXTURES / "recorded_delivery_2021-07-22.ndjson"
RECORDED_TRADES = FIXTURES / "recorded_ethusd_perp_trade_bookticker_2024-08-08.ndjson"

RECEIVED = datetime(2023, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def wrapped(stream: str, payload: Any) -> str:
    return json.dumps({"stream": stream, "data": payload})


def at_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def session(venue: BinanceCoinm | None = None) -> CoinmSession:
    made = (venue or BinanceCoinm()).new_session()
    assert isinstance(made, CoinmSession)
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


# ---- venue facts ------------------------------------------------------------------------------


def test_coinm_venue_states_its_protocol_facts() -> None:
    venue = BinanceCoinm()
    assert venue.venue_id == "binance-coinm"
    assert venue.default_url == "wss://dstream.binance.com/stream"  # no routed path on dstream
    assert venue.default_rest_url == "https://dapi.binance.com"
    assert venue.instruments_path() == "/dapi/v1/exchangeInfo"
    assert venue.max_streams_per_connection == 200
    assert venue.max_chars_per_connection is None
    assert venue.max_messages_per_second == 10
    assert venue.message_limit_scope == "connection"
    assert venue.rotate_after == 23.5 * 3600  # before the documented 24 h cut
    assert venue.uppercase_symbols is True


def test_registry_discovers_the_coinm_venue() -> None:
    assert "binance-coinm" in venue_ids()
    assert isinstance(make_venue("binance-coinm"), BinanceCoinm)


def test_trades_are_agg_trades_and_the_ticker_adds_the_book_ticker_on_the_one_route() -> None:
    venue = BinanceCoinm()
    assert venue.topics(Subscription("BTCUSD_PERP", "trades")) == [Topic("", "btcusd_perp@aggTrade")]
    assert venue.topics(Subscription("BTCUSD_251226", "ticker")) == [
        Topic("", "btcusd_251226@ticker"),
        Topic("", "btcusd_251226@bookTicker"),
    ]
    assert venue.url("", "ws://127.0.0.1:9/stream") == "ws://127.0.0.1:9/stream"
    with pytest.raises(ValueError, match="route"):
        venue.url("public", venue.default_url)


# ---- requests and replies ---------------------------------------------------------------------


def test_first_subscribe_frame_is_the_documented_request() -> None:
    [frame] = session().subscribe(["btcusd_200925@aggTrade", "btcusd_200925@depth"])
    assert orjson.loads(frame) == sample("subscribe_request.json")


def test_documented_ack_names_the_topics_of_its_request() -> None:
    s = session()
    s.subscribe(["btcusd_200925@aggTrade"])
    ack = only(s.decode(json.dumps(sample("subscribe_ok.json")), RECEIVED))
    assert ack == SubscribeAck(1, ("btcusd_200925@aggTrade",), "subscribe")


def test_list_subscriptions_answer_is_a_heartbeat() -> None:
    s = session()
    s.ping()
    assert only(s.decode(json.dumps(sample("list_subscriptions_response.json")), RECEIVED)) == Heartbeat()


def test_subscribe_is_batched_by_two_hundred_streams() -> None:
    frames = session().subscribe([f"s{i}_perp@aggTrade" for i in range(401)])
    assert [len(orjson.loads(f)["params"]) for f in frames] == [200, 200, 1]


def test_nested_invalid_json_error_is_an_unattributed_refusal() -> None:
    error = only(session().decode(json.dumps(sample("error_invalid_json.json")), RECEIVED))
    assert error == SubscribeRejected(None, (), "code 3: Invalid JSON: expected value at line 1 column 1")


def test_nested_error_with_an_id_names_the_topics_of_that_request() -> None:
    s = session()
    s.subscribe(["btcusd_perp@aggTrade"])
    error = only(s.decode('{"error": {"code": 2, "msg": "Invalid request"}, "id": 1}', RECEIVED))
    assert error == SubscribeRejected(1, ("btcusd_perp@aggTrade",), "code 2: Invalid request")


def test_server_shutdown_rotates() -> None:
    frame = wrapped("!serverShutdown", {"e": "serverShutdown", "E": 1})
    assert isinstance(only(session().decode(frame, RECEIVED)), Rotate)


# ---- market data ------------------------------------------------------------------------------


def test_documented_agg_trade_is_a_trade_in_coins_from_its_contracts() -> None:
    data = sample("aggTrade.json")  # BTCUSD_200626: 2 contracts of 100 USD at 9643.5
    record = market_data(session().decode(wrapped("btcusd_200626@aggTrade", data), RECEIVED))
    assert (record.exchange, record.symbol, record.kind) == ("binance-coinm", "BTCUSD_200626", "trade")
    assert record.price == 9643.5
    assert record.volume == pytest.approx(2 * 100 / 9643.5)
    assert record.side == "buy"  # m=false: the buyer took
    assert record.trade_id == "424951"
    assert record.timestamp == at_ms(1591261134199)  # T, the trade time


def test_contract_size_from_exchange_info_overrides_the_default_rule() -> None:
    venue = BinanceCoinm()
    page = venue.parse_instruments({"symbols": [
        {"symbol": "ETHUSD_PERP", "contractStatus": "TRADING", "contractSize": 25},
    ]})
    assert page == InstrumentPage(frozenset({"ETHUSD_PERP"}))
    data = {**sample("aggTrade.json"), "s": "ETHUSD_PERP", "p": "2000", "q": "4"}
    record = market_data(session(venue).decode(wrapped("ethusd_perp@aggTrade", data), RECEIVED))
    assert record.volume == pytest.approx(4 * 25 / 2000)


@pytest.mark.parametrize(
    ("symbol", "size"),
    [("BTCUSD_PERP", 100.0), ("BTCUSD_251226", 100.0), ("ETHUSD_PERP", 10.0), ("LINKUSD_211231", 10.0)],
)
def test_default_contract_size_is_100_usd_for_btc_and_10_for_the_others(symbol: str, size: float) -> None:
    assert default_contract_size(symbol) == size


def test_sdk_fixture_with_the_st_field_decodes_as_the_documented_one() -> None:
    plain = session().decode(wrapped("btcusd_200626@aggTrade", sample("aggTrade.json")), RECEIVED)
    fixture = sample("aggTrade_sdk_fixture_st.json")
    with_st = session().decode(wrapped("btcusd_200626@aggTrade", fixture), RECEIVED)
    assert plain == with_st


def test_documented_ticker_has_base_volume_and_the_book_tickers_quote() -> None:
    s = session()
    s.subscribe(["btcusd_200626@ticker", "btcusd_200626@bookTicker"])
    assert s.decode(wrapped("btcusd_200626@bookTicker", sample("bookTicker.json")), RECEIVED) == [Ignored()]
    record = market_data(s.decode(wrapped("btcusd_200626@ticker", sample("ticker.json")), RECEIVED))
    assert record.kind == "ticker"
    assert record.price == 9548.5
    assert record.volume == 32968676323.462227  # q, "total traded base asset volume", not v (contracts)
    assert (record.bid, record.ask) == (9548.1, 9548.5)
    assert (record.high_24h, record.low_24h, record.change_24h) == (10000.0, 7000.0, -0.452)
    assert record.timestamp == at_ms(1591268262453)


def test_ticker_without_a_fresh_book_ticker_has_no_quote() -> None:
    record = market_data(session().decode(wrapped("btcusd_200626@ticker", sample("ticker.json")), RECEIVED))
    assert (record.bid, record.ask) == (None, None)


def test_exchange_info_lists_trading_contracts_and_keeps_their_sizes() -> None:
    venue = BinanceCoinm()
    body = sample("exchangeInfo_response.json")
    body["symbols"].append({**body["symbols"][0], "symbol": "BTCUSD_200626", "contractStatus": "DELIVERED"})
    assert venue.parse_instruments(body) == InstrumentPage(frozenset({"BTCUSD_200925"}))
    assert venue.contract_sizes == {"BTCUSD_200925": 100.0, "BTCUSD_200626": 100.0}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "not a JSON object"),
        ({}, "no 'symbols' list"),
        ({"symbols": [{"contractStatus": "TRADING"}]}, "without a 'symbol'"),
        ({"symbols": [{"symbol": "X_PERP", "contractStatus": "TRADING"}]}, "contractSize"),
        ({"symbols": [{"symbol": "X_PERP", "contractSize": 0}]}, "contractSize"),
        ({"symbols": [{"symbol": "X_PERP", "contractSize": "100"}]}, "contractSize"),
    ],
)
def test_bad_exchange_info_is_a_value_error_naming_what_is_wrong(body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BinanceCoinm().parse_instruments(body)


# ---- bad input --------------------------------------------------------------------------------

_TRADE = sample("aggTrade.json")


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        ("{", "malformed JSON"),
        ("[1]", "not a JSON object"),
        ('{"stream": 5, "data": {}}', "not a string"),
        (wrapped("btcusd_perp@depth", {}), "unhandled stream"),
        (wrapped("btcusd_perp@aggTrade", {**_TRADE, "p": "0"}), "not positive"),
        (wrapped("btcusd_perp@aggTrade", {**_TRADE, "q": "two"}), "ValueError"),
        (wrapped("btcusd_perp@aggTrade", {**_TRADE, "m": "no"}), "'m' is not a boolean"),
        (wrapped("btcusd_perp@aggTrade", {**_TRADE, "a": "1"}), "not an integer"),
        (wrapped("btcusd_perp@aggTrade", {k: v for k, v in _TRADE.items() if k != "T"}), "missing field 'T'"),
        (wrapped("btcusd_perp@ticker", {k: v for k, v in sample("ticker.json").items() if k != "q"}),
         "missing field 'q'"),
        (wrapped("btcusd_perp@bookTicker", {**sample("bookTicker.json"), "b": None}), "TypeError"),
        ('{"error": "boom"}', "'error' is not an object"),
        ('{"nothing": 1}', "not a combined-stream event"),
    ],
)
def test_bad_input_is_a_decode_error_never_an_exception(frame: str, words: str) -> None:
    assert words in decode_error(session().decode(frame, RECEIVED)).reason


# ---- recordings -------------------------------------------------------------------------------


def test_every_recorded_delivery_agg_trade_decodes_in_coins_and_passes_validation() -> None:
    s = session()
    lines = RECORDED_DELIVERY.read_text().splitlines()
    symbols = {json.loads(line)["data"]["s"] for line in lines}
    validator = Validator(frozenset(symbols))
    trades = quotes = unhandled = 0
    for line in lines:
        message = json.loads(line)
        stream, data = message["stream"], message["data"]
        events = s.decode(line, datetime.fromtimestamp(data["E"] / 1000, UTC))
        if stream.endswith("@aggTrade"):
            record = market_data(events)
            assert validator.reason(record) is None
            assert record.volume == pytest.approx(
                int(data["q"]) * default_contract_size(data["s"]) / float(data["p"])
            )
            assert record.side == ("sell" if data["m"] else "buy")
            trades += 1
        elif stream.endswith("@bookTicker"):
            assert events == [Ignored()]
            quotes += 1
        else:
            assert "unhandled stream" in decode_error(events).reason
            unhandled += 1
    assert (trades, quotes, unhandled) == (51, 200, 5)


def test_every_recorded_trade_frame_decodes_with_the_side_its_m_gives() -> None:
    """``@trade`` is undocumented for COIN-M but was served in 2024; feedd decodes it as spot's."""
    s = session()
    trades = 0
    for line in RECORDED_TRADES.read_text().splitlines():
        message = json.loads(line)
        events = s.decode(line, RECEIVED)
        if message["stream"] == "ethusd_perp@trade":
            record = market_data(events)
            data = message["data"]
            assert record.trade_id == str(data["t"])
            assert record.volume == pytest.approx(int(data["q"]) * 10 / float(data["p"]))
            assert record.timestamp == at_ms(data["T"])
            trades += 1
        else:
            assert events == [Ignored()]
    assert trades == 200
