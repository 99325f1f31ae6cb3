"""feedd.errors: one home per exception, and the rule for logging a run of failures."""

from __future__ import annotations

import feedd.errors
from feedd.errors import (
    HandshakeError,
    SubscribeError,
    SubscriberRefused,
    SubscriptionRefused,
    TransportError,
    excerpt,
    first_of_run,
)
from feedd.wire.upgrade import HandshakeRefused


def test_first_of_run_is_true_on_the_1st_2nd_4th_8th_time() -> None:
    assert [n for n in range(1, 40) if first_of_run(n)] == [1, 2, 4, 8, 16, 32]


def test_a_refused_handshake_is_one_type_for_the_codec_the_transports_and_the_gates() -> None:
    refused = HandshakeRefused.from_headers("", 429, [(b"Retry-After", b"30")])
    assert isinstance(refused, TransportError) and isinstance(refused, HandshakeError)
    assert (refused.status, refused.retry_after, refused.header(b"retry-after")) == (429, 30.0, b"30")


def test_the_client_refusal_is_both_a_subscribe_error_and_a_refusal() -> None:
    refused = SubscriberRefused("/run/feedd.sock", "too many subscribers")
    assert isinstance(refused, SubscribeError) and isinstance(refused, SubscriptionRefused)
    assert refused.error == "too many subscribers"


def test_the_docstring_draws_every_exception_defined_here() -> None:
    doc = feedd.errors.__doc__ or ""
    defined = [
        name for name, value in vars(feedd.errors).items()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == "feedd.errors"
    ]
    assert defined and all(name in doc for name in defined)


def test_excerpt_cuts_long_frames() -> None:
    assert excerpt(b"x" * 300, 10) == "x" * 10 + "..."
    assert excerpt("short") == "short"
