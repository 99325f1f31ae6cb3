"""Configuration: TOML → frozen attrs classes via cattrs, then environment overrides.

Every failure is a :class:`ConfigError` that names the file and the key, so ``feedd run`` can
exit 2 with one readable line instead of a traceback.
"""

from __future__ import annotations

import logging
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from feedd.errors import describe, quoted
from feedd.exchanges import make_venue, venue_ids
from feedd.exchanges.base import ALL_CHANNELS, CHANNELS, Channel, Subscription, Venue
from feedd.wire.proxy import ProxySetting, ProxyURL, environment_proxy, parse_proxy_url

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem, worded for the operator: ``file: key: what is wrong``."""


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name}: must be a positive number, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: must be 0 or more, got {value!r}")


def _finite_non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name}: must be 0 or a positive number, got {value!r}")


def _listen_address(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]") and len(host) > 2
    if (
        not sep
        or not host
        or not (bracketed or ("[" not in host and "]" not in host and ":" not in host))
        or not (port.isascii() and port.isdigit())
        or not 0 <= int(port) < 65536
    ):
        raise ValueError(
            f"{attribute.name}: expected HOST:PORT (an IPv6 host in brackets; port 0 picks a free "
            f"port), got {value!r}"
        )


#: longest symbol accepted from a config file, the state file or the API
MAX_SYMBOL_LENGTH = 64


def symbol_problem(symbol: str) -> str | None:
    """Why ``symbol`` cannot be one (empty, too long, a space or a control character). What a
    venue's own names cannot hold (Binance's stream-name separators ``@`` and ``/``, which
    Hyperliquid's spot pairs ``PURR/USDC`` and ``@107`` do hold) is its ``symbol_problem``."""
    if not symbol or len(symbol) > MAX_SYMBOL_LENGTH:
        return f"not a symbol (1 to {MAX_SYMBOL_LENGTH} characters): {quoted(symbol)}"
    if any(c.isspace() or not c.isprintable() for c in symbol):
        return f"not a symbol: {quoted(symbol)}"
    return None


@attrs.frozen
class FeedConfig:
    enabled: bool = True
    #: first backoff delay, seconds
    reconnect_interval: float = attrs.field(default=5.0, validator=_positive)
    #: consecutive failed attempts before a venue is ``failed``; 0 = never give up
    max_retries: int = attrs.field(default=10, validator=_non_negative)
    #: backoff ceiling, seconds
    max_backoff: float = attrs.field(default=300.0, validator=_positive)
    #: no frame for this long → the connection is dropped and reopened
    stale_after: float = attrs.field(default=30.0, validator=_positive)
    #: a connection delivering data this long counts as stable and resets the failure count
    stable_after: float = attrs.field(default=10.0, validator=_positive)
    #: deadline for TCP + TLS + WebSocket handshake
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: runtime (API) subscriptions survive restarts here
    state_file: str = "subscriptions.json"
    #: instrument lists are cached here, so a restart during a REST outage still streams
    cache_dir: str = "cache"
    #: seconds a venue's start waits for its instrument list over REST before it takes the
    #: cached one (the fetch goes on in the background); 0: the cache at once
    instruments_wait: float = attrs.field(default=3.0, validator=_finite_non_negative)
    #: seconds between fetches of a good instrument list (new listings, delistings); 0: never
    instruments_refresh: float = attrs.field(default=6 * 3600.0, validator=_finite_non_negative)
    #: the WebSocket implementation (feedd.wire.transport.TRANSPORTS): feedd's own framing, or
    #: trio-websocket (slower: one task switch per message; kept as the reference)
    transport: Literal["native", "trio-websocket"] = "native"
    #: trades fetched from the venue's REST per gap in a symbol's trade ids, at most; 0: none
    #: (gaps are still detected and reported lost)
    backfill_max: int = attrs.field(default=10_000, validator=_non_negative)
    #: seconds a symbol's live trades wait for its backfill before they go on without it
    backfill_hold: float = attrs.field(default=2.0, validator=_positive)
    #: a gap older than this many seconds is not fetched (exchanges keep little history)
    backfill_max_age: float = attrs.field(default=600.0, validator=_positive)
    #: every venue's connections (WebSocket and REST) go through this proxy: ``http://`` (HTTP
    #: CONNECT) or ``socks5://`` (``socks5h://``), ``[user:pass@]host:port``; ``""``: none, not
    #: even the environment's; absent: the environment's (HTTPS_PROXY, ALL_PROXY, NO_PROXY, ...)
    proxy: ProxySetting = None

    @max_backoff.validator
    def _backoff_above_interval(self, attribute: attrs.Attribute[Any], value: float) -> None:
        if value < self.reconnect_interval:
            raise ValueError(
                f"max_backoff: must be at least reconnect_interval ({self.reconnect_interval})"
            )


def _token(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (not value or any(c.isspace() or not c.isprintable() for c in value)):
        raise ValueError(f"{attribute.name}: must be non-empty printable text without spaces")


@attrs.frozen
class HttpConfig:
    listen: str = attrs.field(default="127.0.0.1:8080", validator=_listen_address)
    #: a bearer token the mutating endpoints demand (``Authorization: Bearer <token>``)
    token: str | None = attrs.field(default=None, validator=_token)
    #: or a file holding it (read at load, surrounding whitespace stripped); not both
    token_file: str | None = attrs.field(default=None)

    @token_file.validator
    def _one_token(self, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and self.token is not None:
            raise ValueError("token_file: set token or token_file, not both")


@attrs.frozen
class UnixConfig:
    path: str = "/run/feedd/feedd.sock"
    #: records buffered per subscriber before its oldest are dropped
    client_buffer: int = attrs.field(default=10_000, validator=_positive)
    #: subscribers served at once; one more gets an error line and is closed
    max_clients: int = attrs.field(default=256, validator=_positive)


def _nats_servers(instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    from feedd.nats.servers import parse_server  # only with a [nats] table: no cost without

    if not value:
        raise ValueError(f"{attribute.name}: must list at least one server URL")
    for index, url in enumerate(value):
        try:
            parse_server(url)
        except ValueError as exc:
            raise ValueError(f"{attribute.name}: item {index}: {exc}") from None


def _subject_tokens(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or any(not t or any(c in " \t*>" or not c.isprintable() for c in t)
                        for t in value.split(".")):
        raise ValueError(f"{attribute.name}: expected subject tokens separated by dots, without "
                         f"spaces or wildcards, got {value!r}")


def _stream_name(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or len(value) > 255 or any(c in " .*>/\\" or not c.isprintable() for c in value):
        raise ValueError(f"{attribute.name}: a stream name without spaces, dots, wildcards or "
                         f"slashes, got {value!r}")


@attrs.frozen
class NatsConfig:
    """``[nats]``: publish every record to a JetStream stream (feedd.fanout.nats)."""

    servers: tuple[str, ...] = attrs.field(default=("nats://127.0.0.1:4222",), validator=_nats_servers)
    #: a ``.creds`` file (user JWT and nkey seed), or a file holding an nkey seed alone
    credentials: str | None = None
    token: str | None = attrs.field(default=None, validator=_token)
    subject_prefix: str = attrs.field(default="feedd", validator=_subject_tokens)
    stream: str = attrs.field(default="FEEDD", validator=_stream_name)
    #: seconds a record is kept in the stream (0: no limit)
    max_age: float = attrs.field(default=86400.0, validator=_non_negative)
    #: bytes the stream keeps before discarding its oldest records (-1: no limit)
    max_bytes: int = attrs.field(default=-1)
    #: seconds within which a record's message id, seen again, is not stored twice
    duplicate_window: float = attrs.field(default=120.0, validator=_positive)
    #: copies of the stream in a NATS cluster (when feedd creates it)
    replicas: int = attrs.field(default=1, validator=_positive)
    #: records held while NATS is slow or away; beyond, the oldest are dropped (a gap)
    buffer: int = attrs.field(default=100_000, validator=_positive)
    #: records per publish at most (each publish waits for all its acks)
    batch: int = attrs.field(default=2000, validator=_positive)
    #: seconds a publish waits for its acks before the connection is given up and remade
    ack_timeout: float = attrs.field(default=5.0, validator=_positive)

    @max_bytes.validator
    def _bytes_limit(self, attribute: attrs.Attribute[Any], value: int) -> None:
        if value != -1 and value <= 0:
            raise ValueError("max_bytes: must be positive, or -1 for no limit")

    @token.validator
    def _one_login(self, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and self.credentials is not None:
            raise ValueError("token: set credentials or token, not both")


def _venue_list(instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    known = venue_ids()
    for index, venue_id in enumerate(value):
        if venue_id not in known:
            raise ValueError(f"{attribute.name}: item {index}: unknown venue id {venue_id!r} "
                             f"(known: {', '.join(known)})")


@attrs.frozen
class RecordConfig:
    """``[record]``: record every frame each connection receives (feedd.record, docs/recording.md)."""

    #: where the files go (a folder per venue); relative to the config file
    dir: str = "recordings"
    #: seconds after which each connection's file is closed and a new one begun
    rotate: float = attrs.field(default=3600.0, validator=_positive)
    compress: Literal["zstd", "gzip", "none"] = "zstd"
    #: bytes of recordings kept in ``dir`` in total, the oldest files deleted first (0: no limit)
    max_bytes: int = attrs.field(default=0, validator=_non_negative)
    #: the venues recorded (empty: all)
    venues: tuple[str, ...] = attrs.field(default=(), validator=_venue_list)
    #: frames the recorder holds for its task; beyond, the newest are dropped (counted)
    buffer: int = attrs.field(default=100_000, validator=_positive)


@attrs.frozen
class ExchangeConfig:
    symbols: tuple[str, ...] = ()
    channels: tuple[Channel, ...] = attrs.field(default=CHANNELS)
    enabled: bool = True
    url: str | None = None
    rest_url: str | None = None
    #: check symbols against the venue's instrument list before subscribing
    check_symbols: bool = True
    #: a best bid/ask older than this many seconds is not attached to a ticker (venues whose
    #: tickers take bid/ask from a separate quote stream: binance-usdm, bybit spot)
    quote_max_age: float = attrs.field(default=5.0, validator=_positive)
    #: replace each connection make-before-break after this many seconds; absent: the venue's
    #: own lifetime (Binance: 23 h 30 min, before its 24 h cut), 0: never (only on a venue's
    #: shutdown notice)
    rotate_after: float | None = attrs.field(default=None, validator=attrs.validators.optional(_non_negative))
    #: seconds: keep only the newest quote per symbol per interval (``quotes`` channel); 0: off
    conflate: float = attrs.field(default=0.0, validator=_non_negative)
    #: this venue's proxy, instead of ``[feed] proxy``; ``""``: none for this venue
    proxy: ProxySetting = None

    @channels.validator
    def _some_channels(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if not value:
            raise ValueError("channels: must name at least one of " + ", ".join(ALL_CHANNELS))


@attrs.frozen
class Config:
    feed: FeedConfig = FeedConfig()
    http: HttpConfig = HttpConfig()
    unix: UnixConfig = UnixConfig()
    exchanges: Mapping[str, ExchangeConfig] = attrs.field(factory=dict)
    #: the NATS JetStream sink; None (no ``[nats]`` table): no sink, nothing of NATS imported
    nats: NatsConfig | None = None
    #: the recorder; None (no ``[record]`` table): nothing is recorded
    record: RecordConfig | None = None
    #: where the configuration came from (for messages and relative paths)
    source: str = "<defaults>"


def _strict(kind: type[T], accept: tuple[type, ...]) -> Any:
    def structure(value: Any, _: type) -> T:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got a boolean")
        if not isinstance(value, accept):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return kind(value)  # type: ignore[call-arg]

    return structure


def _is_tuple(kind: Any) -> bool:
    return getattr(kind, "__origin__", None) is tuple


def _array_of(conv: cattrs.Converter) -> Any:
    """TOML arrays only: cattrs would happily split the string 'BTCUSDT' into characters."""

    def factory(kind: Any) -> Any:
        element = kind.__args__[0]

        def structure(value: Any, _: Any) -> tuple[Any, ...]:
            if not isinstance(value, list):
                raise TypeError(f"expected an array, got {type(value).__name__} {value!r}")
            items = []
            for index, item in enumerate(value):
                try:
                    items.append(conv.structure(item, element))
                except (TypeError, ValueError) as exc:
                    raise TypeError(f"item {index}: {exc}") from None
            return tuple(items)

        return structure

    return factory


def _is_literal(kind: Any) -> bool:
    return getattr(kind, "__origin__", None) is Literal


def _literal(kind: Any) -> Any:
    allowed = kind.__args__

    def structure(value: Any, _: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value

    return structure


def _proxy_setting(value: Any, _: Any) -> ProxySetting:
    """A proxy URL parsed once, at load; ``""`` stays (none); the error never shows a password."""
    if not isinstance(value, str):
        raise TypeError(f"expected a proxy URL string, got {type(value).__name__}")
    return "" if value == "" else parse_proxy_url(value)


def proxy_of(config: Config, venue_id: str) -> ProxySetting:
    """The proxy setting of a venue: its own ``proxy``, else ``[feed] proxy`` (None: neither)."""
    exchange = config.exchanges.get(venue_id)
    own = None if exchange is None else exchange.proxy
    return config.feed.proxy if own is None else own


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook_func(lambda kind: kind == ProxySetting, _proxy_setting)
    conv.register_structure_hook_factory(_is_literal, _literal)
    conv.register_structure_hook_factory(_is_tuple, _array_of(conv))
    conv.register_structure_hook(bool, _strict(bool, (bool,)))
    conv.register_structure_hook(int, _strict(int, (int,)))
    conv.register_structure_hook(float, _strict(float, (int, float)))
    conv.register_structure_hook(str, _strict(str, (str,)))
    return conv


_CONVERTER = _converter()
_FILE_KEYS = ("feed", "http", "unix", "exchanges", "nats", "record")


def _describe(exc: BaseException, path: str) -> list[str]:
    """Flatten a cattrs error tree into ``key: problem`` lines."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return [f"{path + '.' if path else ''}{key}: unknown key" for key in sorted(exc.extra_fields)]
    if isinstance(exc, ClassValidationError | IterableValidationError):
        lines: list[str] = []
        for sub in exc.exceptions:
            note = next(iter(getattr(sub, "__notes__", [])), None)
            name = getattr(note, "name", None) if note is not None else None
            index = getattr(note, "index", None) if note is not None else None
            if name is not None:
                child = f"{path}.{name}" if path else str(name)
            elif index is not None:
                child = f"{path}[{index}]"
            else:
                child = path
            lines.extend(_describe(sub, child))
        return lines or [f"{path}: {exc}"]
    message = str(exc)
    field, sep, problem = message.partition(": ")
    if sep and field.isidentifier():  # an attrs validator names its own field
        if path.rsplit(".", 1)[-1] != field:
            path = f"{path}.{field}" if path else field
        message = problem
    return [f"{path or '<top>'}: {message}"]


def structure_section(data: Any, cls: type[T], path: str, source: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {path}: expected a table, got {type(data).__name__} {data!r}")
    try:
        return _CONVERTER.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        raise ConfigError("; ".join(f"{source}: {line}" for line in _describe(exc, path))) from None
    except (TypeError, ValueError) as exc:  # an attrs validator: "<field>: <problem>"
        field, sep, problem = str(exc).partition(": ")
        where = f"{path}.{field}" if sep and field.isidentifier() else path
        raise ConfigError(f"{source}: {where}: {problem if sep else exc}") from None


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """Structure a decoded TOML document; ConfigError names ``source`` and the bad key."""
    extra = sorted(set(data) - set(_FILE_KEYS))
    if extra:
        raise ConfigError(f"{source}: {extra[0]}: unknown key (expected one of {', '.join(_FILE_KEYS)})")
    feed = structure_section(data.get("feed", {}), FeedConfig, "feed", source)
    http = structure_section(data.get("http", {}), HttpConfig, "http", source)
    unix = structure_section(data.get("unix", {}), UnixConfig, "unix", source)
    raw_exchanges = data.get("exchanges", {})
    if not isinstance(raw_exchanges, Mapping):
        raise ConfigError(f"{source}: exchanges: expected a table of venues")
    known = venue_ids()
    exchanges: dict[str, ExchangeConfig] = {}
    for venue_id, section in raw_exchanges.items():
        key = f"exchanges.{venue_id}"
        if venue_id not in known:
            raise ConfigError(f"{source}: {key}: unknown venue id (known: {', '.join(known)})")
        exchange = structure_section(section, ExchangeConfig, key, source)
        venue = make_venue(venue_id)
        symbols = exchange.symbols
        if venue.uppercase_symbols:
            symbols = tuple(s.upper() for s in symbols)
        for i, symbol in enumerate(symbols):
            if (problem := symbol_problem(symbol) or venue.symbol_problem(symbol)) is not None:
                raise ConfigError(f"{source}: {key}.symbols[{i}]: {problem}")
        _check_endpoints(venue, exchange, f"{source}: {key}")
        exchanges[venue_id] = attrs.evolve(exchange, symbols=tuple(dict.fromkeys(symbols)))
    nats = None if "nats" not in data else structure_section(data["nats"], NatsConfig, "nats", source)
    record = (None if "record" not in data
              else structure_section(data["record"], RecordConfig, "record", source))
    return Config(feed=feed, http=http, unix=unix, exchanges=exchanges, nats=nats, record=record,
                  source=source)


#: config key -> (accepted schemes, how the error names them)
_ENDPOINTS = {
    "url": (("ws", "wss"), "a ws:// or wss:// URL"),
    "rest_url": (("http", "https"), "an http:// or https:// URL"),
}


def _url_problem(url: str, schemes: tuple[str, ...], expected: str) -> str | None:
    """What makes ``url`` unusable as an endpoint (scheme, host, port), or None."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return f"a URL cannot contain spaces or control characters: {url!r}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        return f"not a URL ({exc}): {url!r}"
    try:
        port = parts.port
    except ValueError:  # not digits, or above 65535
        port = 0
    if parts.scheme not in schemes:
        return f"expected {expected}, got {url!r}"
    host = parts.hostname
    if not host:
        return f"no host in {url!r}"
    if port == 0:
        return f"port must be a number from 1 to 65535 in {url!r}"
    return None


def _check_endpoints(venue: Venue, exchange: ExchangeConfig, where: str) -> None:
    """Endpoint and channel mistakes surface at start-up, naming the key, not at the first connect.

    Only the configured channels are asked for: an adapter refuses (ValueError) a channel it lacks.
    """
    for key, (schemes, expected) in _ENDPOINTS.items():
        url = getattr(exchange, key)
        problem = None if url is None else _url_problem(url, schemes, expected)
        if problem is not None:
            raise ConfigError(f"{where}.{key}: {problem}")
    base = exchange.url or venue.default_url
    routes: set[str] = set()
    for channel in exchange.channels:
        try:
            routes.update(topic.route for topic in venue.topics(Subscription("X", channel)))
        except ValueError:
            raise ConfigError(f"{where}.channels: {venue.venue_id} does not support {channel!r}") from None
    for route in sorted(routes):
        try:
            venue.url(route, base)
        except ValueError as exc:
            raise ConfigError(f"{where}.url: {exc}") from None


_ENV_NAMES = {
    "enabled": "ENABLE_WEBSOCKET_FEED",
    "reconnect_interval": "WEBSOCKET_RECONNECT_INTERVAL",
    "max_retries": "MAX_WEBSOCKET_RETRIES",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def apply_environment(config: Config, environ: Mapping[str, str]) -> Config:
    """Apply ``ENABLE_WEBSOCKET_FEED``, ``WEBSOCKET_RECONNECT_INTERVAL``, ``MAX_WEBSOCKET_RETRIES``."""
    changes: dict[str, Any] = {}
    if (raw := environ.get("ENABLE_WEBSOCKET_FEED")) is not None:
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ConfigError(f"ENABLE_WEBSOCKET_FEED: expected true/false/1/0, got {raw!r}")
        changes["enabled"] = word in _TRUE
    if (raw := environ.get("WEBSOCKET_RECONNECT_INTERVAL")) is not None:
        try:
            changes["reconnect_interval"] = float(raw)
        except ValueError:
            raise ConfigError(f"WEBSOCKET_RECONNECT_INTERVAL: expected seconds, got {raw!r}") from None
    if (raw := environ.get("MAX_WEBSOCKET_RETRIES")) is not None:
        try:
            changes["max_retries"] = int(raw)
        except ValueError:
            raise ConfigError(f"MAX_WEBSOCKET_RETRIES: expected a whole number, got {raw!r}") from None
    if not changes:
        return config
    feed = config.feed
    if "reconnect_interval" in changes and feed.max_backoff < changes["reconnect_interval"]:
        changes["max_backoff"] = changes["reconnect_interval"]
    try:
        return attrs.evolve(config, feed=attrs.evolve(feed, **changes))
    except ValueError as exc:
        field = str(exc).split(":", 1)[0]
        raise ConfigError(f"{_ENV_NAMES.get(field, 'environment')}: {exc}") from None


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(key: str, value: str) -> str:
        where = f"{config.source}: {key}"
        if not value or "\0" in value:
            raise ConfigError(f"{where}: expected a file path, got {value!r}")
        try:
            path = Path(value).expanduser()
        except RuntimeError as exc:  # "~user" for a user that does not exist
            raise ConfigError(f"{where}: cannot expand {value!r}: {exc}") from None
        return str(path if path.is_absolute() else base / path)

    token_file = config.http.token_file
    nats = config.nats
    if nats is not None and nats.credentials is not None:
        nats = attrs.evolve(nats, credentials=resolve("nats.credentials", nats.credentials))
    record = config.record
    if record is not None:
        record = attrs.evolve(record, dir=resolve("record.dir", record.dir))
    return attrs.evolve(
        config,
        feed=attrs.evolve(
            config.feed,
            state_file=resolve("feed.state_file", config.feed.state_file),
            cache_dir=resolve("feed.cache_dir", config.feed.cache_dir),
        ),
        http=attrs.evolve(
            config.http,
            token_file=None if token_file is None else resolve("http.token_file", token_file),
        ),
        unix=attrs.evolve(config.unix, path=resolve("unix.path", config.unix.path)),
        nats=nats,
        record=record,
    )


def read_token_file(config: Config) -> Config:
    """``[http] token_file`` read into ``token``, so a missing or empty file fails at load."""
    path = config.http.token_file
    if path is None:
        return config
    where = f"{config.source}: http.token_file"
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or describe(exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(f"{where}: {path} must hold one token: non-empty, no spaces or control characters")
    return attrs.evolve(config, http=HttpConfig(listen=config.http.listen, token=token))


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, structure and override a config file; relative paths are relative to the file."""
    file = Path(path)
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or describe(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    config = parse_config(data, source)
    config = apply_environment(config, os.environ if environ is None else environ)
    config = _resolve_paths(config, file.resolve().parent)
    config = read_token_file(config)
    _check_socket_path(config)
    _check_proxies(config, os.environ if environ is None else environ)
    for venue_id, exchange in config.exchanges.items():
        proxy = proxy_of(config, venue_id)
        log.debug(
            "%s: %s: %d symbol(s), channels %s, url %s, rest_url %s, proxy %s", source, venue_id,
            len(exchange.symbols), "+".join(exchange.channels), exchange.url or "default",
            exchange.rest_url or "default",
            "environment" if proxy is None else "none" if proxy == "" else proxy,
        )
    return config


def _check_proxies(config: Config, environ: Mapping[str, str]) -> None:
    """A proxy the transport cannot use, or an environment proxy that is not a URL, fails at load.

    The environment is only read for a venue with no proxy configured (none of its own, none in
    ``[feed]``); the error names the variable.
    """
    for venue_id, exchange in config.exchanges.items():
        setting = proxy_of(config, venue_id)
        key = "proxy" if exchange.proxy is not None else None
        if isinstance(setting, ProxyURL) and config.feed.transport == "trio-websocket":
            where = f"exchanges.{venue_id}.proxy" if key else "feed.proxy"
            raise ConfigError(
                f"{config.source}: {where}: the trio-websocket transport cannot go through a proxy; "
                "set feed.transport = \"native\""
            )
        if setting is not None or not exchange.enabled:
            continue
        venue = make_venue(venue_id)
        for url in (exchange.url or venue.default_url, exchange.rest_url or venue.default_rest_url):
            try:
                route = environment_proxy(url, environ)
            except ValueError as exc:
                raise ConfigError(f"environment: {exc} (used by {venue_id}: no proxy configured)") from None
            if route.proxy is not None and config.feed.transport == "trio-websocket":
                raise ConfigError(
                    f"environment: {route.source}: the trio-websocket transport cannot go through a "
                    f"proxy (used by {venue_id}); set feed.transport = \"native\", or proxy = \"\""
                )


#: sockaddr_un.sun_path holds 108 bytes on Linux, the last one the terminating NUL
MAX_SOCKET_PATH = 107


def _check_socket_path(config: Config) -> None:
    """A socket path the kernel cannot bind fails here, not after the venues have started."""
    size = len(os.fsencode(config.unix.path))
    if size > MAX_SOCKET_PATH:
        raise ConfigError(
            f"{config.source}: unix.path: longer than {MAX_SOCKET_PATH} bytes once resolved "
            f"({size}): {config.unix.path}"
        )


def config_warnings(config: Config) -> list[str]:
    """Things that are allowed but probably not meant, one ``file: key: text`` line each."""
    return [
        f"{config.source}: exchanges.{venue_id}.symbols: empty, so {venue_id} opens no connection"
        for venue_id, exchange in config.exchanges.items()
        if exchange.enabled and not exchange.symbols
    ]
