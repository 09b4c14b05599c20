"""`LoopsRateGate`: Loops' request rate limit, honoured by every process of the daemon at once.

The limit is a bucket ("loops:outbound") in the rate-limit table the supervisor shares between
processes (`postroom.ratelimit.table`, the file named by $POSTROOM_RATE_LIMIT_FILE); a daemon of one
process, or a test, keeps the same table in its own memory. A request waits for its token by
sleeping until the bucket allows it, at most `max_wait` seconds, never polling in a tight loop.
When Loops says to come back later (429 with Retry-After), `hold` empties the bucket until then, so
no process asks again before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from postroom.core.clock import Clock
from postroom.metrics import Metrics
from postroom.ratelimit.quota import Quota
from postroom.ratelimit.table import RateTable

BUCKET = "loops:outbound"

Sleep = Callable[[float], Awaitable[None]]


class LoopsRateGate:
    def __init__(
        self,
        table: RateTable,
        quota: Quota,
        clock: Clock,
        metrics: Metrics,
        max_wait: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ):
        self._table = table
        self._quota = quota
        self._clock = clock
        self._metrics = metrics
        self._max_wait = max_wait
        self._sleep = sleep

    async def acquire(self) -> float | None:
        """Take a token, sleeping until the bucket gives one; None once waiting any longer would
        pass `max_wait` (the caller then tries later), else the seconds slept."""
        slept = 0.0
        while True:
            verdict = self._table.spend(BUCKET, self._quota)
            if verdict.allowed:
                return slept
            if slept == 0.0:
                self._metrics.loops_rate_limited.inc()
            if slept + verdict.retry_after > self._max_wait:
                return None
            # Another process may take the token we waited for: then we sleep again, each time
            # for the bucket's own answer (at least a millisecond), never spinning. The sleeps
            # are summed, not read from the clock, so the bound holds whatever the clock does.
            wait = max(verdict.retry_after, 0.001)
            await self._sleep(wait)
            slept += wait

    def hold(self, seconds: float) -> None:
        """No request to Loops from any process for `seconds` (Loops' Retry-After)."""
        self._table.hold(BUCKET, self._quota, self._clock.now() + seconds)
