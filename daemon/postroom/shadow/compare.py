"""Comparison of the paths over a window: per stream, template and route (loops, inhouse, and the
shadow copies), the recipients sent, delivered, bounced by class, complained, deferred, failed, and
the time from acceptance to delivered (p50, p95). The figures come from the deliveries created in
the window and the events about them; the rates are percentages of recipients sent.

For the `loops` route "delivered" is Loops accepting the send (and a later Loops hard bounce or
spam report moves it, like a late bounce does for in-house mail); `confirmed` counts the recipients
Loops' webhook then reported delivered, and when there are any, the loops percentiles are the time to
that report; for `shadow` it is the copy reaching the sink, and bounces are the sink's (`shadow_*`
events)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from postroom.core.types import DeliveryState
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import deliveries, events, loops_events, messages

MAX_LATENCIES = 100_000  # delivered recipients read for the percentiles of one group


@dataclass
class Figures:
    stream: str
    template: str  # "" for mail not rendered from a template
    route: str
    sent: int = 0
    delivered: int = 0
    bounced_hard: int = 0
    bounced_soft: int = 0
    complained: int = 0
    deferred: int = 0
    failed: int = 0
    confirmed: int = 0  # loops: recipients Loops reported delivered (its `email.delivered` webhook)
    size_bytes: int = 0  # average message size
    latencies: list[float] = field(default_factory=list, repr=False)

    def rate(self, count: int) -> float:
        return round(100.0 * count / self.sent, 3) if self.sent else 0.0

    @property
    def p50(self) -> float | None:
        return _percentile(self.latencies, 50)

    @property
    def p95(self) -> float | None:
        return _percentile(self.latencies, 95)

    def as_dict(self) -> dict[str, Any]:
        counts = {"sent": self.sent, "delivered": self.delivered, "bounced_hard": self.bounced_hard,
                  "bounced_soft": self.bounced_soft, "complained": self.complained, "deferred": self.deferred,
                  "failed": self.failed}  # fmt: skip
        return {
            "stream": self.stream, "template": self.template, "route": self.route, **counts,
            "rates": {name: self.rate(value) for name, value in counts.items() if name != "sent"},
            "delivered_seconds": {"p50": self.p50, "p95": self.p95}, "size_bytes": self.size_bytes,
            "confirmed": self.confirmed,
        }  # fmt: skip


def _percentile(values: Sequence[float], percent: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[percent - 1], 3)


def merged(groups: Sequence[Figures], route: str, stream: str = "*", template: str = "*") -> Figures:
    """One route's figures over several groups (every template of a stream)."""
    total = Figures(stream, template, route)
    for group in groups:
        if group.route != route:
            continue
        for name in ("sent", "delivered", "bounced_hard", "bounced_soft", "complained", "deferred", "failed",
                     "confirmed"):
            setattr(total, name, getattr(total, name) + getattr(group, name))
        total.latencies.extend(group.latencies)
    return total


class SqlComparison:
    def __init__(self, engine: Any):
        self._reads = read_only(engine)

    async def figures(
        self, since: float, until: float, stream: str | None = None, template: str | None = None
    ) -> list[Figures]:
        """Every (stream, template, route) with deliveries created in [since, until)."""
        template_of = sa.func.coalesce(messages.c.template_id, "")
        where = [deliveries.c.created_at >= since, deliveries.c.created_at < until]
        if stream is not None:
            where.append(messages.c.stream == stream)
        if template is not None:
            where.append(template_of == template)
        joined = deliveries.join(messages, messages.c.id == deliveries.c.message_id)
        dims = (messages.c.stream, template_of.label("template"), deliveries.c.route)
        groups: dict[tuple[str, str, str], Figures] = {}

        def group(row: Any) -> Figures:
            key = (row[0], row[1], row[2])
            if key not in groups:
                groups[key] = Figures(*key)
            return groups[key]

        with translate_errors("comparing routes"):
            async with self._reads.connect() as conn:
                states = await conn.execute(
                    sa.select(*dims, deliveries.c.state, sa.func.count(), sa.func.avg(messages.c.size))
                    .select_from(joined).where(*where).group_by(*dims, deliveries.c.state)
                )  # fmt: skip
                for row in states:
                    figures, state, count = group(row), DeliveryState(row[3]), int(row[4])
                    if state is not DeliveryState.SUPPRESSED:
                        figures.sent += count
                        figures.size_bytes = int(row[5] or 0)
                    if state is DeliveryState.DELIVERED:
                        figures.delivered += count
                    elif state in (DeliveryState.EXPIRED, DeliveryState.DEAD):
                        figures.failed += count
                cls = events.c.detail["bounce_class"].as_string()
                kind = sa.func.replace(events.c.type, "shadow_", "")
                happened = await conn.execute(
                    sa.select(*dims, kind, cls, sa.func.count(sa.distinct(events.c.delivery_id)))
                    .select_from(joined.join(events, events.c.delivery_id == deliveries.c.id))
                    .where(*where, kind.in_(["bounced", "complained", "deferred"]))
                    .group_by(*dims, kind, cls)
                )  # fmt: skip
                for row in happened:
                    figures, what, count = group(row), row[3], int(row[5])
                    if what == "bounced":
                        if row[4] == "soft":
                            figures.bounced_soft += count
                        else:
                            figures.bounced_hard += count
                    elif what == "complained":
                        figures.complained += count
                    else:
                        figures.deferred += count
                delivered = await conn.execute(
                    sa.select(*dims, deliveries.c.finished_at - deliveries.c.created_at)
                    .select_from(joined)
                    .where(*where, deliveries.c.state == DeliveryState.DELIVERED.value,
                           deliveries.c.finished_at.is_not(None))
                    .limit(MAX_LATENCIES)
                )  # fmt: skip
                latencies: dict[tuple[str, str, str], list[float]] = defaultdict(list)
                for row in delivered:
                    latencies[(row[0], row[1], row[2])].append(max(0.0, float(row[3])))
                # Loops' own word: the time its `email.delivered` came, when it came.
                confirmed = await conn.execute(
                    sa.select(*dims, sa.func.min(loops_events.c.event_time) - deliveries.c.created_at)
                    .select_from(joined.join(loops_events, loops_events.c.delivery_id == deliveries.c.id))
                    .where(*where, loops_events.c.event_name == "email.delivered")
                    .group_by(*dims, deliveries.c.id, deliveries.c.created_at)
                    .limit(MAX_LATENCIES)
                )  # fmt: skip
                loops_latencies: dict[tuple[str, str, str], list[float]] = defaultdict(list)
                for row in confirmed:
                    group(row).confirmed += 1
                    loops_latencies[(row[0], row[1], row[2])].append(max(0.0, float(row[3])))
                latencies.update(loops_latencies)
        for key, values in latencies.items():
            if key in groups:
                groups[key].latencies = sorted(values)
        return sorted(groups.values(), key=lambda f: (f.stream, f.template, f.route))
