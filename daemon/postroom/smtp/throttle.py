"""Throttling failed logins per client address (a sliding window, like Postfix's anvil)."""

from __future__ import annotations

from collections import deque

from postroom.core.clock import Clock


class LoginThrottle:
    def __init__(self, clock: Clock, limit: int, window: float, max_tracked: int = 100_000):
        self._clock = clock
        self._limit = limit
        self._window = window
        self._max_tracked = max_tracked
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.get(address)
        if failures is None:
            return deque()
        horizon = self._clock.now() - self._window
        while failures and failures[0] < horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
        return failures

    def blocked(self, address: str) -> bool:
        return len(self._recent(address)) >= self._limit

    def record_failure(self, address: str) -> None:
        if len(self._failures) >= self._max_tracked and address not in self._failures:
            # Bounded memory under a distributed attack: forget the oldest-tracked address.
            del self._failures[next(iter(self._failures))]
        self._failures.setdefault(address, deque()).append(self._clock.now())

    def record_success(self, address: str) -> None:
        self._failures.pop(address, None)
