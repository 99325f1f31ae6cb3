"""Error texts that say what happened, for logs and status.

``str(exc)`` is often empty (``ConnectionResetError()``, httpx's ``ReadTimeout('')``), and
``exc or type(exc).__name__`` never picks the name, because an exception is always truthy.
"""

from __future__ import annotations

import errno


def describe(exc: BaseException) -> str:
    """``TypeName: text``, or the type (and errno name) alone when the text is empty."""
    name = type(exc).__name__
    message = str(exc).strip()
    if not message and isinstance(exc, OSError) and exc.errno is not None:
        message = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{name}: {message}" if message else name
