"""The Bybit options adapter driven with literal frames: documented samples, constructed trades."""

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
    InstrumentPage,
    Pong,
    SubscribeAck,
    SubscribeRejected,
    Subscription,
    Topic,
    topic_list_chars,
)
from feedd.exchanges.bybit_option import BybitOption, BybitOptionSession
from feedd.model import MarketData

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bybit_option"
RECEIVED = datetime(2023, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CALL = "BTC-27DEC26-100000-C"
PUT = "BTC-27DEC26-90000-P"
USDT_CALL = "BTC-27MAR26-70000-P-USDT"


def sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def at_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def session() -> BybitOptionSession:
    made = BybitOption().new_session()
    assert isinstance(made, BybitOptionSession)
    return made


def requests(frames: list[str]) -> list[dict[str, Any]]:
    return [orjson.loads(frame) for frame in frames]


def command(ok: list[str], failed: tuple[str, ...] | list[str] = (), **extra: Any) -> str:
    """An option subscribe reply, shaped as the documented one (subscribe_ok.json)."""
    body = {"success": not failed, "conn_id": "c1", "data": {"failTopics": list(failed), "successTopics": ok},
            "type": "COMMAND_RESP", **extra}
    return json.dumps(body)


def trade_row(
    symbol: str, trade_id: str, side: str = "Buy", price: str = "2400", size: str = "0.5"
) -> dict[str, Any]:
    """A publicTrade row with the documented option fields (no option example is documented)."""
    return {"T": 1672304486865, "s": symbol, "S": side, "v": size, "p": price, "i": trade_id, "BT": False,
            "RPI": False, "seq": 7, "mP": "2401", "iP": "60000", "mIv": "0.45", "iv": "0.46"}


def trades_frame(coin: str, *rows: dict[str, Any]) -> str:
    return json.dumps({"id": f"publicTrade.{coin}-1-1672304486868", "topic": f"publicTrade.{coin}",
                       "type": "snapshot", "ts": 1672304486868, "data": list(rows)})


def subscribed(*symbols: str) -> BybitOptionSession:
    """A session whose trade topics for ``symbols`` the venue acknowledged."""
    s = session()
    s.subscribe([f"publicTrade.{symbol}" for symbol in symbols])
    coins = sorted({symbol.partition("-")[0] for symbol in symbols})
    s.decode(command([f"publicTrade.{coin}" for coin in coins]), RECEIVED)
    return s


def only(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


# ---- venue facts ------------------------------------------------------------------------------


def test_option_venue_states_its_protocol_facts() -> None:
    venue = BybitOption()
    assert venue.venue_id == "bybit-option"
    assert venue.default_url == "wss://stream.bybit.com/v5/public/option"
    assert venue.default_rest_url == "https://api.bybit.com"
    assert venue.max_streams_per_connection == 2000  # "Options can input up to 2000 args"
    assert venue.max_chars_per_connection == 21_000
    assert venue.ping_interval == 20.0 and venue.ping_mode == "always"
    assert venue.connect_limit is not None and venue.connect_limit.attempts == 500
    assert "bybit-option" in venue_ids()
    assert isinstance(make_venue("bybit-option"), BybitOption)


def test_trades_are_topics_per_option_and_tickers_per_symbol() -> None:
    venue = BybitOption()
    assert venue.topics(Subscription(CALL, "trades")) == [Topic("", f"publicTrade.{CALL}")]
    assert venue.topics(Subscription(USDT_CALL, "ticker")) == [Topic("", f"tickers.{USDT_CALL}")]


@pytest.mark.parametrize("symbol", [CALL, PUT, USDT_CALL, "ETH-28FEB25-2800-C", "SOL-3JAN25-150-P"])
def test_option_symbols_stream_as_themselves(symbol: str) -> None:
    assert BybitOption().symbol_problem(symbol) is None


@pytest.mark.parametrize("symbol", ["BTCUSDT", "BTC-27DEC26", "BTC-27DEC26-100000-X", "BTC--100000-C"])
def test_what_is_not_an_option_symbol_is_refused_with_an_example(symbol: str) -> None:
    problem = BybitOption().symbol_problem(symbol)
    assert problem is not None and "BTC-27DEC26-100000-C" in problem


# ---- requests and acks ------------------------------------------------------------------------


def test_trade_topics_of_one_coin_subscribe_the_coins_topic_once() -> None:
    s = session()
    [request] = requests(s.subscribe([f"publicTrade.{CALL}", f"publicTrade.{PUT}", f"tickers.{CALL}"]))
    assert request == {"op": "subscribe", "args": ["publicTrade.BTC", f"tickers.{CALL}"], "req_id": "1"}
    ack = s.decode(command(["publicTrade.BTC", f"tickers.{CALL}"]), RECEIVED)
    assert ack == [SubscribeAck("1", (f"publicTrade.{CALL}", f"publicTrade.{PUT}", f"tickers.{CALL}"))]


def test_documented_ack_is_matched_to_the_request_holding_its_topic() -> None:
    s = session()
    s.subscribe(["publicTrade.ETH"])  # any topic passes through as itself
    s.subscribe(["orderbook.100.BTC-6JAN23-18000-C"])
    ack = only(s.decode(json.dumps(sample("subscribe_ok.json")), RECEIVED))
    assert ack == SubscribeAck("2", ("orderbook.100.BTC-6JAN23-18000-C",), "subscribe")


def test_an_echoed_req_id_picks_the_request() -> None:
    s = session()
    s.subscribe([f"tickers.{CALL}"])
    s.subscribe([f"tickers.{CALL}"])
    assert only(s.decode(command([f"tickers.{CALL}"], req_id="2"), RECEIVED)) == SubscribeAck(
        "2", (f"tickers.{CALL}",)
    )


def test_a_fail_topic_is_refused_alone_and_the_rest_of_its_request_acknowledged() -> None:
    s = session()
    s.subscribe([f"tickers.{CALL}", "tickers.BTC-1JAN20-1-C", f"publicTrade.{PUT}"])
    events = s.decode(command([f"tickers.{CALL}", "publicTrade.BTC"], ["tickers.BTC-1JAN20-1-C"]), RECEIVED)
    assert events == [
        SubscribeAck("1", (f"tickers.{CALL}", f"publicTrade.{PUT}")),
        SubscribeRejected("1", ("tickers.BTC-1JAN20-1-C",), "refused: tickers.BTC-1JAN20-1-C"),
    ]


def test_a_refused_coin_topic_refuses_every_option_on_it_and_is_asked_for_again() -> None:
    s = session()
    s.subscribe([f"publicTrade.{CALL}", f"publicTrade.{PUT}"])
    [event] = s.decode(command([], ["publicTrade.BTC"]), RECEIVED)
    assert isinstance(event, SubscribeRejected)
    assert event.topics == (f"publicTrade.{CALL}", f"publicTrade.{PUT}")
    assert requests(s.subscribe([f"publicTrade.{CALL}"]))[0]["args"] == ["publicTrade.BTC"]


def test_a_plain_refusal_naming_a_topic_is_attributed_to_its_request() -> None:
    s = session()
    s.subscribe([f"tickers.{CALL}"])
    message = f"error:handler not found,topic:tickers.{CALL}"
    reply = json.dumps({"success": False, "ret_msg": message, "op": "subscribe"})
    [event] = s.decode(reply, RECEIVED)
    assert isinstance(event, SubscribeRejected)
    assert event.topics == (f"tickers.{CALL}",)


def test_a_refusal_naming_nothing_of_ours_is_an_unattributed_error() -> None:
    [event] = session().decode('{"success": false, "ret_msg": "error:invalid op"}', RECEIVED)
    assert event == SubscribeRejected(None, (), "error:invalid op")


def test_a_symbol_riding_on_a_held_coin_topic_is_acknowledged_with_the_next_frame() -> None:
    s = subscribed(CALL)
    frames = s.subscribe([f"publicTrade.{PUT}"])
    assert requests(frames) == [{"op": "ping"}]  # nothing to request: a pong comes soon
    events = s.decode(json.dumps(sample("pong.json")), RECEIVED)
    assert events == [SubscribeAck(None, (f"publicTrade.{PUT}",)), Pong()]


def test_a_symbol_asked_for_while_its_coin_topic_is_pending_is_acknowledged_with_it() -> None:
    s = session()
    s.subscribe([f"publicTrade.{CALL}"])
    assert s.subscribe([f"publicTrade.{PUT}"]) == []
    ack = only(s.decode(command(["publicTrade.BTC"]), RECEIVED))
    assert ack == SubscribeAck("1", (f"publicTrade.{CALL}", f"publicTrade.{PUT}"))


def test_the_coin_topic_is_unsubscribed_with_its_last_option() -> None:
    s = subscribed(CALL, PUT)
    assert requests(s.unsubscribe([f"publicTrade.{CALL}"])) == [{"op": "ping"}]
    [request] = requests(s.unsubscribe([f"publicTrade.{PUT}"]))
    assert request["op"] == "unsubscribe" and request["args"] == ["publicTrade.BTC"]
    events = s.decode(command(["publicTrade.BTC"]), RECEIVED)
    assert events == [
        SubscribeAck(None, (f"publicTrade.{CALL}",), "unsubscribe"),
        SubscribeAck(request["req_id"], (f"publicTrade.{PUT}",), "unsubscribe"),
    ]


def test_requests_are_batched_and_every_topic_is_counted_against_the_character_budget() -> None:
    s = session()
    topics = [f"tickers.BTC-27DEC26-{strike}-C" for strike in range(1000, 1250)]
    assert [len(r["args"]) for r in requests(s.subscribe(topics))] == [100, 100, 50]
    # feedd's trade topic names the option: never shorter than the coin topic sent for it
    assert topic_list_chars([f"publicTrade.{CALL}"]) > topic_list_chars(["publicTrade.BTC"])


def test_documented_ping_and_pong() -> None:
    s = session()
    assert orjson.loads(s.ping()) == {"op": "ping"}
    assert s.decode(json.dumps(sample("pong.json")), RECEIVED) == [Pong()]


# ---- market data ------------------------------------------------------------------------------


def test_coin_trades_are_kept_only_for_the_options_this_connection_carries() -> None:
    s = subscribed(CALL)
    frame = trades_frame("BTC", trade_row(CALL, "1", "Sell"), trade_row(PUT, "2"), trade_row(CALL, "3"))
    events = s.decode(frame, RECEIVED)
    assert [(e.symbol, e.trade_id, e.side) for e in events if isinstance(e, MarketData)] == [
        (CALL, "1", "sell"), (CALL, "3", "buy"),
    ]
    record = events[0]
    assert isinstance(record, MarketData)
    assert (record.exchange, record.kind) == ("bybit-option", "trade")
    assert (record.price, record.volume) == (2400.0, 0.5)
    assert record.timestamp == at_ms(1672304486865)


def test_trades_of_a_coin_nobody_subscribed_are_dropped() -> None:
    assert session().decode(trades_frame("ETH", trade_row("ETH-27DEC26-3000-C", "1")), RECEIVED) == []


def test_documented_option_ticker_is_a_record_with_percent_change_and_no_zero_bid() -> None:
    [record] = session().decode(json.dumps(sample("tickers_option.json")), RECEIVED)
    assert isinstance(record, MarketData)
    assert (record.exchange, record.symbol, record.kind) == ("bybit-option", "BTC-6JAN23-17500-C", "ticker")
    assert record.price == 10.0
    assert record.volume == 26.55  # volume24h, in BTC
    assert (record.bid, record.ask) == (None, 10.0)  # "bidPrice": "0" is an empty side
    assert (record.high_24h, record.low_24h) == (25.0, 5.0)
    assert record.change_24h == -33.333334  # change24h is a fraction
    assert record.timestamp == at_ms(1672917511074)


def test_instruments_walk_each_base_coin_and_its_pages() -> None:
    venue = BybitOption()
    assert venue.instruments_path() == "/v5/market/instruments-info?category=option&baseCoin=BTC&limit=1000"
    body = sample("instruments_info_option_response.json")
    body["result"]["nextPageCursor"] = "first%3DA%26last%3DB"
    page = venue.parse_instruments(body)
    assert page == InstrumentPage(frozenset({USDT_CALL}), "BTC|first%3DA%26last%3DB")
    next_path = venue.instruments_path(page.cursor)
    assert next_path.endswith("&baseCoin=BTC&limit=1000&cursor=first%253DA%2526last%253DB")
    last = venue.parse_instruments(sample("instruments_info_option_response.json"))
    assert last.cursor == "ETH"
    assert venue.instruments_path("ETH").endswith("baseCoin=ETH&limit=1000")
    venue.instruments_path("SOL")
    assert venue.parse_instruments(sample("instruments_info_option_response.json")).cursor is None


def test_instruments_list_only_trading_options() -> None:
    body = sample("instruments_info_option_response.json")
    body["result"]["list"].append({**body["result"]["list"][0], "symbol": PUT, "status": "Delivering"})
    assert BybitOption().parse_instruments(body).symbols == frozenset({USDT_CALL})


# ---- bad input --------------------------------------------------------------------------------

_TICKER = sample("tickers_option.json")


def _ticker_with(**data: Any) -> str:
    return json.dumps({**_TICKER, "data": {**_TICKER["data"], **data}})


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        ("{", "malformed JSON"),
        ("[]", "not a JSON object"),
        ('{"topic": 1}', "not a string"),
        ('{"topic": "kline.1.BTC-6JAN23-17500-C", "data": {}}', "unhandled topic"),
        (_ticker_with(lastPrice="ten"), "ValueError"),
        (_ticker_with(change24h=0.5), "'change24h' is not a string"),
        (_ticker_with(change24h="half"), "'change24h' is not a number"),
        (json.dumps({**_TICKER, "data": [1]}), "'data' is not an object"),
        (json.dumps({**_TICKER, "ts": "soon"}), "'ts' is not integer milliseconds"),
        (json.dumps({k: v for k, v in _TICKER.items() if k != "data"}), "missing field 'data'"),
        (trades_frame("BTC", {**trade_row(CALL, "1"), "S": "Up"}), "'S' is not Buy or Sell"),
        (trades_frame("BTC", {**trade_row(CALL, "1"), "T": "now"}), "'T' is not integer"),
        (trades_frame("BTC", {k: v for k, v in trade_row(CALL, "1").items() if k != "p"}),
         "missing field 'p'"),
        (json.dumps({"topic": "publicTrade.BTC", "data": {}}), "'data' is not a list"),
        ('{"success": "yes", "data": {}}', "'success' is not a boolean"),
        ('{"success": true, "data": {"successTopics": "x"}}', "is not a list"),
        ('{"hello": 1}', "not a topic message, pong or reply"),
    ],
)
def test_bad_input_is_a_decode_error_never_an_exception(frame: str, words: str) -> None:
    events = subscribed(CALL).decode(frame, RECEIVED)
    errors = [e for e in events if isinstance(e, DecodeError)]
    assert len(errors) == 1, events
    assert words in errors[0].reason
