"""``feedd tail``: read records from the daemon's Unix socket and print them for people."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Iterable
from datetime import UTC
from decimal import Decimal
from typing import Any, TextIO, TypeVar

import orjson
import trio

from feedd.codec import encode_line
from feedd.errors import TailError, describe
from feedd.fanout.lines import KINDS, decode_record
from feedd.model import MarketData

log = logging.getLogger(__name__)

T = TypeVar("T")

_READ_SIZE = 65536


def _num(value: float) -> str:
    """Shortest exact form of a float, never in exponent notation (``0.00001``, not ``1e-05``)."""
    text = repr(value)
    return format(Decimal(text), "f") if "e" in text else text


def _opt(value: float | None) -> str:
    return "-" if value is None else _num(value)


def format_record(record: MarketData) -> str:
    """One record as one readable line (time is the exchange's, in UTC, to the millisecond)."""
    ts = record.timestamp.astimezone(UTC)
    head = (
        f"{ts:%H:%M:%S}.{ts.microsecond // 1000:03d} "
        f"{record.exchange:<12} {record.symbol:<8} {record.kind:<6} "
    )
    if record.kind == "trade":
        text = f"{head}{record.side or '-':<4} {_num(record.volume)} @ {_num(record.price)}"
        if record.trade_id is not None:
            text += f"  id={record.trade_id}"
        return text
    if record.kind == "quote":
        return (
            f"{head}{_opt(record.bid_size)} @ {_opt(record.bid)} / "
            f"{_opt(record.ask_size)} @ {_opt(record.ask)}"
        )
    text = f"{head}{_num(record.price)}  bid {_opt(record.bid)} ask {_opt(record.ask)}"
    if record.change_24h is not None:
        text += f"  24h {record.change_24h:+.2f}%"
    return f"{text}  vol {_num(record.volume)}"


def format_gap(dropped: int) -> str:
    return f"-- gap: {dropped} records dropped --"


def format_feed_event(obj: dict[str, Any]) -> str:
    """A disconnect or reconnect line, as the interval a reader should distrust."""
    symbols = ", ".join(obj.get("symbols") or ()) or "no symbol"
    if obj["type"] == "disconnect":
        return f"-- {obj['exchange']} disconnected ({symbols}) at {obj['at']}: {obj.get('reason')} --"
    return f"-- {obj['exchange']} reconnected ({symbols}) at {obj['at']}, after {obj['gap_seconds']:.1f} s --"


def _filter_line(exchanges: Iterable[str], symbols: Iterable[str], kinds: Iterable[str]) -> bytes | None:
    record_kinds = [KINDS.get(kind, kind) for kind in kinds]
    wanted = {
        key: list(dict.fromkeys(values))
        for key, values in (("exchange", exchanges), ("symbol", symbols), ("kind", record_kinds))
    }
    wanted = {key: values for key, values in wanted.items() if values}
    return encode_line(wanted) if wanted else None


async def _connect(path: str) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(path)
    except FileNotFoundError:
        raise TailError(f"no feedd socket at {path}: is the daemon running?") from None
    except ConnectionRefusedError:
        raise TailError(f"nothing listens on {path} (a stale socket?)") from None
    except PermissionError:
        raise TailError(f"no permission to connect to {path} (group of the socket?)") from None
    except OSError as exc:
        raise TailError(f"cannot connect to {path}: {describe(exc)}") from exc


async def tail(
    path: str,
    *,
    exchanges: Iterable[str] = (),
    symbols: Iterable[str] = (),
    kinds: Iterable[str] = (),
    out: TextIO | None = None,
    limit: int | None = None,
) -> int:
    """Print records from the socket at ``path`` until EOF or ``limit`` records; return the count.

    ``out`` defaults to the current ``sys.stdout``. A filter line is sent only when some filter
    is given; ``kinds`` may say ``trades`` for ``trade``. Gap notices are printed but not counted.
    A write to ``out`` that fails (BrokenPipeError: the reader left) propagates.
    """
    if out is None:
        out = sys.stdout
    stream = await _connect(path)
    count = 0
    async with stream:
        flt = _filter_line(exchanges, symbols, kinds)
        log.debug("connected to %s; filter: %s", path, "none" if flt is None else flt.decode().strip())
        if flt is not None:
            await _io(stream.send_all(flt), path)
        if limit is not None and limit <= 0:
            return 0
        rest = b""
        while data := await _io(stream.receive_some(_READ_SIZE), path):
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if not line:
                    continue
                try:
                    record = decode_record(line)
                except KeyError:
                    # Not a record: a control line ({"type": ...}).
                    out.write(_control(path, line) + "\n")
                    continue
                except (TypeError, ValueError) as exc:
                    raise TailError(f"unreadable line from {path}: {line[:80]!r}") from exc
                out.write(format_record(record) + "\n")
                count += 1
                if limit is not None and count >= limit:
                    out.flush()
                    return count
            out.flush()
    log.debug("%s: end of stream after %d record(s)", path, count)
    return count


async def _io(operation: Awaitable[T], path: str) -> T:
    """One socket operation; a connection torn down under it becomes a TailError that says so."""
    try:
        return await operation
    except (trio.BrokenResourceError, OSError) as exc:
        raise TailError(f"lost the connection to {path}: {describe(exc)}") from exc


def _control(path: str, line: bytes) -> str:
    obj = orjson.loads(line)
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "gap":
        return format_gap(int(obj["dropped"]))
    if kind in ("disconnect", "reconnect"):
        return format_feed_event(obj)
    if kind == "error":
        raise TailError(f"feedd at {path} refused the request: {obj.get('error') or 'it gave no reason'}")
    raise TailError(f"unexpected line from {path}: {line[:80]!r}")
