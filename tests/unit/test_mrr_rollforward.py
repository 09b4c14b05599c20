"""The roll-forward identity (MRR.md S-10, S-7) on random histories: several customers in USD, EUR
and JPY change their subscriptions at random moments; each change is revalued from the positions
the previous one left (as the billing store does) and the ledger is read back over random periods
at random dated exchange rates, the way MrrService.roll_forward reads it.

`end = start + movements + fx` holds by construction, so the properties that can fail are the
others: no FX line without a rate change, native movements that add up to the change in holdings,
movement kinds that agree with what the customer held before and after each group, and periods
that split anywhere into two that join up exactly."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.mrr.money import FxTable
from postroom.mrr.movements import (Cause, Change, Holding, Kind, Movement, RollForward, customer_movements,
                                    snapshot)  # fmt: skip
from postroom.mrr.policies import ChurnRecognition, DiscountPolicy, FreeCustomer, PausePolicy, Policies
from postroom.mrr.revalue import Held, Position, revalue
from postroom.mrr.valuation import Context

Json = dict[str, Any]
Key = tuple[str, str]  # (customer, currency)

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
DAY = 86_400
STATIC = {"eur": Decimal("1.08"), "jpy": Decimal("0.0067")}


def subscription(sid: str, customer: str, currency: str, state: Mapping[str, Any]) -> Json:
    """A one-item monthly subscription in Stripe's shape."""
    discounts = []
    if state["percent_off"]:
        coupon = {"id": "co", "percent_off": state["percent_off"], "amount_off": None, "duration": "forever"}
        discounts.append({"id": f"di_{sid}", "start": 0, "end": None, "subscription": sid,
                          "source": {"type": "coupon", "coupon": coupon}})  # fmt: skip
    price = {"id": f"price_{sid}", "currency": currency, "product": "prod", "billing_scheme": "per_unit",
             "recurring": {"interval": state["interval"], "interval_count": 1, "usage_type": "licensed"},
             "unit_amount_decimal": str(state["amount"]), "tax_behavior": "exclusive"}  # fmt: skip
    return {"id": sid, "customer": customer, "currency": currency, "status": state["status"],
            "items": {"data": [{"id": f"si_{sid}", "price": price, "quantity": state["quantity"]}]},
            "discounts": discounts, "cancel_at_period_end": state["cancel_at_period_end"], "cancel_at": None,
            "pause_collection": {"behavior": "void"} if state["paused"] else None}  # fmt: skip


RARELY = st.sampled_from([False, False, False, False, False, True])
STATES = st.fixed_dictionaries({
    "status": st.sampled_from(["active"] * 6 + ["past_due", "trialing", "unpaid", "canceled", "canceled"]),
    "amount": st.integers(1, 40_000),
    "interval": st.sampled_from(["month", "month", "year", "week", "day"]),
    "quantity": st.sampled_from([0, 1, 1, 1, 2, 3]),
    "percent_off": st.sampled_from([None, None, None, None, 50, 100]),
    "cancel_at_period_end": RARELY,
    "paused": RARELY,
})  # fmt: skip
GAPS = st.one_of(st.integers(0, 900), st.integers(0, 4 * 3_600), st.integers(0, 3 * DAY))
EVENTS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1), GAPS, STATES), min_size=8, max_size=30)
POLICIES = st.builds(
    Policies,
    discounts=st.sampled_from(list(DiscountPolicy)),
    churn_recognition=st.sampled_from(list(ChurnRecognition)),
    pause=st.sampled_from(list(PausePolicy)),
    free_customer=st.sampled_from(list(FreeCustomer)),
    grouping_window_minutes=st.integers(1, 240),
)
RATES = st.lists(st.tuples(st.sampled_from(["eur", "jpy"]), st.integers(-3, 40), st.integers(1, 400)), max_size=12)


def sub_currency(customer: int, sub: int, seed: int, single: bool) -> str:
    return "usd" if single else ("usd", "eur", "jpy")[(customer + sub + seed) % 3]


def history(events: Sequence[tuple[int, int, int, Mapping[str, Any]]], policies: Policies, single: bool,
            seed: int) -> list[Change]:  # fmt: skip
    """The ledger the events leave: each customer revalued from its current positions."""
    subs: dict[str, dict[str, Held]] = defaultdict(dict)
    positions: dict[str, dict[str, Position]] = defaultdict(dict)
    ledger: list[Change] = []
    at = T0.timestamp()
    for n, (c, s, gap, state) in enumerate(events):
        at += gap
        customer, sid = f"cus_{c}", f"sub_{c}_{s}"
        snap = subscription(sid, customer, sub_currency(c, s, seed, single), state)
        subs[customer][sid] = Held(sid, snap, Context())
        result = revalue(customer, list(subs[customer].values()), positions[customer], at, policies, Cause.EVENT,
                         f"evt_{n}", sid)  # fmt: skip
        for change in result.changes:
            held = positions[customer].get(change.currency)
            assert change.before == (held.holding if held else Holding())  # each row continues the last
            positions[customer][change.currency] = Position(change.after, change.occurred_at.timestamp())
            ledger.append(dataclasses.replace(change, seq=len(ledger) + 1))
    return ledger


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def positions_at(ledger: Sequence[Change], at: dt.datetime) -> dict[Key, Holding]:
    """Every holding as of just before `at` (SqlLedger.positions_at)."""
    latest: dict[Key, Holding] = {}
    for change in ledger:
        if change.occurred_at < at:
            latest[(change.customer, change.currency)] = change.after
    return {key: h for key, h in latest.items() if h.cents or h.free}


def roll_forward(ledger: Sequence[Change], since: dt.date, at: dt.date, fx: FxTable,
                 policies: Policies) -> tuple[RollForward, dict[Key, Holding], dict[Key, Holding]]:  # fmt: skip
    """MrrService.roll_forward over an in-memory ledger; also the start and end positions."""
    begin, end = day_start(since), day_start(at + dt.timedelta(days=1))
    start = positions_at(ledger, begin)
    ever_paid = {c.customer for c in ledger if c.occurred_at < begin and c.after.cents > 0}
    by_customer: dict[str, list[Change]] = defaultdict(list)
    for change in sorted(ledger, key=lambda c: (c.customer, c.seq)):
        if begin <= change.occurred_at < end:
            by_customer[change.customer].append(change)
    movements: list[Movement] = []
    for name, changes in by_customer.items():
        mine = {currency: h for (who, currency), h in start.items() if who == name}
        movements += customer_movements(mine, name in ever_paid, changes, fx, policies)
    movements.sort(key=lambda m: (m.occurred_at, m.customer))
    ending = positions_at(ledger, end)
    first = snapshot(begin, start, fx, since - dt.timedelta(days=1))
    last = snapshot(end, ending, fx, at)
    return RollForward(first, last, movements), start, ending


def native_sums(movements: Sequence[Movement]) -> dict[Key, int]:
    sums: dict[Key, int] = defaultdict(int)
    for m in movements:
        sums[(m.customer, m.currency)] += m.native_cents
    return {k: v for k, v in sums.items() if v}


def held_deltas(start: Mapping[Key, Holding], end: Mapping[Key, Holding]) -> dict[Key, int]:
    deltas = {k: end.get(k, Holding()).cents - start.get(k, Holding()).cents for k in set(start) | set(end)}
    return {k: v for k, v in deltas.items() if v}


def check_kinds(roll: RollForward, ledger: Sequence[Change], since: dt.date, at: dt.date, policies: Policies) -> None:
    """Walk each customer's changes in the period, grouped afresh, and check every movement's kind
    against what the customer held just before and just after its group."""
    begin, end = day_start(since), day_start(at + dt.timedelta(days=1))
    window = dt.timedelta(minutes=policies.grouping_window_minutes)
    free_counts = policies.free_customer is FreeCustomer.CONTRACTION

    def present(held: Mapping[str, Holding]) -> bool:
        return any(h.cents > 0 or (free_counts and h.free) for h in held.values())

    seen = 0
    for customer in sorted({c.customer for c in ledger}):
        mine = [c for c in ledger if c.customer == customer]
        held = {cur: h for (who, cur), h in positions_at(ledger, begin).items() if who == customer}
        paid = any(c.after.cents > 0 for c in mine if c.occurred_at < begin)
        groups: list[list[Change]] = []
        for change in (c for c in mine if begin <= c.occurred_at < end):
            if groups and change.occurred_at - groups[-1][0].occurred_at < window:
                groups[-1].append(change)
            else:
                groups.append([change])
        for group in groups:
            before = dict(held)
            for change in group:
                held[change.currency] = change.after
            was, now = present(before), present(held)
            expected = {cur: held[cur].cents - before.get(cur, Holding()).cents for cur in {c.currency for c in group}}
            moves = [m for m in roll.movements if m.customer == customer and m.occurred_at == group[-1].occurred_at]
            assert {m.currency: m.native_cents for m in moves} == {k: v for k, v in expected.items() if v}
            for m in moves:
                if m.kind in (Kind.NEW, Kind.REACTIVATION):
                    assert not was and now
                    assert (m.kind is Kind.REACTIVATION) == paid
                elif m.kind is Kind.CHURN:
                    assert was and not now
                elif m.kind is Kind.EXPANSION:
                    assert was and now and m.native_cents > 0
                else:
                    assert m.kind is Kind.CONTRACTION and was and now and m.native_cents < 0
            paid = paid or any(h.cents > 0 for h in held.values())
            seen += len(moves)
    assert seen == len(roll.movements)


def check_period(ledger: Sequence[Change], since: dt.date, at: dt.date, fx: FxTable, policies: Policies,
                 constant: bool) -> RollForward:  # fmt: skip
    roll, start, end = roll_forward(ledger, since, at, fx, policies)
    assert roll.end.cents == roll.start.cents + sum(m.cents for m in roll.movements) + roll.fx_cents
    totals = roll.totals()
    assert roll.end.cents == (roll.start.cents + totals["new"] + totals["expansion"] + totals["reactivation"]
                              - totals["contraction"] - totals["churn"] + totals["reconciliation"] + totals["fx"])  # fmt: skip
    if constant:
        assert roll.fx_cents == 0
    assert native_sums(roll.movements) == held_deltas(start, end)
    assert roll.end.paying_customers == len({who for (who, _), h in end.items() if h.cents > 0})
    check_kinds(roll, ledger, since, at, policies)
    for m in roll.movements:  # valued at the rate of the day its group ended, in and out alike
        chain = [c for c in ledger if (c.customer, c.currency) == (m.customer, m.currency) and c.occurred_at <= m.occurred_at]
        after, day = chain[-1].after.cents, m.occurred_at.date()
        assert m.cents == fx.convert(after, m.currency, day) - fx.convert(after - m.native_cents, m.currency, day)
    return roll


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=EVENTS, policies=POLICIES, single=st.booleans(), seed=st.integers(0, 2), constant=st.booleans(),
       rates=RATES, since=st.integers(-2, 60), length=st.integers(0, 60), cut=st.integers(1, 60))  # fmt: skip
def test_roll_forward_holds_for_any_history_and_any_split(
        events: list[tuple[int, int, int, dict[str, Any]]], policies: Policies, single: bool, seed: int,
        constant: bool, rates: list[tuple[str, int, int]], since: int, length: int, cut: int) -> None:  # fmt: skip
    ledger = history(events, policies, single, seed)
    scale = {"eur": Decimal("0.005"), "jpy": Decimal("0.00005")}  # eur 0.005..2.00, jpy 0.00005..0.02
    dated = [] if constant else [(cur, T0.date() + dt.timedelta(days=d), scale[cur] * r) for cur, d, r in rates]
    fx = FxTable.of("usd", STATIC, dated)
    first_day = T0.date() + dt.timedelta(days=since)
    last_day = first_day + dt.timedelta(days=length)
    whole = check_period(ledger, first_day, last_day, fx, policies, constant or single)
    if length == 0:
        return
    middle = first_day + dt.timedelta(days=1 + cut % length)  # the second part starts here
    head = check_period(ledger, first_day, middle - dt.timedelta(days=1), fx, policies, constant or single)
    tail = check_period(ledger, middle, last_day, fx, policies, constant or single)
    assert head.end.cents == tail.start.cents
    assert head.start.cents == whole.start.cents and tail.end.cents == whole.end.cents
    joined = sum(m.cents for m in (*head.movements, *tail.movements)) + head.fx_cents + tail.fx_cents
    assert joined == whole.end.cents - whole.start.cents
    both: dict[Key, int] = defaultdict(int)
    for key, cents in (*native_sums(head.movements).items(), *native_sums(tail.movements).items()):
        both[key] += cents
    assert {k: v for k, v in both.items() if v} == native_sums(whole.movements)

