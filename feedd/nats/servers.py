"""NATS server addresses: ``nats://[token@|user:pass@]host[:port]`` (``tls://`` for TLS from the start).

Pure, and below :mod:`feedd.config`, which checks the ``[nats] servers`` list with :func:`parse_server`
without loading the client.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import attrs

DEFAULT_PORT = 4222


@attrs.frozen
class ServerAddress:
    """Where a server is and how to log in to it, from ``nats://[token@|user:pass@]host[:port]``
    (``tls://`` for TLS from the start of the connection)."""

    host: str
    port: int = DEFAULT_PORT
    tls: bool = False
    token: str | None = None
    user: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"


def parse_server(url: str) -> ServerAddress:
    """A server URL as the ``[nats] servers`` list and ``feedd tail --nats`` take it;
    ValueError says what is wrong with it."""
    if "://" not in url:
        url = f"nats://{url}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a NATS server URL ({exc}): {url!r}") from None
    if parts.scheme not in ("nats", "tls"):
        raise ValueError(f"expected a nats:// or tls:// URL, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    if port == 0:
        raise ValueError(f"port must be 1 to 65535 in {url!r}")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    token = None
    if user is not None and password is None:
        token, user = user, None
    return ServerAddress(parts.hostname, port or DEFAULT_PORT, parts.scheme == "tls", token, user, password)
