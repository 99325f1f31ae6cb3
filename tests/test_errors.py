"""Exception texts for logs and status fields: never empty."""

from __future__ import annotations

import errno
import socket
import ssl

import pytest
import trio

from feedd.errors import describe, quoted


def test_exception_with_text_gives_type_and_text() -> None:
    assert describe(ValueError("port out of range")) == "ValueError: port out of range"


@pytest.mark.parametrize(
    "exc", [TimeoutError(), trio.BrokenResourceError(), ConnectionResetError(), ValueError(" ")]
)
def test_exception_without_text_still_names_what_happened(exc: BaseException) -> None:
    assert describe(exc) == type(exc).__name__


def test_os_error_names_its_errno() -> None:
    exc = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert describe(exc) == "ConnectionRefusedError: Connection refused (ECONNREFUSED)"


def test_os_error_with_only_an_errno_gets_the_system_text() -> None:
    exc = OSError(errno.ECONNRESET, "")
    assert describe(exc).startswith("ConnectionResetError: ")
    text = describe(exc)
    assert text.endswith(" (ECONNRESET)") and text != "ConnectionResetError:  (ECONNRESET)"


def test_os_error_names_its_file() -> None:
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory", "/etc/feedd.toml")
    assert describe(exc) == "FileNotFoundError: No such file or directory: /etc/feedd.toml (ENOENT)"


def test_resolver_and_tls_errors_keep_their_own_text() -> None:
    """Their errno is a library code (EAI_*, SSL_R_*), not an errno name."""
    assert describe(socket.gaierror(-2, "Name or service not known")) == (
        "gaierror: Name or service not known"
    )
    assert describe(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")) == (
        "SSLError: [SSL: WRONG_VERSION_NUMBER] wrong version number"
    )


def test_exception_without_text_tells_its_cause() -> None:
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        except OSError as cause:
            raise trio.BrokenResourceError from cause
    except trio.BrokenResourceError as exc:
        text = describe(exc)
    assert text == "BrokenResourceError (from ConnectionResetError: Connection reset by peer (ECONNRESET))"


def test_quoted_input_is_cut_to_sixty_characters_and_marked() -> None:
    assert quoted("BTCUSDT") == "'BTCUSDT'"
    long = quoted("x" * 5000)
    assert long == "'" + "x" * 59 + "..."
