"""Movements and the roll-forward (MRR.md S-9, S-10, S-7).

The ledger records *changes*: a customer's MRR in one currency before and after something happened
(an event, a backfilled opening, a discount running out, a reconciliation). Movements are read
from the changes when a period is reported: one customer's changes within the grouping window net
into one movement (a plan swap is one expansion, not churn plus new), groups never cross the
period's edges, and each movement is valued in the reporting currency at the rate of its day.
The FX line is what is left: `end - start - sum(movements)`, so the roll-forward identity holds
for every period by construction, and FX never changes a movement's class (classes are decided in
the customer's own currency).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from postroom.mrr.money import FxTable, round_minor
from postroom.mrr.policies import FreeCustomer, Policies
from postroom.mrr.valuation import Value


class Kind(enum.StrEnum):
    NEW = "new"
    EXPANSION = "expansion"
    CONTRACTION = "contraction"
    CHURN = "churn"
    REACTIVATION = "reactivation"
    RECONCILIATION = "reconciliation"


class Cause(enum.StrEnum):
    EVENT = "event"  # a Stripe event changed a subscription
    OPENING = "opening"  # the backfill found the subscription (dated at its start_date)
    SCHEDULE = "schedule"  # time alone changed the value (a discount ended, a grace period ran out)
    RECONCILIATION = "reconciliation"  # Stripe's state differed from the ledger's


@dataclass(frozen=True)
class Holding:
    """A customer's MRR in one currency: rounded minor units, and whether it is a free customer
    (counting subscriptions discounted to 0)."""

    cents: int = 0
    free: bool = False


def holdings(values: Iterable[Value]) -> dict[str, Holding]:
    """A customer's subscriptions summed per currency and rounded once per customer (S-9)."""
    sums: dict[str, Decimal] = {}
    counting: set[str] = set()
    for v in values:
        sums[v.currency] = sums.get(v.currency, Decimal(0)) + v.mrr
        if v.counting:
            counting.add(v.currency)
    out = {}
    for currency, total in sums.items():
        cents = round_minor(total)
        out[currency] = Holding(cents, cents == 0 and currency in counting)
    return {c: h for c, h in out.items() if h.cents or h.free}


@dataclass(frozen=True)
class Change:
    """One ledger row."""

    customer: str
    currency: str
    occurred_at: dt.datetime
    before: Holding
    after: Holding
    cause: Cause
    event_id: str | None = None
    subscription: str | None = None
    seq: int = 0


@dataclass(frozen=True)
class Movement:
    customer: str
    kind: Kind
    currency: str
    native_cents: int  # in the customer's currency
    cents: int  # in the reporting currency, at the rate of `occurred_at`'s day
    occurred_at: dt.datetime
    event_ids: tuple[str, ...]
    causes: tuple[Cause, ...]


@dataclass
class _Customer:
    holdings: dict[str, Holding] = field(default_factory=dict)
    ever_paid: bool = False

    def present(self, policies: Policies) -> bool:
        free_counts = policies.free_customer is FreeCustomer.CONTRACTION
        return any(h.cents > 0 or (free_counts and h.free) for h in self.holdings.values())


def _kind(before: _Customer, after: _Customer, delta: int, policies: Policies) -> Kind:
    was, now = before.present(policies), after.present(policies)
    if not was and now:
        return Kind.REACTIVATION if before.ever_paid else Kind.NEW
    if was and not now:
        return Kind.CHURN
    return Kind.EXPANSION if delta > 0 else Kind.CONTRACTION


def _groups(changes: Sequence[Change], window: dt.timedelta) -> list[list[Change]]:
    groups: list[list[Change]] = []
    for change in changes:
        current = groups[-1] if groups else None
        if (current and change.cause is not Cause.RECONCILIATION and current[0].cause is not Cause.RECONCILIATION
                and change.occurred_at - current[0].occurred_at < window):  # fmt: skip
            current.append(change)
        else:
            groups.append([change])
    return groups


def customer_movements(start: Mapping[str, Holding], ever_paid: bool, window_changes: Sequence[Change],
                       fx: FxTable, policies: Policies, paid_before: dt.datetime | None = None) -> list[Movement]:  # fmt: skip
    """The movements of one customer in a period: `start` is its MRR per currency when the period
    begins and `ever_paid` whether it had paid before, `window_changes` its changes inside the
    period in ledger order. `paid_before` is when a backfill learnt the customer had paid before
    the ledger began."""
    state = _Customer(dict(start), ever_paid)
    out: list[Movement] = []
    for group in _groups(window_changes, dt.timedelta(minutes=policies.grouping_window_minutes)):
        before = _Customer(dict(state.holdings), state.ever_paid or (paid_before is not None and group[0].occurred_at >= paid_before))  # noqa: E501
        for change in group:
            state.holdings[change.currency] = change.after
        after = _Customer(dict(state.holdings))
        last = group[-1].occurred_at
        for currency in sorted({c.currency for c in group}):
            old = before.holdings.get(currency, Holding())
            new = after.holdings.get(currency, Holding())
            delta = new.cents - old.cents
            if delta == 0:
                continue
            kind = Kind.RECONCILIATION if group[0].cause is Cause.RECONCILIATION else _kind(before, after, delta, policies)
            cents = fx.convert(new.cents, currency, last.date()) - fx.convert(old.cents, currency, last.date())
            events = tuple(c.event_id for c in group if c.currency == currency and c.event_id)
            causes = tuple(dict.fromkeys(c.cause for c in group if c.currency == currency))
            out.append(Movement(group[0].customer, kind, currency, delta, cents, last, events, causes))
        state.ever_paid = before.ever_paid or any(h.cents > 0 for h in state.holdings.values())
    return out


MOVEMENT_KINDS = (Kind.NEW, Kind.EXPANSION, Kind.CONTRACTION, Kind.CHURN, Kind.REACTIVATION, Kind.RECONCILIATION)


@dataclass(frozen=True)
class Snapshot:
    """MRR at one moment, in the reporting currency."""

    at: dt.datetime
    cents: int
    paying_customers: int
    scheduled_churn_cents: int = 0


def snapshot(at: dt.datetime, positions: Mapping[tuple[str, str], Holding], fx: FxTable, day: dt.date,
             scheduled_churn: Iterable[tuple[str, int]] = ()) -> Snapshot:  # fmt: skip
    """Sum of every customer's holdings at `day`'s rates; `positions` maps (customer, currency)."""
    total = sum(fx.convert(h.cents, currency, day) for (_, currency), h in positions.items())
    paying = len({customer for (customer, _), h in positions.items() if h.cents > 0})
    scheduled = sum(fx.convert(cents, currency, day) for currency, cents in scheduled_churn)
    return Snapshot(at, total, paying, scheduled)


@dataclass(frozen=True)
class RollForward:
    """A period: MRR at its start and end, the movements between, and the FX line."""

    start: Snapshot
    end: Snapshot
    movements: Sequence[Movement]

    def total(self, kind: Kind) -> int:
        """Sum of a kind, signed as it moves MRR (churn and contraction are negative)."""
        return sum(m.cents for m in self.movements if m.kind is kind)

    @property
    def fx_cents(self) -> int:
        return self.end.cents - self.start.cents - sum(m.cents for m in self.movements)

    def totals(self) -> dict[str, int]:
        """Per kind as a positive amount for gains and losses alike (as reports print them), and
        the signed FX line; `start + new + expansion + reactivation - contraction - churn
        + reconciliation + fx = end`."""
        out = {kind.value: abs(self.total(kind)) if kind in (Kind.CHURN, Kind.CONTRACTION) else self.total(kind)
               for kind in MOVEMENT_KINDS}  # fmt: skip
        out["fx"] = self.fx_cents
        return out
