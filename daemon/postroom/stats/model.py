"""The values of delivery analytics: what is asked (`StatsQuery`), one group's figures
(`StatsGroup`), and the rates derived from them. Pure: no I/O."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DIMENSIONS = ("stream", "template", "domain")
PERIODS = {"hour": 3600, "day": 86400, "week": 7 * 86400}  # weeks start on Thursday 1970-01-01 (UTC)
PERCENTILES = (50, 90, 99)
# Event types counted, by the figure they count towards.
COUNTED = {
    "delivered": "delivered",
    "deferred": "deferred",
    "bounced": "bounced",
    "expired": "bounced",  # deferred past max_age: a bounce with reason "expired"
    "dead": "failed",
    "complained": "complained",
    "suppressed": "suppressed",
    "unsubscribed": "unsubscribed",
}


@dataclass(frozen=True)
class StatsQuery:
    since: float | None = None
    until: float | None = None
    group_by: tuple[str, ...] = ()  # any of DIMENSIONS, and at most one of PERIODS
    stream: str | None = None  # only this stream

    def __post_init__(self) -> None:
        unknown = [g for g in self.group_by if g not in DIMENSIONS and g not in PERIODS]
        if unknown:
            known = ", ".join((*DIMENSIONS, *PERIODS))
            raise ValueError(f"cannot group by {', '.join(unknown)}; known: {known}")
        if len([g for g in self.group_by if g in PERIODS]) > 1:
            raise ValueError("group by one period at most (hour, day or week)")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("a grouping is named twice")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("`to` must be after `from`")

    @property
    def period(self) -> str | None:
        return next((g for g in self.group_by if g in PERIODS), None)


@dataclass
class StatsGroup:
    key: dict[str, Any]
    sent: int = 0
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    bounced_by_class: dict[str, int] = field(default_factory=dict)
    bounced_by_reason: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    complained: int = 0
    suppressed: int = 0
    unsubscribed: int = 0
    latency_count: int = 0
    latency: dict[str, float] = field(default_factory=dict)  # "p50" -> seconds

    @property
    def bounce_rate(self) -> float:
        return rate(self.bounced, self.delivered + self.bounced)

    @property
    def complaint_rate(self) -> float:
        return rate(self.complained, self.delivered)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.key,
            "sent": self.sent,
            "delivered": self.delivered,
            "deferred": self.deferred,
            "bounced": {"total": self.bounced, "by_class": dict(sorted(self.bounced_by_class.items())),
                        "by_reason": dict(sorted(self.bounced_by_reason.items()))},  # fmt: skip
            "failed": self.failed,
            "complained": self.complained,
            "suppressed": self.suppressed,
            "unsubscribed": self.unsubscribed,
            "bounce_rate": round(self.bounce_rate, 6),
            "complaint_rate": round(self.complaint_rate, 6),
            "latency_seconds": {"count": self.latency_count, **self.latency},
        }


def rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def period_label(start: float) -> str:
    return datetime.datetime.fromtimestamp(start, datetime.UTC).isoformat().replace("+00:00", "Z")


def add_count(group: StatsGroup, event_type: str, bounce_class: str | None, reason: str | None, count: int) -> None:
    """Add `count` events of a type to a group's figures."""
    figure = COUNTED.get(event_type)
    if figure is None:
        return
    setattr(group, figure, getattr(group, figure) + count)
    if figure == "bounced":
        if event_type == "expired":
            bounce_class, reason = bounce_class or "soft", reason or "expired"
        cls, why = bounce_class or "unknown", reason or "unknown"
        group.bounced_by_class[cls] = group.bounced_by_class.get(cls, 0) + count
        group.bounced_by_reason[why] = group.bounced_by_reason.get(why, 0) + count


def totals_key(group_by: tuple[str, ...], key: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(key.get(g) for g in group_by)
