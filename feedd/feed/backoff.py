"""Reconnect delays: exponential backoff with full jitter, as pure arithmetic.

Kept apart from the runner so the policy is testable without a clock or a socket.
"""

from __future__ import annotations

import random

import attrs


@attrs.define
class Backoff:
    """Delay before attempt ``n`` of a failing run: uniform in [base·2ⁿ/2, base·2ⁿ], capped.

    Half-jitter (not zero-to-max) keeps a floor under the delay so a flapping venue is never
    hammered, while still spreading the reconnects of many connections apart.
    """

    initial: float
    ceiling: float
    rng: random.Random = attrs.field(factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """Record one more consecutive failure and return how long to wait before retrying."""
        exponent = min(self.failures, 62)
        self.failures += 1
        top = min(self.ceiling, self.initial * (2.0**exponent))
        return self.rng.uniform(top / 2, top)

    def reset(self) -> None:
        """The connection proved stable: the next failure starts from ``initial`` again."""
        self.failures = 0
