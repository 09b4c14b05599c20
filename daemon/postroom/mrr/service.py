"""MRR as people ask for it: at a date, over a period, with the movements between and the
policies it was computed under. What the CLI, the API, the metrics and the reports read."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from postroom.mrr.ledger import SqlLedger
from postroom.mrr.money import FxTable
from postroom.mrr.movements import Change, Holding, Movement, RollForward, Snapshot, customer_movements, snapshot
from postroom.mrr.settings import MrrSettings


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


@dataclass(frozen=True)
class PeriodReport:
    """A period's roll-forward: `since` (first day) to `at` (last day, inclusive), UTC days."""

    since: dt.date
    at: dt.date
    roll: RollForward
    policies: dict[str, Any]
    currency: str
    scheduled_churn_cents: int

    def as_json(self) -> dict[str, Any]:
        end, start = self.roll.end, self.roll.start
        totals = self.roll.totals()
        arpa = (Decimal(end.cents) / end.paying_customers).quantize(Decimal(1), ROUND_HALF_EVEN) if end.paying_customers else Decimal(0)
        net_new = sum(totals[k] for k in ("new", "expansion", "reactivation")) - totals["contraction"] - totals["churn"]
        return {
            "at": self.at.isoformat(),
            "since": self.since.isoformat(),
            "currency": self.currency,
            "mrr_cents": end.cents,
            "arr_cents": end.cents * 12,
            "paying_customers": end.paying_customers,
            "arpa_cents": int(arpa),
            "start": {"mrr_cents": start.cents, "paying_customers": start.paying_customers},
            "movements": totals,
            "net_new_mrr_cents": net_new,
            "scheduled_churn_cents": self.scheduled_churn_cents,
            "policies": self.policies,
        }


def movement_json(movement: Movement, currency: str) -> dict[str, Any]:
    return {
        "customer": movement.customer,
        "kind": movement.kind.value,
        "amount_cents": movement.cents,
        "currency": currency,
        "native_amount_cents": movement.native_cents,
        "native_currency": movement.currency,
        "occurred_at": movement.occurred_at.isoformat().replace("+00:00", "Z"),
        "event_id": movement.event_ids[-1] if movement.event_ids else None,
        "event_ids": list(movement.event_ids),
        "causes": [cause.value for cause in movement.causes],
    }


def _by_customer(positions: Mapping[tuple[str, str], Holding]) -> dict[str, dict[str, Holding]]:
    grouped: dict[str, dict[str, Holding]] = defaultdict(dict)
    for (customer, currency), holding in positions.items():
        grouped[customer][currency] = holding
    return grouped


def _flat(grouped: Mapping[str, Mapping[str, Holding]]) -> dict[tuple[str, str], Holding]:
    return {(customer, currency): h for customer, held in grouped.items() for currency, h in held.items()}


class MrrService:
    def __init__(self, ledger: SqlLedger, settings: MrrSettings):
        self._ledger = ledger
        self._settings = settings
        self._policies = settings.policies()

    @property
    def currency(self) -> str:
        return self._settings.reporting_currency

    async def fx(self) -> FxTable:
        return FxTable.of(self.currency, self._settings.fx_rates, await self._ledger.rates())

    async def roll_forward(self, since: dt.date, at: dt.date, customer: str | None = None) -> RollForward:
        """From the start of `since` to the end of `at` (UTC). Start is valued at the rates of the
        day before `since`, the end at those of `at`, each movement at those of its day."""
        if at < since:
            raise ValueError(f"the period ends ({at}) before it begins ({since})")
        fx = await self.fx()
        begin, end = day_start(since), day_start(at + dt.timedelta(days=1))
        period = await self._ledger.period(begin, end, customer)
        by_customer: dict[str, list[Any]] = defaultdict(list)
        for change in period.changes:
            by_customer[change.customer].append(change)
        movements: list[Movement] = []
        start_by = _by_customer(period.start)
        for name, changes in by_customer.items():
            movements += customer_movements(start_by.get(name, {}), name in period.ever_paid, changes, fx,
                                            self._policies, period.paid_before.get(name))  # fmt: skip
        movements.sort(key=lambda m: (m.occurred_at, m.customer))
        ending = await self._ledger.positions_at(end, customer)
        first = snapshot(begin, period.start, fx, since - dt.timedelta(days=1))
        last = snapshot(end, ending, fx, at)
        return RollForward(first, last, movements)

    async def roll_forwards(self, spans: Sequence[tuple[dt.date, dt.date]]) -> list[RollForward]:
        """The roll-forwards of consecutive periods (each `(since, at)`, ascending, the next one
        beginning the day after the last ends), from one read of the ledger: what a report's
        12-period trends need. Each equals `roll_forward` of its period."""
        for (_, at), (since, _) in itertools.pairwise(spans):
            if since != at + dt.timedelta(days=1):
                raise ValueError("the periods must follow one another")
        fx = await self.fx()
        first, last = spans[0][0], spans[-1][1]
        whole = await self._ledger.period(day_start(first), day_start(last + dt.timedelta(days=1)))
        held_by = _by_customer(whole.start)
        ever_paid = set(whole.ever_paid)
        changes = sorted(whole.changes, key=lambda c: (c.occurred_at, c.seq))
        out = []
        cursor = 0
        for since, at in spans:
            begin, end = day_start(since), day_start(at + dt.timedelta(days=1))
            inside: list[Change] = []
            while cursor < len(changes) and changes[cursor].occurred_at < end:
                inside.append(changes[cursor])
                cursor += 1
            start = snapshot(begin, _flat(held_by), fx, since - dt.timedelta(days=1))
            by_customer: dict[str, list[Change]] = defaultdict(list)
            for change in sorted(inside, key=lambda c: (c.customer, c.seq)):
                by_customer[change.customer].append(change)
            movements: list[Movement] = []
            for name, own in by_customer.items():
                held = held_by.setdefault(name, {})
                movements += customer_movements(dict(held), name in ever_paid, own, fx, self._policies,
                                                whole.paid_before.get(name))  # fmt: skip
                for change in own:
                    if change.after.cents or change.after.free:
                        held[change.currency] = change.after
                    else:
                        held.pop(change.currency, None)
                    if change.after.cents > 0:
                        ever_paid.add(name)
            movements.sort(key=lambda m: (m.occurred_at, m.customer))
            out.append(RollForward(start, snapshot(end, _flat(held_by), fx, at), movements))
        return out

    async def report(self, at: dt.date, since: dt.date | None = None) -> PeriodReport:
        since = since or month_start(at)
        roll = await self.roll_forward(since, at)
        fx = await self.fx()
        scheduled = sum(fx.convert(cents, currency, at) for currency, cents in await self._ledger.scheduled_churn())
        return PeriodReport(since, at, roll, self._policies.described(), self.currency, scheduled)

    @property
    def policies(self) -> dict[str, Any]:
        return self._policies.described()

    async def first_day(self) -> dt.date | None:
        """The day of the ledger's first change (None: empty)."""
        first = await self._ledger.first_change_at()
        return dt.datetime.fromtimestamp(first, dt.UTC).date() if first is not None else None

    async def current(self, now: float) -> Snapshot:
        """MRR this moment at today's rates (the gauges)."""
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        return snapshot(moment, await self._ledger.current_positions(), await self.fx(), moment.date())

    async def movements(self, since: dt.date, until: dt.date, customer: str | None = None) -> list[dict[str, Any]]:
        """Each movement of [since, until] (days, inclusive) with the events that caused it."""
        roll = await self.roll_forward(since, until, customer)
        return [movement_json(m, self.currency) for m in roll.movements]
