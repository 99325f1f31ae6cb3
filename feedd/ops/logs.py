"""Logging to stderr in the form its reader wants: the journal, or a terminal or file.

Under systemd, stderr goes to the journal, which stamps every line itself and reads a ``<N>``
prefix (the syslog priority) as the line's level: so there feedd writes ``<6>feedd.feed.runner:
binance/stream#1: connected ...`` with no timestamp. Anywhere else a line carries its time and
level name. The journal is recognised as systemd.exec(5) documents it: ``$JOURNAL_STREAM``
names the device and inode of the stream the journal reads, and is compared with stderr's (a
child whose stderr was redirected inherits the variable but not the stream); when it is absent,
``$INVOCATION_ID`` says systemd started us, with stderr on its syslog, kmsg or journal stream
(unless stderr is a terminal: a shell in a terminal that systemd started inherits the variable).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

#: ``--log-level`` values, as feedd's own loggers take them
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"

#: Python level → syslog priority (sd-daemon(3): ``<N>`` with N from 0, emerg, to 7, debug)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(level: int) -> int:
    for threshold, value in _PRIORITIES:
        if level >= threshold:
            return value
    return 7


def stderr_is_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    """Whether ``stream`` (stderr) is read by systemd: see the module docstring."""
    journal = environ.get("JOURNAL_STREAM")
    if journal:
        device, _, inode = journal.partition(":")
        try:
            st = os.fstat(stream.fileno())
        except (OSError, ValueError):  # no descriptor (a test's StringIO, a closed stream)
            return False
        return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"
    try:
        terminal = stream.isatty()
    except ValueError:  # closed
        terminal = False
    return bool(environ.get("INVOCATION_ID")) and not terminal


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``, and ``<N>`` again on every further line (a traceback), so the
    journal files each line at the record's priority rather than at the default, info."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def stderr_handler(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing to ``stream`` (stderr) in the journal's form or the text form."""
    stream = sys.stderr if stream is None else stream
    journal = stderr_is_journal(os.environ if environ is None else environ, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter(TEXT_FORMAT))
    return handler


def configure(
    *,
    level: str | None = None,
    verbosity: int = 0,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """One stderr handler on the root logger, journal or text form as :func:`stderr_is_journal`
    says. feedd's own loggers log at ``level`` (default info; debug with ``-v``); libraries at
    warning (or above ``level``) unless ``-vv``, since they log every frame or request at debug.
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(stderr_handler(environ, stream))
    own = LEVELS[level] if level is not None else logging.INFO
    if verbosity >= 1:
        own = min(own, logging.DEBUG)
    root.setLevel(logging.DEBUG if verbosity >= 2 else max(logging.WARNING, own))
    logging.getLogger("feedd").setLevel(own)
