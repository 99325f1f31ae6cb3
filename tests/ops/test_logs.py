"""Log lines as their reader wants them: ``<N>`` priorities for the journal, timestamps elsewhere."""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from collections.abc import Iterator

import pytest

from feedd.cli.main import build_parser, setup_logging
from feedd.ops.logs import JournalFormatter, configure, priority, stderr_handler, stderr_is_journal


@pytest.fixture
def restore_levels() -> Iterator[None]:
    root, feedd = logging.getLogger(), logging.getLogger("feedd")
    levels = root.level, feedd.level
    yield
    root.setLevel(levels[0])
    feedd.setLevel(levels[1])


def emit(environ: dict[str, str], level: str | None = None) -> list[str]:
    """What feedd's stderr handler writes for a few typical lines, configured as ``feedd run`` does."""
    stream = io.StringIO()
    handler = stderr_handler(environ, stream)
    feedd = logging.getLogger("feedd")
    feedd.addHandler(handler)
    try:
        configure(level=level, environ=environ, stream=stream)
        log = logging.getLogger("feedd.feed.runner")
        log.info("binance/stream#1: connected to wss://stream.binance.com:9443/stream")
        log.warning("binance/stream#1: stale feed; reconnecting in 0.5 s")
        try:
            raise ValueError("bad frame")
        except ValueError:
            log.exception("binance/stream#1: internal error")
        log.debug("binance/stream#1: debug detail")
    finally:
        feedd.removeHandler(handler)
    return stream.getvalue().splitlines()


@pytest.mark.usefixtures("restore_levels")
def test_under_the_journal_lines_carry_priority_prefixes_and_no_timestamp() -> None:
    lines = emit({"INVOCATION_ID": "0123456789abcdef"})
    assert lines[0] == "<6>feedd.feed.runner: binance/stream#1: connected to wss://stream.binance.com:9443/stream"
    assert lines[1] == "<4>feedd.feed.runner: binance/stream#1: stale feed; reconnecting in 0.5 s"
    assert lines[2] == "<3>feedd.feed.runner: binance/stream#1: internal error"
    # the traceback's lines are filed at the error's priority too, not as info
    assert lines[3:] and all(line.startswith("<3>") for line in lines[3:])
    assert lines[-1] == "<3>ValueError: bad frame"
    assert not any("debug detail" in line for line in lines)


@pytest.mark.usefixtures("restore_levels")
def test_outside_systemd_lines_carry_a_timestamp_and_the_level_name() -> None:
    first = emit({})[0]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    feedd.feed.runner: binance/stream#1: connected to \S+",
        first,
    ), first


@pytest.mark.usefixtures("restore_levels")
@pytest.mark.parametrize(("level", "shown"), [("debug", 4), ("info", 3), ("warning", 2), ("error", 1)])
def test_log_level_sets_the_least_severe_message_shown(level: str, shown: int) -> None:
    lines = emit({"INVOCATION_ID": "x"}, level)
    assert len([line for line in lines if "feedd.feed.runner: binance" in line]) == shown


def test_journal_stream_is_believed_only_for_the_stream_it_names() -> None:
    with tempfile.TemporaryFile("w") as ours, tempfile.TemporaryFile("w") as other:
        st = os.fstat(ours.fileno())
        environ = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "x"}
        assert stderr_is_journal(environ, ours)
        # a child whose stderr was redirected inherits the variable, not the stream
        assert not stderr_is_journal(environ, other)
        assert not stderr_is_journal(environ, io.StringIO())
    assert stderr_is_journal({"INVOCATION_ID": "x"}, io.StringIO())
    assert not stderr_is_journal({}, io.StringIO())


def test_a_terminal_gets_timestamps_even_where_systemd_started_the_shell() -> None:
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w") as terminal:
            assert not stderr_is_journal({"INVOCATION_ID": "x"}, terminal)
    finally:
        os.close(leader)


def test_priorities_follow_syslog() -> None:
    assert [priority(level) for level in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]
    record = logging.LogRecord("feedd.x", logging.WARNING, __file__, 1, "two\nlines", None, None)
    assert JournalFormatter().format(record) == "<4>feedd.x: two\n<4>lines"


@pytest.mark.usefixtures("restore_levels")
@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "warning", "check-config", "x.toml"],
        ["check-config", "--log-level", "warning", "x.toml"],
    ],
)
def test_log_level_option_is_taken_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    level = args.command_verbose_log_level or args.verbose_log_level
    setup_logging(args.verbose + args.command_verbose, level)
    assert not logging.getLogger("feedd.control.service").isEnabledFor(logging.INFO)
    assert logging.getLogger("feedd.control.service").isEnabledFor(logging.WARNING)
