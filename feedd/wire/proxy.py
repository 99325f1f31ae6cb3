"""Reaching an exchange through a proxy: the proxy's URL, which proxy a URL takes, and the client
side of the two tunnels (HTTP CONNECT, SOCKS5), sans-IO.

Nothing here opens a socket: :class:`HttpConnect` and :class:`Socks5Connect` turn the proxy's
bytes (in whatever pieces they come) into either the open tunnel or a :class:`ProxyError` whose
text names the proxy and the target, never the credentials. :mod:`feedd.wire.transport` drives
them over a TCP stream; TLS (for ``wss``) and the WebSocket upgrade then run through the tunnel
end to end, so the certificate checked is the exchange's.

Which proxy a connection takes (:func:`choose_proxy`): the configured one (``[feed] proxy``, or
the venue's ``[exchanges.<venue>] proxy``; ``""`` is none), else the environment as curl reads it
(``wss_proxy``/``https_proxy``, ``ws_proxy``/``http_proxy``, ``all_proxy``, ``no_proxy``; see
docs/configuration.md#behind-a-proxy).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

import attrs

from feedd.errors import ProxyError

Scheme = Literal["http", "socks5"]

#: what a proxy URL may start with; ``socks5h`` is ``socks5`` (names are always the proxy's to resolve)
SCHEMES: dict[str, Scheme] = {"http": "http", "socks5": "socks5", "socks5h": "socks5"}

#: the port a proxy URL from the environment gets when it names none (curl's default)
ENV_DEFAULT_PORT = 1080

#: the largest reply header a proxy may send to CONNECT
MAX_REPLY_HEADER = 16 * 1024


@attrs.frozen
class Credentials:
    """A user name and password for the proxy; the password is never in a repr."""

    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class ProxyURL:
    """A proxy, parsed once: ``str()`` is its URL without credentials (for logs and status)."""

    scheme: Scheme
    host: str
    port: int
    credentials: Credentials | None = attrs.field(default=None, repr=False)

    @property
    def address(self) -> str:
        """``host:port`` (an IPv6 host in brackets), as messages name the proxy."""
        return f"{_bracketed(self.host)}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"

    def url(self) -> str:
        """The full URL, credentials included: for the HTTP client only, never for a log."""
        creds = self.credentials
        if creds is None:
            return str(self)
        userinfo = f"{quote(creds.username, safe='')}:{quote(creds.password, safe='')}"
        return f"{self.scheme}://{userinfo}@{self.address}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _redacted(text: str) -> str:
    """``text`` with any ``user:pass@`` replaced, so an error never echoes a password."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    at = rest.rfind("@", 0, rest.find("/") if "/" in rest else len(rest))
    if at >= 0:
        rest = "***@" + rest[at + 1:]
    return f"{scheme}{sep}{rest}"


def parse_proxy_url(text: str, *, default_port: int | None = None, bare_is_http: bool = False) -> ProxyURL:
    """``http://[user:pass@]host:port`` or ``socks5://...`` (``socks5h://``) as a :class:`ProxyURL`.

    ValueError says what is wrong and quotes the URL without its credentials. ``default_port``
    and ``bare_is_http`` are the environment's leniencies (curl's): a URL without a port, or
    without a scheme (``proxy.example:3128``).
    """
    shown = repr(_redacted(text))
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"a proxy URL cannot contain spaces or control characters: {shown}")
    if bare_is_http and "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # an unclosed IPv6 bracket
        raise ValueError(f"not a proxy URL ({_redacted(str(exc))}): {shown}") from None
    try:
        port = parts.port
    except ValueError:  # not digits, or above 65535
        port = 0
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(
            f"expected http://[user:pass@]host:port or socks5://[user:pass@]host:port, got {shown}"
        )
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {shown}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"a proxy URL is scheme://[user:pass@]host:port, nothing after: {shown}")
    if port is None:
        if default_port is None:
            raise ValueError(f"no port in {shown} (a proxy URL names its port)")
        port = default_port
    if not 0 < port < 65536:
        raise ValueError(f"port must be a number from 1 to 65535 in {shown}")
    credentials = None
    if parts.username is not None or parts.password is not None:
        username, password = unquote(parts.username or ""), unquote(parts.password or "")
        if not username:
            raise ValueError(f"credentials without a user name in {shown}")
        if scheme == "socks5" and (len(username.encode()) > 255 or len(password.encode()) > 255):
            raise ValueError(f"SOCKS5 user name and password are 255 bytes at most: {shown}")
        credentials = Credentials(username, password)
    return ProxyURL(scheme, host, port, credentials)


# ---- which proxy a URL takes ----------------------------------------------------------------

#: the config's value: a proxy, ``""`` (none, whatever the environment says), or None (not set)
ProxySetting = ProxyURL | Literal[""] | None


@attrs.frozen
class ProxyRoute:
    """The way one URL is reached: ``proxy`` (None: directly) and where that was decided."""

    proxy: ProxyURL | None
    #: ``config``, the environment variable's name, ``NO_PROXY``, or ``""`` (nothing set)
    source: str = ""

    def describe(self) -> str:
        """For the status and logs, never with credentials: ``http://127.0.0.1:3128``,
        ``env HTTPS_PROXY: http://10.0.0.1:3128``, ``direct`` or ``direct (NO_PROXY)``."""
        if self.proxy is None:
            return "direct" if self.source in ("", "config") else f"direct ({self.source})"
        if self.source == "config":
            return str(self.proxy)
        return f"env {self.source}: {self.proxy}"


DIRECT = ProxyRoute(None)

#: the variables asked, in order, for each URL scheme (curl's: the lower-case name first, and no
#: upper-case HTTP_PROXY, which a CGI environment lets a request set)
_ENV_NAMES: dict[str, tuple[str, ...]] = {
    "wss": ("wss_proxy", "WSS_PROXY", "https_proxy", "HTTPS_PROXY"),
    "https": ("https_proxy", "HTTPS_PROXY"),
    "ws": ("ws_proxy", "WS_PROXY", "http_proxy"),
    "http": ("http_proxy",),
}
_ALL = ("all_proxy", "ALL_PROXY")
_NO = ("no_proxy", "NO_PROXY")


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def environment_proxy(url: str, environ: Mapping[str, str]) -> ProxyRoute:
    """The route the environment gives ``url`` (see the module's docstring); ValueError names the
    variable when its value is not a proxy URL feedd can use."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    found = _first(environ, _ENV_NAMES.get(scheme, ()) + _ALL)
    if found is None:
        return DIRECT
    no_proxy = _first(environ, _NO)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if scheme in ("wss", "https") else 80)
    if no_proxy is not None and bypasses(no_proxy[1], host, port):
        return ProxyRoute(None, no_proxy[0])
    name, value = found
    try:
        proxy = parse_proxy_url(value, default_port=ENV_DEFAULT_PORT, bare_is_http=True)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return ProxyRoute(proxy, name)


def bypasses(no_proxy: str, host: str, port: int) -> bool:
    """Whether ``no_proxy`` (comma- or space-separated) exempts ``host:port`` from the proxy.

    Entries: ``*`` (every host); a name, with or without a leading dot, matching itself and every
    name under it (``example.com`` and ``.example.com`` match ``api.example.com``, not
    ``badexample.com``); an IP address or a CIDR block; any of these with ``:port`` (or an IPv6
    address in brackets with ``:port``) to match only that port.
    """
    host = host.lower().rstrip(".").strip("[]")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.replace(",", " ").split():
        entry = raw.lower()
        if entry == "*":
            return True
        entry_port: int | None = None
        if entry.startswith("["):
            inside, _, after = entry[1:].partition("]")
            entry = inside
            if after.startswith(":") and after[1:].isdigit():
                entry_port = int(after[1:])
        elif entry.count(":") == 1:
            name, _, digits = entry.partition(":")
            if digits.isdigit():
                entry, entry_port = name, int(digits)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = entry.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def choose_proxy(url: str, setting: ProxySetting, environ: Mapping[str, str]) -> ProxyRoute:
    """The route for ``url``: the configured proxy, none for ``""``, else the environment's."""
    if setting == "":
        return ProxyRoute(None, "config")
    if setting is not None:
        return ProxyRoute(setting, "config")
    return environment_proxy(url, environ)


# ---- HTTP CONNECT ---------------------------------------------------------------------------


def _authority(host: str, port: int) -> str:
    name = host if host.isascii() else host.encode("idna").decode("ascii")
    return f"{_bracketed(name)}:{port}"


class HttpConnect:
    """The client side of ``CONNECT host:port`` (RFC 9110 §9.3.6): :meth:`request` is the bytes
    to send, :meth:`receive_data` reads the reply as it comes."""

    def __init__(self, proxy: ProxyURL, host: str, port: int) -> None:
        self.proxy = proxy
        self.target = _authority(host, port)
        self._buffer = bytearray()

    def request(self) -> bytes:
        lines = [f"CONNECT {self.target} HTTP/1.1", f"Host: {self.target}"]
        creds = self.proxy.credentials
        if creds is not None:
            token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode("ascii")
            lines.append(f"Proxy-Authorization: Basic {token}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _refused(self, why: str) -> ProxyError:
        return ProxyError(f"proxy {self.proxy.address} refused CONNECT {self.target}: {why}")

    def receive_data(self, data: bytes | bytearray) -> bytes | None:
        """None while the reply header is incomplete; once it is and says 2xx, the bytes after it
        (the tunnel's first, normally none). A refusal, or what is not an HTTP reply, raises
        :class:`ProxyError`; ``b""`` (the proxy closed) before the end raises too."""
        if not data:
            raise ProxyError(
                f"proxy {self.proxy.address} closed the connection before answering CONNECT {self.target}"
            )
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_REPLY_HEADER:
                raise ProxyError(
                    f"proxy {self.proxy.address} sent a reply to CONNECT {self.target} longer than "
                    f"{MAX_REPLY_HEADER} bytes without its end"
                )
            return None
        head = bytes(self._buffer[:end]).decode("latin-1")
        rest = bytes(self._buffer[end + 4:])
        status_line, *header_lines = head.split("\r\n")
        version, _, tail = status_line.partition(" ")
        code_text, _, reason = tail.partition(" ")
        if not version.startswith("HTTP/1.") or not (len(code_text) == 3 and code_text.isdigit()):
            raise ProxyError(
                f"proxy {self.proxy.address} answered CONNECT {self.target} with what is not an HTTP "
                f"reply: {status_line[:80]!r}"
            )
        code = int(code_text)
        if 200 <= code < 300:
            return rest
        why = f"{code} {reason.strip()}".strip()
        if code in (401, 407):  # 407 is the standard; tinyproxy answers wrong credentials with 401
            wants = next(
                (line.partition(":")[2].strip() for line in header_lines
                 if line.partition(":")[0].strip().lower() == "proxy-authenticate"), "",
            )
            asked = f" (it asks for {wants[:60]})" if wants else ""
            why += (
                "; the credentials were not accepted" if self.proxy.credentials is not None
                else f"; no credentials configured{asked}"
            )
        raise self._refused(why)


# ---- SOCKS5 ---------------------------------------------------------------------------------

#: RFC 1928 §6, the REP field of a reply
SOCKS5_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}

_NO_AUTH = 0x00
_USERNAME = 0x02
_NONE_ACCEPTABLE = 0xFF


class Socks5Connect:
    """The client side of a SOCKS5 CONNECT (RFC 1928) with username/password authentication
    (RFC 1929) when the proxy has credentials. The target goes as a domain name (address type 3),
    so the proxy resolves it; an IP address goes as one.

    Drive it with :meth:`data_to_send` and :meth:`receive_data` until ``receive_data`` returns
    bytes (the tunnel is open; what followed the reply) instead of None.
    """

    def __init__(self, proxy: ProxyURL, host: str, port: int) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.target = _authority(host, port)
        self._buffer = bytearray()
        self._state: Literal["greeting", "auth", "connect", "open"] = "greeting"
        methods = [_NO_AUTH, _USERNAME] if proxy.credentials is not None else [_NO_AUTH]
        self._outgoing = bytearray(bytes([5, len(methods), *methods]))

    def data_to_send(self) -> bytes:
        out, self._outgoing = bytes(self._outgoing), bytearray()
        return out

    def _error(self, why: str) -> ProxyError:
        return ProxyError(f"proxy {self.proxy.address} (SOCKS5) {why}")

    def _refused(self, why: str) -> ProxyError:
        return ProxyError(f"proxy {self.proxy.address} refused CONNECT {self.target}: {why}")

    def _connect_request(self) -> bytes:
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            name = self.host.encode("idna")
            if len(name) > 255:
                raise self._error(f"cannot name {self.host[:60]!r}: longer than 255 bytes") from None
            where = bytes([3, len(name)]) + name
        else:
            where = bytes([1 if address.version == 4 else 4]) + address.packed
        return bytes([5, 1, 0]) + where + self.port.to_bytes(2, "big")

    def receive_data(self, data: bytes | bytearray) -> bytes | None:
        if not data:
            raise self._error(f"closed the connection during the handshake ({self._state}) for {self.target}")
        self._buffer += data
        while True:
            buffer = self._buffer
            if self._state == "greeting":
                if len(buffer) < 2:
                    return None
                version, method = buffer[0], buffer[1]
                del buffer[:2]
                if version != 5:
                    raise self._error(f"answered the greeting with version {version}: not a SOCKS5 proxy")
                if method == _NONE_ACCEPTABLE:
                    unasked = self.proxy.credentials is None
                    raise self._refused(
                        "no acceptable authentication method"
                        + (" (it wants credentials; none configured)" if unasked else "")
                    )
                if method == _USERNAME and self.proxy.credentials is not None:
                    creds = self.proxy.credentials
                    user, password = creds.username.encode(), creds.password.encode()
                    self._outgoing += bytes([1, len(user)]) + user + bytes([len(password)]) + password
                    self._state = "auth"
                elif method == _NO_AUTH:
                    self._outgoing += self._connect_request()
                    self._state = "connect"
                else:
                    raise self._error(f"chose authentication method {method}, which was not offered")
            elif self._state == "auth":
                if len(buffer) < 2:
                    return None
                status = buffer[1]
                del buffer[:2]
                if status != 0:
                    raise self._refused(f"username/password authentication failed (status {status})")
                self._outgoing += self._connect_request()
                self._state = "connect"
            elif self._state == "connect":
                if len(buffer) < 5:
                    return None
                version, reply, address_type = buffer[0], buffer[1], buffer[3]
                if version != 5:
                    raise self._error(f"answered CONNECT with version {version}: not a SOCKS5 reply")
                if reply != 0:
                    text = SOCKS5_REPLIES.get(reply, "unassigned reply code")
                    raise self._refused(f"{text} (SOCKS5 reply {reply})")
                sizes = {1: 4, 3: 1 + buffer[4], 4: 16}
                if address_type not in sizes:
                    raise self._error(f"answered CONNECT with unknown address type {address_type}")
                length = 4 + sizes[address_type] + 2
                if len(buffer) < length:
                    return None
                del buffer[:length]
                self._state = "open"
            else:
                rest = bytes(buffer)
                buffer.clear()
                return rest
