"""feedd's exceptions, all of them in one place, and the texts errors are told with.

The exception tree (the module that raises each is in brackets)::

    Exception
    +-- SubscriptionRefused ......... a subscription the daemon will not make [feed.supervisor, control]
    |   +-- UnknownSymbol              not an instrument of the venue
    |   +-- UnsupportedSymbol          an instrument the venue's streams do not carry as itself
    |   +-- NotSubscribed              an unsubscribe of what is not subscribed
    |   +-- VenueRefused               the venue answered the subscribe with an error
    |   +-- Superseded                 unsubscribed while its subscribe awaited the venue's answer
    |   +-- NoAnswer                   no answer within the deadline (``pending``: topics awaited)
    |   +-- InvalidRequest             cannot be right whatever the venue says
    |   +-- UnknownVenue               not a venue id feedd knows, or not configured
    |   +-- VenueDisabled              configured but not running
    |   +-- SubscriberRefused ........ (also a SubscribeError) the daemon refused a subscriber [client]
    +-- SubscribeError ............... feedd.client cannot subscribe (no socket, lost it) [client]
    +-- TransportError ............... a WebSocket connection could not be opened, or ended [wire]
    |   +-- HandshakeRefused ......... (also a HandshakeError) the upgrade got HTTP status != 101;
    |   |                              defined in feedd.wire.upgrade beside ``parse_retry_after``
    |   +-- ProxyError ............... the proxy is unreachable, refused the tunnel (HTTP CONNECT,
    |                                  SOCKS5), or did not speak its protocol [wire.proxy, wire.transport]
    +-- HandshakeError ............... the answer to the upgrade is not a valid acceptance [wire]
    +-- ProtocolError ................ the WebSocket peer broke RFC 6455 (``code``: close code) [wire]
    +-- TLSError ..................... the TLS session failed [wire.tls]
    +-- NatsError .................... a NATS connection could not be made or was lost [nats]
    |   +-- ConnectionLost             the connection ended
    |   +-- NoResponders               nobody listens on the request's subject
    |   +-- CredentialsError           the credentials file cannot be read or used
    |   +-- JetStreamError             the JetStream API answered with an error
    +-- NatsProtocolError ............ the NATS server sent what is not the NATS protocol [nats]
    +-- PublisherError ............... the subscriber socket's path cannot be taken [fanout.unix]
    +-- TailError .................... ``feedd tail`` cannot go on [cli.tail]
    +-- RuntimeError
    |   +-- ServiceNotRunning ........ a WebSocketService call before initialize() or after close() [control]
    +-- ValueError
        +-- FilterError .............. a subscriber's filter line is not acceptable [fanout.lines]

Defined beside the code they belong to, for now: ``config.ConfigError``, ``control.state.StateError``,
``http.app.HttpError``, ``http.client.ApiError``, ``http.server.ListenError``.

This module imports nothing of feedd: every layer may raise and catch these.

Exception texts for logs and status fields: never empty, always naming what happened, and
never as long as the input they quote.

``str(exc)`` alone is often empty (``trio.BrokenResourceError()``, ``TimeoutError()``,
``ConnectionResetError()`` raised bare), which gives log lines such as ``connection lost: ``.
"""

from __future__ import annotations

import errno
import os
import ssl
from collections.abc import Sequence

#: how much of a client's input an error text quotes
QUOTE_LIMIT = 60

#: how many causes of an exception without text are followed
_MAX_DEPTH = 3

#: the close code a :class:`ProtocolError` sends by default (RFC 6455 protocol error)
_CLOSE_PROTOCOL_ERROR = 1002


# ---- refused subscriptions ----------------------------------------------------------------


class SubscriptionRefused(Exception):
    """A subscription the daemon will not make; the message names venue and symbol."""


class UnknownSymbol(SubscriptionRefused):
    pass


class UnsupportedSymbol(SubscriptionRefused):
    """A symbol the venue's streams do not carry as itself (see :meth:`Venue.symbol_problem`)."""


class NotSubscribed(SubscriptionRefused):
    pass


class VenueRefused(SubscriptionRefused):
    """The venue answered a subscribe request with an error; the subscription was rolled back."""


class Superseded(SubscriptionRefused):
    """The symbol was unsubscribed while its subscribe awaited the venue's answer: a conflict
    between two requests, not a refusal by the venue."""


class NoAnswer(SubscriptionRefused):
    """No answer within the deadline: the instrument list is still loading, or the venue has not
    acknowledged (``pending`` names the wire topics still awaited)."""

    def __init__(self, message: str, pending: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.pending = tuple(pending)


class InvalidRequest(SubscriptionRefused):
    """A request that cannot be right whatever the venue says (a malformed symbol, a channel)."""


class UnknownVenue(SubscriptionRefused):
    """Not a venue id feedd knows, or one the configuration does not name."""


class VenueDisabled(SubscriptionRefused):
    """The venue is configured but not running (``enabled = false``, or the feed is off)."""


class ServiceNotRunning(RuntimeError):
    """A call of a :class:`~feedd.control.service.WebSocketService` that is not running: not yet
    started (``await ws.initialize()`` or ``async with``), or stopped (an instance runs once)."""


# ---- the subscriber library (feedd.client) ------------------------------------------------


class SubscribeError(Exception):
    """Cannot subscribe: the message names the socket path and the reason."""


class SubscriberRefused(SubscribeError, SubscriptionRefused):
    """The daemon refused the subscriber (``error`` says why: a bad filter, too many
    subscribers); retrying would not help."""

    def __init__(self, path: str, error: str) -> None:
        super().__init__(f"feedd at {path} refused the subscription: {error}")
        self.error = error


# ---- the wire -----------------------------------------------------------------------------


class TransportError(Exception):
    """The connection could not be opened, or it ended; ``str()`` says why, for status."""


class ProxyError(TransportError):
    """The proxy could not be reached, refused the tunnel, or broke its protocol; ``str()`` names
    the proxy (``host:port``, never its credentials) and the target, e.g. ``proxy 127.0.0.1:3128
    refused CONNECT stream.binance.com:9443: 403 Forbidden``."""


class HandshakeError(Exception):
    """The server's answer to the upgrade request is not a valid WebSocket acceptance."""


class ProtocolError(Exception):
    """The peer broke RFC 6455; ``code`` is the close code to send it (1002, 1007 or 1009)."""

    def __init__(self, reason: str, code: int = _CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TLSError(Exception):
    """The TLS session failed: handshake (certificate, protocol) or a corrupt record or alert.

    ``str()`` is OpenSSL's own text, e.g. ``[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify
    failed: ...``; the ``ssl.SSLError`` is the ``__cause__``.
    """


# ---- NATS ---------------------------------------------------------------------------------


class NatsError(Exception):
    """A NATS connection could not be made or was lost; the message says why."""


class ConnectionLost(NatsError):
    """The connection ended (closed by the server, reset, or the server stopped answering)."""


class NoResponders(NatsError):
    """Nobody listens on the request's subject (for ``$JS.API.*``: JetStream is not enabled)."""


class CredentialsError(NatsError):
    """The credentials file cannot be read or used (the message names it)."""


class JetStreamError(NatsError):
    """The JetStream API answered with an error (its description and codes are in the text)."""


class NatsProtocolError(Exception):
    """The server sent something that is not the NATS protocol (or a line too long)."""


# ---- fan-out and tools --------------------------------------------------------------------


class PublisherError(Exception):
    """The publisher cannot take its socket path; the message names the path and why."""


class FilterError(ValueError):
    """A subscriber's filter line is not acceptable; the message is sent back to it."""


class TailError(Exception):
    """``feedd tail`` cannot go on; the message names the socket path and the reason."""


# ---- error texts --------------------------------------------------------------------------


def excerpt(frame: str | bytes, limit: int = 200) -> str:
    """A bounded, printable slice of a frame for error messages and logs."""
    text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
    return text if len(text) <= limit else text[:limit] + "..."


def first_of_run(count: int) -> bool:
    """True for the 1st, 2nd, 4th, 8th, ... time: log a repeating problem without flooding the log."""
    return count & (count - 1) == 0


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters (``...`` marks the cut): an error that names
    what a client sent must not grow with it (a 5,000-character symbol is not echoed whole)."""
    return excerpt(repr(value), limit)


def clipped(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` as it is, cut to ``limit`` characters like :func:`quoted`."""
    return excerpt(text, limit)


def describe(exc: BaseException) -> str:
    """The exception's type and text, e.g. ``ConnectionRefusedError: Connection refused (ECONNREFUSED)``.

    An OS error with an errno but no text gets the system's text for it; an exception without
    text tells its cause instead (``BrokenResourceError (from ConnectionResetError: ...)``).
    """
    return _describe(exc, _MAX_DEPTH)


def _describe(exc: BaseException, depth: int) -> str:
    name = type(exc).__name__
    text = _os_text(exc) if isinstance(exc, OSError) else str(exc).strip()
    if text:
        return f"{name}: {text}"
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None and depth > 0:
        return f"{name} (from {_describe(cause, depth - 1)})"
    return name


def _os_text(exc: OSError) -> str:
    """errno-based text; ssl and getaddrinfo errors carry library codes, so their own text is kept."""
    code = exc.errno
    if isinstance(exc, ssl.SSLError) or not isinstance(code, int) or code not in errno.errorcode:
        return str(exc.strerror or exc).strip()
    text = exc.strerror or os.strerror(code)
    if exc.filename is not None:
        text = f"{text}: {os.fsdecode(exc.filename)}"
    return f"{text} ({errno.errorcode[code]})"
