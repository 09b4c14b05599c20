"""What the reports read of the billing copy besides MRR: revenue at risk, cash, trials, and how
fresh the data is. Money stays per currency here (integer minor units); the report converts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from postroom.mrr.money import round_minor
from postroom.store.engine import GatedStore, translate_errors
from postroom.store.tables import billing_invoices, billing_subscriptions, billing_syncs, stripe_events


@dataclass(frozen=True)
class RevenueRisk:
    past_due_count: int
    past_due_cents: dict[str, int]  # currency -> MRR of past_due subscriptions now
    scheduled_churn_cents: dict[str, int]  # currency -> MRR that ends with its period
    failed_payments: int  # invoices whose payment failed in the period
    failed_cents: dict[str, int]
    recovered_payments: int  # invoices paid in the period after a failed attempt
    recovered_cents: dict[str, int]


@dataclass(frozen=True)
class Cash:
    payments: int
    gross_cents: dict[str, int]  # amount_paid of invoices paid in the period


@dataclass(frozen=True)
class Trials:
    started: int
    converted: int  # trial ended in the period and the subscription counts now


@dataclass(frozen=True)
class Freshness:
    last_webhook_at: float | None
    last_reconciliation_at: float | None
    last_reconciliation_drift: dict[str, int] = field(default_factory=dict)  # currency -> signed cents
    flagged_events: int = 0


class SqlBillingFigures(GatedStore):
    async def risk(self, since: float, until: float) -> RevenueRisk:
        s, i = billing_subscriptions, billing_invoices
        with translate_errors("reading revenue at risk"):
            async with self._reads.connect() as conn:
                due = (await conn.execute(sa.select(s.c.currency, s.c.mrr).where(s.c.status == "past_due"))).all()
                ending = (await conn.execute(sa.select(s.c.currency, s.c.scheduled_churn)
                                             .where(s.c.scheduled_churn != "0"))).all()  # fmt: skip
                failed = (await conn.execute(sa.select(i.c.currency, i.c.amount_due).where(
                    i.c.failed_at >= since, i.c.failed_at < until))).all()  # fmt: skip
                recovered = (await conn.execute(sa.select(i.c.currency, i.c.amount_paid).where(
                    i.c.paid_at >= since, i.c.paid_at < until, i.c.failed_at.is_not(None)))).all()  # fmt: skip
        return RevenueRisk(len(due), _summed_decimal(due), _summed_decimal(ending), len(failed), _summed(failed),
                           len(recovered), _summed(recovered))  # fmt: skip

    async def cash(self, since: float, until: float) -> Cash:
        i = billing_invoices
        with translate_errors("reading payments"):
            async with self._reads.connect() as conn:
                paid = (await conn.execute(sa.select(i.c.currency, i.c.amount_paid).where(
                    i.c.paid_at >= since, i.c.paid_at < until, i.c.amount_paid > 0))).all()  # fmt: skip
        return Cash(len(paid), _summed(paid))

    async def trials(self, since: float, until: float) -> Trials:
        s = billing_subscriptions
        started_q = sa.select(sa.func.count()).where(s.c.trial_start >= since, s.c.trial_start < until)
        converted_q = sa.select(sa.func.count()).where(s.c.trial_end >= since, s.c.trial_end < until,
                                                       s.c.status.in_(("active", "past_due")))  # fmt: skip
        with translate_errors("reading trials"):
            async with self._reads.connect() as conn:
                started = (await conn.execute(started_q)).scalar()
                converted = (await conn.execute(converted_q)).scalar()
        return Trials(int(started or 0), int(converted or 0))

    async def freshness(self) -> Freshness:
        with translate_errors("reading data freshness"):
            async with self._reads.connect() as conn:
                webhook = (await conn.execute(sa.select(sa.func.max(stripe_events.c.received_at)))).scalar()
                flagged = (await conn.execute(sa.select(sa.func.count()).select_from(stripe_events)
                                              .where(stripe_events.c.status == "flagged"))).scalar()  # fmt: skip
                last = (await conn.execute(sa.select(billing_syncs).order_by(billing_syncs.c.finished_at.desc())
                                           .limit(1))).first()  # fmt: skip
        reconciled = float(last.finished_at) if last is not None else None
        drift = {str(k): int(v) for k, v in (last.drift or {}).items()} if last is not None else {}
        return Freshness(float(webhook) if webhook is not None else None, reconciled, drift, int(flagged or 0))


def _summed(rows: Iterable[Any]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for currency, cents in rows:
        out[str(currency or "").lower()] += int(cents or 0)
    return dict(out)


def _summed_decimal(rows: Iterable[Any]) -> dict[str, int]:
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for currency, value in rows:
        sums[str(currency).lower()] += Decimal(value)
    return {currency: round_minor(total) for currency, total in sums.items()}
