"""The MRR ledger read back: positions at a moment, the changes of a period, and the dated
exchange rates. Writes happen in postroom.billing.store, in the transaction of their cause."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from postroom.mrr.movements import Cause, Change, Holding
from postroom.store.engine import GatedStore, translate_errors
from postroom.store.tables import billing_customers, fx_rates, mrr_ledger, mrr_positions


def _stamp(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


@dataclass(frozen=True)
class Period:
    """The changes of [since, until) and what the movements need to know of the time before."""

    start: dict[tuple[str, str], Holding]  # (customer, currency) -> holding at `since`
    ever_paid: set[str]  # customers with MRR above 0 at some point before `since`
    paid_before: dict[str, dt.datetime]  # customers a backfill found had paid before the ledger
    changes: list[Change]  # ordered by customer, then ledger order


class SqlLedger(GatedStore):
    async def positions_at(self, at: dt.datetime, customer: str | None = None) -> dict[tuple[str, str], Holding]:
        """Every (customer, currency) holding as of just before `at`."""
        inner = mrr_ledger.alias("latest")  # not correlated with the outer query's rows
        latest = sa.select(sa.func.max(inner.c.seq)).where(inner.c.occurred_at < at.timestamp())
        if customer is not None:
            latest = latest.where(inner.c.customer == customer)
        latest = latest.group_by(inner.c.customer, inner.c.currency)
        query = (sa.select(mrr_ledger.c.customer, mrr_ledger.c.currency, mrr_ledger.c.after_cents, mrr_ledger.c.after_free)
                 .where(mrr_ledger.c.seq.in_(latest)))  # fmt: skip
        with translate_errors("reading the MRR ledger"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(query)).all()
        return {(r.customer, r.currency): Holding(int(r.after_cents), bool(r.after_free))
                for r in rows if r.after_cents or r.after_free}  # fmt: skip

    async def current_positions(self) -> dict[tuple[str, str], Holding]:
        """Every (customer, currency) holding now (the latest change of each)."""
        query = sa.select(mrr_positions).where(sa.or_(mrr_positions.c.cents != 0, mrr_positions.c.free))
        with translate_errors("reading the MRR positions"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(query)).all()
        return {(r.customer, r.currency): Holding(int(r.cents), bool(r.free)) for r in rows}

    async def scheduled_churn(self) -> list[tuple[str, int]]:
        """(currency, cents) of every customer's value that leaves at its period end, now."""
        query = sa.select(mrr_positions.c.currency, mrr_positions.c.scheduled_churn_cents).where(
            mrr_positions.c.scheduled_churn_cents > 0)
        with translate_errors("reading the MRR positions"):
            async with self._reads.connect() as conn:
                return [(r[0], int(r[1])) for r in (await conn.execute(query)).all()]

    async def period(self, since: dt.datetime, until: dt.datetime, customer: str | None = None) -> Period:
        window = sa.select(mrr_ledger).where(mrr_ledger.c.occurred_at >= since.timestamp(),
                                             mrr_ledger.c.occurred_at < until.timestamp())  # fmt: skip
        paid = (sa.select(mrr_ledger.c.customer).where(mrr_ledger.c.occurred_at < since.timestamp(),
                                                       mrr_ledger.c.after_cents > 0).distinct())  # fmt: skip
        before = sa.select(billing_customers.c.id, billing_customers.c.paid_before_at).where(
            billing_customers.c.paid_before_at.is_not(None))
        if customer is not None:
            window = window.where(mrr_ledger.c.customer == customer)
            paid = paid.where(mrr_ledger.c.customer == customer)
            before = before.where(billing_customers.c.id == customer)
        with translate_errors("reading the MRR ledger"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(window.order_by(mrr_ledger.c.customer, mrr_ledger.c.seq))).all()
                ever = {r[0] for r in (await conn.execute(paid)).all()}
                paid_before = {r[0]: _stamp(float(r[1])) for r in (await conn.execute(before)).all()}
        changes = [Change(r.customer, r.currency, _stamp(float(r.occurred_at)),
                          Holding(int(r.before_cents), bool(r.before_free)), Holding(int(r.after_cents), bool(r.after_free)),
                          Cause(r.cause), r.event_id, r.subscription, int(r.seq)) for r in rows]  # fmt: skip
        start = await self.positions_at(since, customer)
        return Period(start, ever, paid_before, changes)

    async def first_change_at(self) -> float | None:
        with translate_errors("reading the MRR ledger"):
            async with self._reads.connect() as conn:
                found = (await conn.execute(sa.select(sa.func.min(mrr_ledger.c.occurred_at)))).scalar()
        return float(found) if found is not None else None

    # -- exchange rates -----------------------------------------------------------------------

    async def rates(self) -> list[tuple[str, dt.date, Decimal]]:
        with translate_errors("reading exchange rates"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(sa.select(fx_rates).order_by(fx_rates.c.currency, fx_rates.c.day))).all()
        return [(r.currency, dt.date.fromisoformat(r.day), Decimal(r.rate)) for r in rows]

    async def set_rates(self, rates: Sequence[tuple[str, dt.date, Decimal]], now: float) -> int:
        """Set (or replace) each day's rate; all or none."""
        with translate_errors("setting exchange rates"):
            async with self._write() as conn:
                make = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
                for currency, day, rate in rates:
                    insert = make(fx_rates).values(currency=currency.lower(), day=day.isoformat(), rate=str(rate), set_at=now)
                    await conn.execute(insert.on_conflict_do_update(
                        index_elements=["currency", "day"], set_={"rate": str(rate), "set_at": now}))  # fmt: skip
        return len(rates)

