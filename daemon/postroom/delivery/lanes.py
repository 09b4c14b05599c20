"""A destination's lane in the delivery worker: its queue of jobs and its shaping arithmetic.

A `Job` is one message to the recipients it has at one destination from one envelope sender (one
SMTP transaction). A `Lane` holds the jobs of one route and destination, its health (throttled,
unreachable, suspended), its token bucket and its daily count; its limits are the destination
rule's, shared evenly by the daemon processes of the host.
"""

from __future__ import annotations

import datetime
from collections import deque
from dataclasses import dataclass, field

from postroom.config import DestinationSettings
from postroom.delivery.shaping import Health, TokenBucket, daily_cap, share
from postroom.delivery.transport import Route, Transport
from postroom.queue.models import ClaimedDelivery, QueuedMessage


@dataclass
class Job:
    """One message to the recipients it has at one destination, from one envelope sender."""

    message: QueuedMessage
    content: bytes
    deliveries: list[ClaimedDelivery]

    @property
    def mail_from(self) -> str:
        first = self.deliveries[0].mail_from
        return first if first is not None else self.message.mail_from

    @property
    def key(self) -> tuple[str, str]:
        return self.message.id, self.mail_from


@dataclass
class Lane:
    """A destination's queue of jobs, its shaping state and its health."""

    route: Route
    transport: Transport
    health: Health
    bucket: TokenBucket
    jobs: deque[Job] = field(default_factory=deque)
    domains: set[str] = field(default_factory=set)
    active: int = 0
    day: datetime.date | None = None
    sent_today: int = 0
    waiting: dict[tuple[str, str], Job] = field(default_factory=dict)  # queued jobs by `Job.key`
    reported_reasons: set[str] = field(default_factory=set)  # suspended gauges now at 1
    reported_slow: bool = False  # the speed gauge shows a slow-down

    @property
    def rule(self) -> DestinationSettings:
        return self.route.rule

    def enqueue(self, job: Job) -> None:
        """Queue a job; recipients of a message already waiting here with the same envelope
        sender join its transaction (a message to two domains behind one relay goes as one copy,
        as Postfix sends it)."""
        waiting = self.waiting.get(job.key)
        if waiting is not None:
            waiting.deliveries.extend(job.deliveries)
            return
        self.jobs.append(job)
        self.waiting[job.key] = job

    def next_job(self) -> Job:
        job = self.jobs.popleft()
        self.waiting.pop(job.key, None)
        return job

    def take_all(self) -> list[Job]:
        jobs, self.jobs = list(self.jobs), deque()
        self.waiting.clear()
        return jobs

    def connections(self, processes: int) -> int:
        return self.health.connections(share(self.rule.max_connections, processes))

    def rate(self, processes: int) -> float:
        return self.health.rate(share(self.rule.max_rate, processes))

    def backlog_limit(self, processes: int) -> int:
        """Enough queued jobs to keep the lane's connections busy for a while, no more: beyond
        it the claimer leaves the destination's deliveries in the database for later."""
        rate = self.rate(processes)
        by_rate = int(rate * 5) if rate else 0
        return max(20, self.connections(processes) * 20, by_rate)

    def reached_daily_cap(self, now: float, processes: int) -> bool:
        """Whether today's (UTC) cap is used up; if so the lane is suspended until tomorrow."""
        today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
        if self.day != today:
            self.day, self.sent_today = today, 0
        cap = daily_cap(self.rule, today, processes)
        if cap is None or self.sent_today < cap:
            return False
        tomorrow = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time(),
                                             datetime.UTC).timestamp()  # fmt: skip
        self.health.suspended_until = max(self.health.suspended_until, tomorrow)
        self.health.reason = f"daily cap of {cap} reached"
        return True
