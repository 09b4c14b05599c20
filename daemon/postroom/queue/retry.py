"""When to try again: a pure function of attempts made, the message's age and the policy.

Exponential backoff with full jitter (the AWS architecture blog's "full jitter": a uniform draw
below the exponential cap spreads retries of a burst instead of synchronising them), floored at a
fraction of the cap so a retry is never immediate. A deferral whose next try would land after
`max_age` from first acceptance becomes an expiry instead (RFC 5321 §4.5.4.1: give up after 4-5 days).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 60.0  # seconds before the second attempt, before jitter
    cap: float = 4 * 3600.0  # the longest wait between two attempts
    max_age: float = 5 * 86400.0  # give up this long after the message was accepted
    jitter_floor: float = 0.5  # the wait is drawn from [floor * w, w]


def next_attempt_at(
    policy: RetryPolicy, attempts: int, accepted_at: float, now: float, draw: float
) -> float | None:
    """The time of the next attempt after `attempts` failures, or None when the message expires.

    `draw` is a uniform number in [0, 1) supplied by the caller (pure: no hidden randomness).
    """
    if attempts < 1:
        raise ValueError("attempts counts failures made, so it is at least 1 here")
    ceiling = min(policy.cap, policy.base * float(2 ** min(attempts - 1, 32)))
    wait = ceiling * (policy.jitter_floor + (1 - policy.jitter_floor) * draw)
    when = now + wait
    if when - accepted_at > policy.max_age:
        return None
    return when


def system_draw() -> float:
    """The default source of `draw` for `next_attempt_at`."""
    return random.random()
