"""A customer's MRR recomputed from its subscriptions: each subscription's value, the customer's
holdings, and the ledger changes against its current positions. Pure: the billing store loads the
inputs and writes the outputs in one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from postroom.mrr.money import round_minor
from postroom.mrr.movements import Cause, Change, Holding, holdings
from postroom.mrr.policies import ChurnRecognition, Policies
from postroom.mrr.valuation import Context, Value, next_change, value


@dataclass(frozen=True)
class Held:
    """A subscription as the billing store keeps it, with what its snapshot may only reference."""

    id: str
    snapshot: Mapping[str, Any]
    context: Context
    start_date: float | None = None


@dataclass(frozen=True)
class Position:
    holding: Holding
    occurred_at: float


@dataclass(frozen=True)
class Revaluation:
    values: Mapping[str, Value]  # subscription id -> value
    next_changes: Mapping[str, dt.datetime | None]
    holdings: Mapping[str, Holding]  # currency -> the customer's MRR
    scheduled_churn: Mapping[str, int]  # currency -> rounded value leaving at period end
    changes: Sequence[Change]


def _stamp(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def revalue(customer: str, subscriptions: Sequence[Held], positions: Mapping[str, Position], at: float,
            policies: Policies, cause: Cause, event_id: str | None = None,
            subscription: str | None = None) -> Revaluation:  # fmt: skip
    """Value every subscription at `at` and record a change for each currency whose holding moved.
    A change is never dated before the customer's latest one, so each (customer, currency) row
    continues from the one before it (`before` is the previous `after`)."""
    moment = _stamp(at)
    values = {held.id: value(held.snapshot, moment, held.context, policies) for held in subscriptions}
    nexts = {held.id: next_change(held.snapshot, moment, held.context, policies) for held in subscriptions}
    now = holdings(values.values())
    latest = max((p.occurred_at for p in positions.values()), default=at)
    when = _stamp(max(at, latest))
    changes = []
    for currency in sorted(set(now) | set(positions)):
        before = positions[currency].holding if currency in positions else Holding()
        after = now.get(currency, Holding())
        if before != after:
            changes.append(Change(customer, currency, when, before, after, cause, event_id, subscription))
    scheduled: dict[str, Decimal] = {}
    for v in values.values():
        if v.scheduled_churn:
            scheduled[v.currency] = scheduled.get(v.currency, Decimal(0)) + v.scheduled_churn
    return Revaluation(values, nexts, now, {c: round_minor(s) for c, s in scheduled.items()}, changes)


def openings(customer: str, subscriptions: Sequence[Held], at: float, policies: Policies) -> list[Change]:
    """A backfilled customer's history as far as its current subscriptions tell it: each one that
    counts opens at its `start_date` with its value today (MRR.md 1.3; the limits are in
    docs/mrr.md). Under `churn_recognition = at_request` a scheduled cancellation also leaves at
    its request (`canceled_at`). The last change ends at the customer's holdings today."""
    moment = _stamp(at)
    at_end = replace(policies, churn_recognition=ChurnRecognition.AT_END)
    steps: list[tuple[float, str, Value]] = []  # (when, subscription, its value from then on)
    for held in subscriptions:
        now = value(held.snapshot, moment, held.context, policies)
        opened = value(held.snapshot, moment, held.context, at_end)
        requested = held.snapshot.get("canceled_at")
        start = min(held.start_date or at, at)
        if not now.counting and opened.counting and isinstance(requested, int | float):
            steps += [(start, held.id, opened), (min(float(requested), at), held.id, now)]
        elif now.counting or now.mrr:
            steps.append((start, held.id, now))
    steps.sort(key=lambda step: (step[0], step[1]))
    changes: list[Change] = []
    values: dict[str, Value] = {}
    current: dict[str, Holding] = {}
    for when, sub_id, worth in steps:
        values[sub_id] = worth
        after = holdings(values.values())
        for currency in sorted(set(after) | set(current)):
            old, new = current.get(currency, Holding()), after.get(currency, Holding())
            if old != new:
                changes.append(Change(customer, currency, _stamp(when), old, new, Cause.OPENING, None, sub_id))
        current = after
    return changes
