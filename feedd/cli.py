"""The ``feedd`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import trio

from feedd import __version__
from feedd.config import Config, ConfigError, config_warnings, load_config
from feedd.errors import describe

log = logging.getLogger("feedd")

DEFAULT_SOCKET = "/run/feedd/feedd.sock"
EXIT_CONFIG = 2


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # trio-websocket logs every frame at DEBUG; keep it out of -v output
    logging.getLogger("trio-websocket").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _load(path: str) -> Config | None:
    """The config at ``path``, or None after saying on stderr what is wrong with it."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"feedd: {exc}", file=sys.stderr)
        return None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _cmd_run(args: argparse.Namespace) -> int:
    from feedd.daemon import run_until_signalled
    from feedd.sinks.unix import PublisherError

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    for warning in config_warnings(config):
        log.warning("%s", warning)
    failure: BaseExceptionGroup[BaseException] | None = None
    try:
        trio.run(run_until_signalled, config)
    except* (PublisherError, OSError) as group:  # e.g. the socket is taken: say so, no traceback
        failure = group
    if failure is not None:
        for exc in _leaves(failure):
            # a PublisherError is worded for the operator already
            log.error("cannot start: %s", exc if isinstance(exc, PublisherError) else describe(exc))
        return 1
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.path)
    if config is None:
        return EXIT_CONFIG
    for warning in config_warnings(config):
        print(f"feedd: warning: {warning}", file=sys.stderr)
    venues = ", ".join(
        f"{venue} ({len(ex.symbols)} symbol{'' if len(ex.symbols) == 1 else 's'})"
        for venue, ex in config.exchanges.items()
    )
    print(f"{args.path}: ok; venues: {venues or 'none'}; feed {'on' if config.feed.enabled else 'off'}")
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from feedd.tail import TailError, tail

    try:
        trio.run(
            lambda: tail(
                args.socket,
                exchanges=args.exchange,
                symbols=args.symbol,
                kinds=args.kind,
                limit=args.limit,
            )
        )
    except TailError as exc:
        print(f"feedd tail: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from feedd.demo import run_demo

    trio.run(lambda: run_demo(duration=args.duration, show=args.show))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"feedd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", required=True, help="TOML configuration file")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("path")
    check.set_defaults(func=_cmd_check_config)

    demo = sub.add_parser("demo", help="run the daemon against the bundled exchange simulators")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--show", type=int, default=10, metavar="N",
                      help="print the first N records received over the socket (default 10)")
    demo.set_defaults(func=_cmd_demo)

    tail = sub.add_parser("tail", help="print records from the daemon's Unix socket")
    tail.add_argument("--socket", default=os.environ.get("FEEDD_SOCKET", DEFAULT_SOCKET))
    tail.add_argument("--exchange", action="append", default=[], help="venue id (repeatable)")
    tail.add_argument("--symbol", action="append", default=[], help="symbol (repeatable)")
    tail.add_argument("--kind", action="append", default=[], choices=["trade", "ticker"])
    tail.add_argument("--limit", type=int, default=None, help="stop after N records")
    tail.set_defaults(func=_cmd_tail)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
