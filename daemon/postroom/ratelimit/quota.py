"""A quota ("10/s", "600/min") and the arithmetic of spending it.

A quota of N per period is a token bucket that holds N and refills at N/period, kept in the form
of the generic cell rate algorithm (GCRA): one number per bucket, the theoretical arrival time
(TAT) at which the bucket would be full again. That single float is what makes the table shared
between processes small and its updates a single write.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_QUOTA = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_SECONDS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0,
            "hour": 3600.0}  # fmt: skip


@dataclass(frozen=True)
class Quota:
    count: int  # requests allowed at once, and per period
    period: float  # seconds

    def __post_init__(self) -> None:
        if self.count < 1 or self.period <= 0:
            raise ValueError("a quota allows at least one request per positive period")

    @property
    def interval(self) -> float:
        """Seconds one request's token takes to come back."""
        return self.period / self.count

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.period)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.period:g}s"


def parse_quota(text: str) -> Quota:
    """"10/s", "600/min", "5000/h" -> Quota; anything else is a ValueError that shows the form."""
    match = _QUOTA.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a rate limit such as '10/s', '600/min' or '5000/h'")
    return Quota(int(match.group(1)), _SECONDS[match.group(2)])


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int  # the quota's count: x-ratelimit-limit
    remaining: int  # requests that would still pass now: x-ratelimit-remaining
    retry_after: float  # seconds until one more would pass (0 when allowed)


def spend(tat: float, now: float, quota: Quota) -> tuple[float, Verdict]:
    """Spend one request of `quota` from a bucket whose theoretical arrival time is `tat` (0 for
    a bucket never used): (the new TAT to store, the verdict). A refused request changes nothing."""
    interval = quota.interval
    horizon = quota.period  # a full bucket: TAT may run at most one period ahead of now
    after = max(tat, now) + interval
    if after - now > horizon + 1e-9:
        wait = after - now - horizon
        return tat, Verdict(False, quota.count, 0, wait)
    remaining = math.floor((horizon - (after - now)) / interval + 1e-9)
    return after, Verdict(True, quota.count, max(0, remaining), 0.0)


def held(tat: float, until: float, quota: Quota) -> float:
    """The TAT of a bucket that lets nothing through before `until` (a peer's Retry-After): the
    bucket is empty at `until` and refills from there. A bucket held longer already stays so."""
    return max(tat, until + quota.period - quota.interval)
