"""The WebSocket upgrade's refusal: one type for "the server answered with HTTP status != 101",
and the pure parsing of its ``Retry-After`` header (RFC 9110 §10.2.3).

Raised by the frame codec's :class:`~feedd.wire.wsframe.ClientHandshake` and by both transports,
read by :mod:`feedd.feed.gates` to block the host for as long as the server asks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from feedd.errors import HandshakeError, TransportError

_DELTA_SECONDS = re.compile(r"\s*(\d{1,12})(?:\.\d*)?\s*", re.ASCII)


def parse_retry_after(value: str | bytes, now: datetime) -> float | None:
    """Seconds to wait from ``now`` as a ``Retry-After`` value says: delta-seconds or an
    HTTP-date (RFC 9110 §10.2.3; a date in the past is 0). None when it is neither."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if (match := _DELTA_SECONDS.fullmatch(text)) is not None:
        return float(match.group(1))
    try:
        when = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP dates are GMT, whatever the form says
    return max(0.0, (when - now).total_seconds())


class HandshakeRefused(TransportError, HandshakeError):
    """The server answered the WebSocket upgrade with HTTP ``status`` instead of 101.

    ``retry_after`` is the wait its ``Retry-After`` header asks for, in seconds from when the
    answer arrived (an HTTP-date is turned into seconds then, by the wall clock), or None when
    there was no such header or it made no sense; ``retry_after_text`` is the header as sent;
    ``headers`` are the whole answer's (names as sent). The one type of a refused upgrade:
    :class:`feedd.wire.wsframe.ClientHandshake` raises it (``url`` is then ``""`` until the
    transport, which knows the URL, sets it), the transports raise it, and the host gates read it.
    """

    def __init__(
        self, url: str, status: int, retry_after_text: str | None, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        self.status = status
        self.headers = tuple(headers)
        self.retry_after_text = retry_after_text
        self.retry_after = (
            None if retry_after_text is None else parse_retry_after(retry_after_text, datetime.now(UTC))
        )
        text = f"handshake rejected: HTTP {status}"
        if retry_after_text is not None:
            text += f" (Retry-After {retry_after_text!r:.60})"
        super().__init__(text)
        self.url = url

    @classmethod
    def from_headers(cls, url: str, status: int, headers: Iterable[tuple[bytes, bytes]]) -> HandshakeRefused:
        headers = tuple(headers)
        value = _first(headers, b"retry-after")
        return cls(url, status, None if value is None else value.decode("latin-1").strip(), headers)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (matched without regard to case), or None."""
        return _first(self.headers, name)


def _first(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` in ``headers``, names matched without regard to case."""
    name = name.lower()
    return next((value for key, value in headers if key.lower() == name), None)
