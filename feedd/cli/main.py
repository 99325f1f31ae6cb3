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
from feedd.exchanges.base import ALL_CHANNELS
from feedd.fanout.lines import KINDS

log = logging.getLogger("feedd")

DEFAULT_SOCKET = "/run/feedd/feedd.sock"
EXIT_CONFIG = 2

DESCRIPTION = (
    "feedd keeps WebSocket connections to crypto exchanges open, turns every trade and ticker "
    "update into one record, and publishes the records as JSON lines on a Unix socket."
)


def setup_logging(verbosity: int, level: str | None = None) -> None:
    """feedd's own messages at INFO (``level`` if given), DEBUG with ``-v``; libraries at WARNING
    unless ``-vv``; journal form under systemd, else timestamped (feedd.ops.logs)."""
    from feedd.ops.logs import configure

    configure(level=level, verbosity=verbosity)


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
    from feedd.errors import PublisherError
    from feedd.http.server import ListenError
    from feedd.ops.daemon import run_until_signalled

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    for warning in config_warnings(config):
        log.warning("%s", warning)
    failure: BaseExceptionGroup[BaseException] | None = None
    code = 0
    try:
        code = trio.run(run_until_signalled, config, args.config)
    except* (PublisherError, ListenError, OSError) as group:  # e.g. the socket is taken: say so
        failure = group
    if failure is not None:
        for exc in _leaves(failure):
            # PublisherError and ListenError are worded for the operator already
            worded = isinstance(exc, PublisherError | ListenError)
            log.error("cannot start: %s", exc if worded else describe(exc))
        return 1
    return code


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


def _stdout_gone() -> None:
    """The reader of our stdout left (``feedd tail | head``): drop what is still buffered.

    Without this, the interpreter's final flush of stdout fails again and prints a traceback.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _cmd_tail_nats(args: argparse.Namespace) -> int:
    """``feedd tail --nats``: the JetStream stream instead of the socket (feedd.cli.tail_nats)."""
    from feedd.cli.tail_nats import parse_since, tail_nats
    from feedd.errors import TailError

    if args.nats is None:
        print("feedd tail: --since needs --nats (the socket has no history)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        since = None if args.since is None else parse_since(args.since)
    except ValueError as exc:
        print(f"feedd tail: --since: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        trio.run(lambda: tail_nats(
            args.nats, stream=args.stream, prefix=args.subject_prefix, venues=args.exchange,
            symbols=args.symbol, kinds=args.kind, since=since, limit=args.limit,
            credentials=args.nats_credentials,
        ))
    except TailError as exc:
        print(f"feedd tail: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _stdout_gone()
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from feedd.cli.tail import tail
    from feedd.errors import TailError

    if args.nats is not None or args.since is not None:
        return _cmd_tail_nats(args)
    try:
        count = trio.run(
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
    except BrokenPipeError:
        _stdout_gone()
        return 0
    except KeyboardInterrupt:
        return 0
    if args.limit is None or count < args.limit:
        print(
            f"feedd tail: the daemon closed the connection at {args.socket} after {count} record(s) "
            "(did it stop?)",
            file=sys.stderr,
        )
        return 1
    return 0


def _api_target(args: argparse.Namespace, command: str) -> tuple[str, str | None] | None:
    """The API's URL and token from --url / --config / $FEEDD_URL and --token-file / $FEEDD_TOKEN."""
    from feedd.http.client import DEFAULT_URL

    url: str = args.url or os.environ.get("FEEDD_URL") or DEFAULT_URL
    token = os.environ.get("FEEDD_TOKEN") or None
    if args.config is not None:
        config = _load(args.config)
        if config is None:
            return None
        host, _, port = config.http.listen.rpartition(":")
        if port == "0" and not args.url:
            print(f"feedd {command}: {args.config}: [http] listen has port 0 (a free port picked at "
                  "start); the daemon logs the address it bound: pass it with --url", file=sys.stderr)
            return None
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        url = args.url or f"http://{host}:{port}"
        token = config.http.token or token
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as exc:
            print(f"feedd {command}: cannot read {args.token_file}: {describe(exc)}", file=sys.stderr)
            return None
    return url, token


def _cmd_api(args: argparse.Namespace) -> int:
    """``status``, ``subscribe`` and ``unsubscribe``: one request to the daemon's HTTP API."""
    import orjson

    from feedd.http.client import ApiClient, ApiError, format_status

    command = args.command
    target = _api_target(args, command)
    if target is None:
        return EXIT_CONFIG
    url, token = target
    try:
        with ApiClient(url, token=token, timeout=args.timeout) as client:
            if command == "status":
                answer = client.status()
            elif command == "subscribe":
                answer = client.subscribe(args.exchange, args.symbol, args.channels)
            else:
                answer = client.unsubscribe(args.exchange, args.symbol, args.channels)
    except ApiError as exc:
        print(f"feedd {command}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    elif command == "status":
        print(format_status(answer, url))
    else:
        done = answer.get("added" if command == "subscribe" else "removed") or []
        now = answer.get("channels") or []
        verb = "subscribed" if command == "subscribe" else "unsubscribed"
        what = ", ".join(done) if done else "nothing new (already so)"
        print(f"{answer.get('exchange')} {answer.get('symbol')}: {verb} {what}; "
              f"now: {', '.join(now) or 'not subscribed'}")
        if answer.get("persisted") is False:
            print(f"feedd {command}: warning: the change was not saved to the state file "
                  "(see feedd status)", file=sys.stderr)
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    from feedd.cli.top import run_top

    target = _api_target(args, "top")
    if target is None:
        return EXIT_CONFIG
    url, token = target
    try:
        return trio.run(lambda: run_top(url, token=token, once=args.once, interval=args.interval))
    except KeyboardInterrupt:
        return 0


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", metavar="URL",
                        help="the daemon's HTTP API (default: $FEEDD_URL, else http://127.0.0.1:8080)")
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="take the API address and token from this config file ([http])")
    parser.add_argument("--token-file", metavar="FILE",
                        help="file holding the API token (default: $FEEDD_TOKEN, or the config's)")
    parser.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    parser.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                        help="how long to wait for the answer (default 20)")
    parser.set_defaults(func=_cmd_api)


def _cmd_replay(args: argparse.Namespace) -> int:
    from feedd.cli.replay import run_replay

    try:
        return run_replay(args.paths, venues=args.venue, symbols=args.symbol, kinds=args.kind,
                          since=args.since, until=args.until, speed=args.speed, socket=args.socket,
                          nats=args.nats)
    except BrokenPipeError:
        _stdout_gone()
        return 0
    except KeyboardInterrupt:
        return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from feedd.cli.demo import run_demo

    trio.run(lambda: run_demo(duration=args.duration, show=args.show, recording=args.recording))
    return 0


def _add_verbose(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "-v", "--verbose", dest=dest, action="count", default=0,
        help="show feedd's debug messages; twice (-vv): also those of the libraries it uses",
    )
    parser.add_argument(
        "--log-level", dest=f"{dest}_log_level", choices=("debug", "info", "warning", "error"),
        default=None, help="the least severe of feedd's messages shown (default: info)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedd", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"feedd {__version__}",
                        help="print the version and exit")
    _add_verbose(parser, "verbose")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (feedd COMMAND --help tells more)")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        _add_verbose(child, "command_verbose")
        return child

    run = command("run", "run the daemon until SIGTERM or SIGINT (SIGHUP reloads the config file)")
    run.add_argument("--config", "-c", required=True, metavar="FILE",
                     help="TOML configuration file (see config.toml.example)")
    run.set_defaults(func=_cmd_run)

    check = command("check-config", "check a configuration file and exit (2 if it is wrong)")
    check.add_argument("path", metavar="FILE", help="TOML configuration file to check")
    check.set_defaults(func=_cmd_check_config)

    demo = command("demo", "run the daemon against the bundled exchange simulators (no internet needed)")
    demo.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="stop after this many seconds (default: run until Ctrl-C)")
    demo.add_argument("--show", type=int, default=10, metavar="N",
                      help="print the first N records received over the socket (default 10)")
    demo.add_argument("--recording", action="append", default=[], metavar="PATH",
                      help="play a feedd recording (files or folders, see docs/recording.md) instead of "
                      "the bundled tapes, where it has frames (repeatable)")
    demo.set_defaults(func=_cmd_demo)

    tail = command("tail", "print records from the daemon's Unix socket, one line each")
    tail.add_argument("--socket", default=os.environ.get("FEEDD_SOCKET", DEFAULT_SOCKET), metavar="PATH",
                      help=f"the daemon's socket (default: $FEEDD_SOCKET, else {DEFAULT_SOCKET})")
    tail.add_argument("--exchange", "--venue", action="append", default=[], metavar="VENUE",
                      help="only this venue id, e.g. binance (repeatable)")
    tail.add_argument("--symbol", action="append", default=[], metavar="SYMBOL",
                      help="only this symbol, e.g. BTCUSDT (repeatable)")
    tail.add_argument("--kind", action="append", default=[], choices=tuple(KINDS),
                      help="only trades or only tickers (repeatable)")
    tail.add_argument("--limit", type=int, default=None, metavar="N",
                      help="stop after N records (default: until the daemon stops or Ctrl-C)")
    tail.add_argument("--nats", metavar="URL", default=None,
                      help="read the JetStream stream at this NATS server instead of the socket "
                      "(nats://[token@]host:4222)")
    tail.add_argument("--since", metavar="WHEN", default=None,
                      help="with --nats: replay from this long ago (30s, 10m, 2h, 1d) or this RFC 3339 "
                      "time, then follow (default: new records only)")
    tail.add_argument("--stream", default="FEEDD", metavar="NAME",
                      help="with --nats: the stream (default FEEDD)")
    tail.add_argument("--subject-prefix", default="feedd", metavar="PREFIX",
                      help="with --nats: the subjects' prefix (default feedd)")
    tail.add_argument("--nats-credentials", metavar="FILE", default=None,
                      help="with --nats: a .creds file to log in with")
    tail.set_defaults(func=_cmd_tail)

    replay = command("replay", "print a recording's records exactly as the socket carried them live "
                     "(docs/recording.md)")
    replay.add_argument("paths", nargs="+", metavar="PATH", help="recording files, or folders of them")
    replay.add_argument("--venue", "--exchange", action="append", default=[], metavar="VENUE",
                        help="only this venue id (repeatable)")
    replay.add_argument("--symbol", action="append", default=[], metavar="SYMBOL",
                        help="only this symbol (repeatable)")
    replay.add_argument("--kind", action="append", default=[], choices=tuple(KINDS),
                        help="only trades or only tickers (repeatable)")
    replay.add_argument("--since", metavar="TIME", default=None,
                        help="only what was received at or after this RFC 3339 time")
    replay.add_argument("--until", metavar="TIME", default=None,
                        help="only what was received at or before this RFC 3339 time")
    replay.add_argument("--speed", type=float, default=None, metavar="N",
                        help="pace at N times the recorded time (default: stdout as fast as possible, "
                        "--socket and --nats 1)")
    replay.add_argument("--socket", metavar="PATH", default=None,
                        help="serve the records on this Unix socket (to its first subscriber on) instead")
    replay.add_argument("--nats", metavar="URL", default=None,
                        help="publish the records to NATS JetStream at this server instead")
    replay.set_defaults(func=_cmd_replay)

    status = command("status", "show the running daemon's state, per venue (asks its HTTP API)")
    _add_api_options(status)
    for name, verb in (("subscribe", "subscribe to"), ("unsubscribe", "unsubscribe from")):
        change = command(name, f"{verb} a symbol's streams on the running daemon, live")
        change.add_argument("exchange", metavar="VENUE", help="venue id, e.g. binance")
        change.add_argument("symbol", metavar="SYMBOL", help="the exchange's symbol, e.g. BTCUSDT")
        change.add_argument("--channels", nargs="+", choices=ALL_CHANNELS, metavar="CHANNEL",
                            help="trades, ticker and/or quotes (default: "
                            + ("the venue's configured channels)" if name == "subscribe" else "all)"))
        _add_api_options(change)
    top = command("top", "a live view of the running daemon, per venue and subscriber (asks its HTTP API)")
    top.add_argument("--url", metavar="URL",
                     help="the daemon's HTTP API (default: $FEEDD_URL, else http://127.0.0.1:8080)")
    top.add_argument("--config", "-c", metavar="FILE",
                     help="take the API address and token from this config file ([http])")
    top.add_argument("--token-file", metavar="FILE",
                     help="file holding the API token (default: $FEEDD_TOKEN, or the config's)")
    top.add_argument("--once", action="store_true",
                     help="print one screen and exit (1, with the reason, when the daemon is unreachable)")
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                     help="seconds between refreshes (default 1)")
    top.set_defaults(func=_cmd_top)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.command_verbose_log_level or args.verbose_log_level
    setup_logging(args.verbose + args.command_verbose, level)
    log.debug("feedd %s, Python %s: %s", __version__, sys.version.split()[0], args.command)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
