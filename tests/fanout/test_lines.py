"""The subscriber line protocol's pure parts: one record decoder for the client library,
``feedd tail`` and tests, and its time handling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from feedd.client import LineDecoder
from feedd.codec import encode_record
from feedd.fanout.lines import KINDS, decode_record, error_line, gap_line, parse_filter, parse_time
from feedd.model import MarketData

RECORD = MarketData(
    "binance", "BTCUSDT", "trade", 97000.5, 0.25,
    datetime(2026, 12, 3, 10, 0, 0, 123000, tzinfo=UTC), datetime(2026, 12, 3, 10, 0, 0, 125000, tzinfo=UTC),
    side="buy", trade_id="7",
)


def test_a_z_time_is_utc_itself_without_conversion() -> None:
    parsed = parse_time("2026-12-03T10:00:00.123000Z")
    assert parsed.tzinfo is UTC
    assert parsed == datetime(2026, 12, 3, 10, 0, 0, 123000, tzinfo=UTC)


def test_another_offset_is_converted_to_utc() -> None:
    parsed = parse_time("2026-12-03T12:00:00.5+02:00")
    assert parsed.tzinfo is UTC
    assert parsed == datetime(2026, 12, 3, 10, 0, 0, 500000, tzinfo=UTC)
    assert parsed.utcoffset() == timedelta(0)


def test_a_time_without_timezone_is_refused() -> None:
    with pytest.raises(ValueError, match="no timezone"):
        parse_time("2026-12-03T10:00:00")


def test_decode_record_and_the_client_decoder_agree() -> None:
    line = encode_record(RECORD)
    [item] = LineDecoder().feed(line)
    assert decode_record(line) == item == RECORD
    assert isinstance(item, MarketData) and item.timestamp.tzinfo is UTC


def test_decode_record_converts_a_foreign_offset_like_the_client() -> None:
    east = timezone(timedelta(hours=3))
    line = encode_record(RECORD).replace(b"10:00:00.123000Z", b"13:00:00.123000+03:00")
    assert decode_record(line).timestamp == RECORD.timestamp.astimezone(east)
    assert decode_record(line).timestamp.tzinfo is UTC
    [item] = LineDecoder().feed(line)
    assert item == decode_record(line)


def test_event_lines() -> None:
    assert gap_line(3) == b'{"type":"gap","dropped":3}\n'
    assert error_line("no") == b'{"type":"error","error":"no"}\n'
    assert set(KINDS.values()) == {"trade", "ticker", "quote"}


def test_a_filter_for_quotes_takes_quote_or_quotes_and_passes_only_quotes() -> None:
    from datetime import UTC, datetime

    from feedd.model import quote_record, trade_record

    at = datetime(2024, 8, 8, tzinfo=UTC)
    quote = quote_record("binance", "BTCUSDT", 1.0, 1.0, 2.0, 1.0, at, at)
    trade = trade_record("binance", "BTCUSDT", 1.0, 1.0, at, at, "buy", "1")
    for word in ("quote", "quotes"):
        flt = parse_filter(b'{"kind": ["%s"]}' % word.encode())
        assert flt.matches(quote) and not flt.matches(trade)
