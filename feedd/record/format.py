"""The recording format: JSON lines, one file per connection per rotation (docs/recording.md).

The first line is the header (an object with ``"feedd_recording"``); every later line is an
object with ``t`` (wall-clock nanoseconds; a frame's is its receive time, exactly the
``received_at`` its decode got, so microsecond resolution) and ``n`` (the recorder's sequence
number in its run: the order the daemon did things in, across all its connections), and one of:

=========================  ====================================================================
key                        what happened
=========================  ====================================================================
``f`` (or ``b``)           a frame received by attempt ``a``: its text (binary: base64)
``connect``                attempt ``a`` connected, subscribing these topics with ``sent``
``op`` + ``topics``        a live subscribe/unsubscribe of attempt ``a``, requests ``sent``
``ping``                   attempt ``a`` sent the venue's ping (its text)
``close``                  attempt ``a`` ended (the reason)
``event``                  a disconnect/reconnect event handed to subscribers
``overlap``                a rotation's overlap: ``start`` (``old`` attempt), ``switch``, ``end``
``known``                  the symbols the venue's validation accepts from now on
``dropped``                frames the recorder lost here (its buffer full, or a write error)
=========================  ====================================================================
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

from feedd.model import Disconnected, FeedEvent, Message, Reconnected

#: the format's version, in every header
VERSION = 1
#: the header's marker key
MARKER = "feedd_recording"

Compress = Literal["zstd", "gzip", "none"]
#: file name suffix per compression
SUFFIXES: dict[str, str] = {"zstd": ".jsonl.zst", "gzip": ".jsonl.gz", "none": ".jsonl"}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def ns_of(at: datetime) -> int:
    """``at`` as integer nanoseconds since the epoch, exactly (datetimes hold microseconds)."""
    return (at - EPOCH) // _MICROSECOND * 1000


def datetime_of(ns: int) -> datetime:
    """The datetime :func:`ns_of` made ``ns`` from (the same value, bit for bit)."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def slug(connection: str) -> str:
    """A connection name as a file name part: ``binance/stream#1`` -> ``binance_stream_1``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", connection).strip("_") or "connection"


def file_name(connection: str, opened: datetime, compress: str) -> str:
    return f"{slug(connection)}.{opened:%Y%m%dT%H%M%S.%f}Z{SUFFIXES[compress]}"


def header_line(**fields: Any) -> bytes:
    return orjson.dumps({MARKER: VERSION, **fields}, option=orjson.OPT_APPEND_NEWLINE)


def frame_line(t: int, n: int, attempt: int, frame: Message) -> bytes:
    if isinstance(frame, str):
        return b'{"t":%d,"n":%d,"a":%d,"f":%b}\n' % (t, n, attempt, orjson.dumps(frame))
    return b'{"t":%d,"n":%d,"a":%d,"b":"%b"}\n' % (t, n, attempt, base64.b64encode(frame))


def line(t: int, n: int, fields: dict[str, Any]) -> bytes:
    return orjson.dumps({"t": t, "n": n, **fields}, option=orjson.OPT_APPEND_NEWLINE)


def texts(frames: Sequence[Message]) -> list[str]:
    """Outgoing frames as JSON strings (binary ones base64, prefixed ``base64:``)."""
    return [f if isinstance(f, str) else "base64:" + base64.b64encode(f).decode() for f in frames]


def event_fields(event: FeedEvent) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": event.type, "exchange": event.exchange,
                              "symbols": list(event.symbols), "at": ns_of(event.at)}
    if isinstance(event, Disconnected):
        fields["reason"] = event.reason
    elif isinstance(event, Reconnected):
        fields["gap_seconds"] = event.gap_seconds
    else:  # a backfill is not the connection's: the tap is told of disconnects and reconnects only
        raise ValueError(f"not a connection event: {event.type}")
    return fields


def event_of(fields: dict[str, Any]) -> FeedEvent:
    """The event :func:`event_fields` wrote (ValueError for anything else)."""
    try:
        at = datetime_of(int(fields["at"]))
        symbols = tuple(str(s) for s in fields["symbols"])
        if fields["type"] == "disconnect":
            return Disconnected(str(fields["exchange"]), symbols, at, str(fields["reason"]))
        if fields["type"] == "reconnect":
            return Reconnected(str(fields["exchange"]), symbols, at, float(fields["gap_seconds"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad event {fields!r}: {exc!r}") from None
    raise ValueError(f"bad event type {fields.get('type')!r}")
