"""Traffic shaping per destination: which rule applies, how fast, and how a destination that
pushes back is slowed down, suspended and recovered. Pure: times are passed in, nothing sleeps.

A *destination* is the set of MX hosts a recipient domain resolves to (KumoMTA calls it a "site"):
every domain hosted by one provider shares one destination, so its limits hold for the provider
and not per customer domain. `rule_for` picks the shaping rule; `TokenBucket` spaces messages out
to the rule's rate; `Health` follows the destination's replies (AIMD: halve on push-back, grow back
after a run of successes) and decides when it is suspended; `daily_cap` gives warm-up caps.
"""

from __future__ import annotations

import datetime
import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from postroom.config import DestinationSettings

# Starting points for the big mailbox providers, used after the operator's own rules. They follow
# the providers' published guidance and common practice (few parallel connections, many messages
# on each); raise them once the reputation of the sending IPs allows it.
BUILTIN_RULES: tuple[DestinationSettings, ...] = (
    DestinationSettings(match="*.google.com", max_connections=20, messages_per_connection=100),
    DestinationSettings(match="*.googlemail.com", max_connections=20, messages_per_connection=100),
    DestinationSettings(
        match="*.protection.outlook.com", max_connections=10, messages_per_connection=50
    ),
    DestinationSettings(match="*.yahoodns.net", max_connections=10, messages_per_connection=20),
    DestinationSettings(match="*.mail.icloud.com", max_connections=10, messages_per_connection=50),
    DestinationSettings(match="*.gmx.net", max_connections=5, messages_per_connection=50),
    DestinationSettings(match="*.web.de", max_connections=5, messages_per_connection=50),
)
DEFAULT_RULE = DestinationSettings(match="*")

SLOWEST_FACTOR = 1 / 16  # a throttled destination is slowed down to at most 1/16 of its rule
RECOVERY_SUCCESSES = 50  # deliveries without push-back before the speed doubles again


def rule_for(
    domain: str, mx_hosts: Iterable[str], rules: Sequence[DestinationSettings]
) -> DestinationSettings:
    """The first rule whose pattern matches the domain or one of its MX hosts; built-ins next."""
    names = [domain.lower(), *(host.lower() for host in mx_hosts)]
    for rule in (*rules, *BUILTIN_RULES):
        if any(fnmatch.fnmatchcase(name, rule.match) for name in names):
            return rule
    return DEFAULT_RULE


def destination_key(mx_hosts: Sequence[str]) -> str:
    """The name of a destination: its MX host names, sorted, so the order of tries does not matter."""
    return ",".join(sorted(host.lower() for host in mx_hosts))


def share(limit: float, processes: int) -> float:
    """One process's share of a host-wide limit."""
    return limit / max(1, processes)


def daily_cap(rule: DestinationSettings, day: datetime.date, processes: int = 1) -> int | None:
    """How many messages this process may send to the destination on `day` (UTC); None: no cap.

    During warm-up (`warmup` caps from `warmup_start`) the day's cap applies; before warm-up
    starts, the first cap; after it, `daily_limit` (0 = none).
    """
    cap = rule.daily_limit or None
    if rule.warmup:
        start = datetime.date.fromisoformat(rule.warmup_start)
        index = (day - start).days
        if index < len(rule.warmup):
            cap = rule.warmup[max(0, index)]
    if cap is None:
        return None
    return max(1, math.floor(share(cap, processes)))


class TokenBucket:
    """Spaces messages to `rate` per second with bursts of up to `burst`; rate 0 means no limit."""

    def __init__(self, rate: float, burst: float, now: float):
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def wait(self, now: float) -> float:
        """Seconds until a message may go (0: now)."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self, now: float) -> None:
        if self.rate > 0:
            self._refill(now)
            self._tokens -= 1


@dataclass
class Health:
    """How a destination has been answering, and what that allows now.

    `factor` scales the rule's connections and rate: halved when the destination throttles us
    (421, 4.7.x rate limits) and doubled back after `RECOVERY_SUCCESSES` clean deliveries.
    A throttle or a destination we cannot reach at all suspends it for `backoff`, which doubles
    on each consecutive suspension up to the maximum and resets on the next success.
    """

    backoff_base: float
    backoff_max: float
    factor: float = 1.0
    suspended_until: float = 0.0
    reason: str = ""
    _backoff: float = 0.0
    _successes: int = 0

    def suspended(self, now: float) -> bool:
        return now < self.suspended_until

    def throttled(self, now: float, reply: str) -> float:
        """The destination pushed back: slow down and suspend; return when it may be tried again.

        Push-backs arriving while it is already suspended (the other connections that were in
        flight) belong to the same incident: they neither slow it down further nor extend it.
        """
        if not self.suspended(now):
            self.factor = max(SLOWEST_FACTOR, self.factor / 2)
        return self._suspend(now, f"throttled: {reply}")

    def unreachable(self, now: float, reason: str) -> float:
        """No connection to any of its hosts: suspend without changing the speed."""
        return self._suspend(now, f"unreachable: {reason}")

    def _suspend(self, now: float, reason: str) -> float:
        if self.suspended(now):
            return self.suspended_until  # the same incident, reported by another connection
        self._backoff = min(self.backoff_max, self._backoff * 2 if self._backoff else self.backoff_base)
        self.suspended_until = max(self.suspended_until, now + self._backoff)
        self.reason = reason
        self._successes = 0
        return self.suspended_until

    def succeeded(self) -> None:
        self._backoff = 0.0
        self.reason = ""
        self._successes += 1
        if self.factor < 1.0 and self._successes >= RECOVERY_SUCCESSES:
            self.factor = min(1.0, self.factor * 2)
            self._successes = 0

    def connections(self, rule_connections: float) -> int:
        return max(1, math.floor(rule_connections * self.factor))

    def rate(self, rule_rate: float) -> float:
        return rule_rate * self.factor
