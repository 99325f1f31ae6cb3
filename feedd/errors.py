"""Exception texts for logs and status fields: never empty, always naming what happened, and
never as long as the input they quote.

``str(exc)`` alone is often empty (``trio.BrokenResourceError()``, ``TimeoutError()``,
``ConnectionResetError()`` raised bare), which gives log lines such as ``connection lost: ``.
"""

from __future__ import annotations

import errno
import os
import ssl

from feedd.exchanges.base import excerpt

#: how much of a client's input an error text quotes
QUOTE_LIMIT = 60

#: how many causes of an exception without text are followed
_MAX_DEPTH = 3


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
