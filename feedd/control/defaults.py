"""Where ``WebSocketService()`` finds its configuration when it is given none.

In this order: the file ``$FEEDD_CONFIG`` names, if set; else ``/etc/feedd/config.toml`` (the
daemon's, see systemd/feedd.service), if it exists; else :func:`builtin_config`: every venue
enabled with no symbols and its real endpoints, nothing served (an embedded service serves the
Unix socket and the HTTP API only when asked). Either way the environment overrides it as it does
for ``feedd run`` (``ENABLE_WEBSOCKET_FEED``, ``WEBSOCKET_RECONNECT_INTERVAL``,
``MAX_WEBSOCKET_RETRIES``), and a bad file raises one :class:`~feedd.config.ConfigError` naming
the file and the key, as ``feedd check-config`` prints it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from feedd.config import Config, ExchangeConfig, FeedConfig, apply_environment, load_config
from feedd.exchanges import venue_ids

#: the variable naming the config file of an embedded service
CONFIG_VARIABLE = "FEEDD_CONFIG"
#: the daemon's config file, used when it exists and ``$FEEDD_CONFIG`` is not set
SYSTEM_CONFIG = Path("/etc/feedd/config.toml")
BUILTIN = "<built-in defaults>"


def _user_dir(variable: str, fallback: str, environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME`` or ``$XDG_CACHE_HOME`` (an absolute path), else ``~/<fallback>``; then feedd."""
    value = environ.get(variable, "")
    base = Path(value) if os.path.isabs(value) else Path.home() / fallback
    return base / "feedd"


def builtin_config(environ: Mapping[str, str] | None = None) -> Config:
    """The configuration of a service given no file: every venue, no symbols, real endpoints.

    Runtime subscriptions are kept in ``$XDG_STATE_HOME/feedd/subscriptions.json``
    (``~/.local/state/feedd/``) and instrument lists cached in ``$XDG_CACHE_HOME/feedd``
    (``~/.cache/feedd``), not in the working directory.
    """
    environ = os.environ if environ is None else environ
    feed = FeedConfig(
        state_file=str(_user_dir("XDG_STATE_HOME", ".local/state", environ) / "subscriptions.json"),
        cache_dir=str(_user_dir("XDG_CACHE_HOME", ".cache", environ)),
    )
    exchanges = {venue_id: ExchangeConfig() for venue_id in venue_ids()}
    return apply_environment(Config(feed=feed, exchanges=exchanges, source=BUILTIN), environ)


def discover_config(environ: Mapping[str, str] | None = None) -> Config:
    """``$FEEDD_CONFIG``'s file, else the daemon's if it exists, else :func:`builtin_config`."""
    environ = os.environ if environ is None else environ
    named = environ.get(CONFIG_VARIABLE, "").strip()
    if named:
        return load_config(named, environ)
    if SYSTEM_CONFIG.is_file():
        return load_config(SYSTEM_CONFIG, environ)
    return builtin_config(environ)


def resolve_config(config: Config | str | os.PathLike[str] | None) -> Config:
    """What ``WebSocketService(config)`` runs: a Config as given, a path loaded (with the
    environment's overrides), nothing discovered."""
    if isinstance(config, Config):
        return config
    if config is None:
        return discover_config()
    if isinstance(config, str | os.PathLike):
        return load_config(config)
    raise TypeError(f"config: expected a feedd.config.Config, a path or None, got {type(config).__name__}")


__all__ = ["CONFIG_VARIABLE", "SYSTEM_CONFIG", "builtin_config", "discover_config", "resolve_config"]
