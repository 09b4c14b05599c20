"""The billing store and applier without HTTP, on SQLite and PostgreSQL: the ordering rule of
MRR.md 1.3 (an older snapshot never overwrites a newer one: stale without an API key, re-fetched
with one), dunning and the past_due grace, customer discounts, snapshots that reference what they
do not carry, and one event applied once when two appliers race."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.billing.applier import BillingApplier
from postroom.billing.events import StripeEvent
from postroom.billing.settings import StripeSettings
from postroom.billing.store import SqlBillingStore
from postroom.billing.stripe_api import StripeReader
from postroom.core.clock import FakeClock
from postroom.metrics import Metrics
from postroom.mrr.ledger import SqlLedger
from postroom.mrr.policies import Policies
from postroom.mrr.service import MrrService
from postroom.mrr.settings import MrrSettings
from postroom.store.engine import WriteGate
from postroom.store.tables import billing_subscriptions, mrr_ledger, mrr_positions, stripe_events
from tests.stripe_fake import API_KEY, FakeStripe, fake_stripe
from tests.stripe_fixtures import subscriptions

FEB_1 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC).timestamp()
DAY = 86400.0


def event(event_id: str, kind: str, created: float, obj: dict[str, Any]) -> StripeEvent:
    body = json.dumps({"id": event_id, "object": "event", "type": kind, "created": int(created),
                       "data": {"object": obj}})  # fmt: skip
    return StripeEvent(event_id, kind, float(int(created)), obj, body)


def with_quantity(sub: dict[str, Any], quantity: int) -> dict[str, Any]:
    changed = copy.deepcopy(sub)
    changed["items"]["data"][0]["quantity"] = quantity
    return changed


class Books:
    def __init__(self, engine: AsyncEngine, reader: StripeReader | None = None, **policies: Any):
        gate = WriteGate(None)
        self.clock = FakeClock(FEB_1)
        self.store = SqlBillingStore(engine, Policies(**policies), gate)
        self.service = MrrService(SqlLedger(engine, gate), MrrSettings(fx_rates={"eur": "1.08"}, **policies))  # type: ignore[arg-type]
        self.metrics = Metrics(CollectorRegistry())

        async def nothing() -> None:
            return None

        self.applier = BillingApplier(self.store, reader, self.clock, self.metrics, StripeSettings(), nothing, False)
        self.engine = engine

    async def post(self, *events: StripeEvent) -> None:
        for e in events:
            await self.applier.take(e)
        await self.applier.drain()

    async def statuses(self) -> dict[str, str]:
        async with self.engine.connect() as conn:
            return {r.id: r.status for r in (await conn.execute(sa.select(stripe_events))).all()}

    async def mrr(self, day: str = "2026-02-28") -> int:
        return (await self.service.report(dt.date.fromisoformat(day))).as_json()["mrr_cents"]  # type: ignore[no-any-return]


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with fake_stripe() as running:
        yield running


async def test_an_older_snapshot_is_stale_without_an_api_key(engine: AsyncEngine) -> None:
    books = Books(engine)
    a = subscriptions()["A_seats"]
    # Stored together, events are applied oldest state first; one that comes after a newer state was
    # applied is stale.
    await books.post(event("evt_new", "customer.subscription.updated", FEB_1 + 5 * DAY, with_quantity(a, 5)))
    await books.post(event("evt_old", "customer.subscription.updated", FEB_1 + 2 * DAY, with_quantity(a, 4)))
    assert (await books.statuses())["evt_old"] == "stale"
    assert await books.mrr() == 5 * 4_900
    assert books.metrics.stripe_events.labels("stale")._value.get() == 1


async def test_an_older_snapshot_is_refetched_with_an_api_key(engine: AsyncEngine, fake: FakeStripe) -> None:
    a = subscriptions()["A_seats"]
    fake.put_subscription(with_quantity(a, 6))  # Stripe's state now
    reader = StripeReader(API_KEY, api_base=fake.url, max_network_retries=0)
    try:
        books = Books(engine, reader)
        await books.post(event("evt_new", "customer.subscription.updated", FEB_1 + 5 * DAY, with_quantity(a, 5)))
        await books.post(event("evt_old", "customer.subscription.updated", FEB_1 + 2 * DAY, with_quantity(a, 4)))
    finally:
        await reader.aclose()
    assert (await books.statuses())["evt_old"] == "applied"
    assert await books.mrr() == 6 * 4_900
    assert [s.path for s in fake.requests] == ["/v1/subscriptions/sub_A"]
    assert {"discounts", "items.data.discounts", "items.data.price.tiers"} <= set(fake.requests[0].expand)


async def test_a_tiered_price_without_tiers_is_refetched_or_flagged(engine: AsyncEngine, fake: FakeStripe) -> None:
    o = subscriptions()["O_tiered_graduated"]
    bare = copy.deepcopy(o)
    del bare["items"]["data"][0]["price"]["tiers"]  # as webhooks carry it
    books = Books(engine)
    await books.post(event("evt_bare", "customer.subscription.created", FEB_1, bare))
    assert (await books.statuses())["evt_bare"] == "flagged"
    fake.put_subscription(o)
    reader = StripeReader(API_KEY, api_base=fake.url, max_network_retries=0)
    try:
        books = Books(engine, reader)
        await books.post(event("evt_bare_2", "customer.subscription.created", FEB_1 + 1, bare))
    finally:
        await reader.aclose()
    assert (await books.statuses())["evt_bare_2"] == "applied"
    assert await books.mrr() == 14_000
    # The tiers are kept: the next snapshot without them needs no fetch.
    books = Books(engine)
    await books.post(event("evt_bare_3", "customer.subscription.updated", FEB_1 + 2, with_quantity(bare, 20)))
    assert await books.mrr() == 10 * 1_000 + 10 * 800


async def test_past_due_grace_runs_out_with_time(engine: AsyncEngine) -> None:
    books = Books(engine, past_due_grace_days=30)
    i = subscriptions()["I_past_due"]
    failed = {"id": "in_I", "object": "invoice", "customer": "cus_I", "status": "open", "amount_due": 15_000,
              "amount_paid": 0, "total": 15_000, "created": int(FEB_1), "currency": "usd", "billing_reason": "subscription_cycle",
              "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_I"}}}  # fmt: skip
    await books.post(event("evt_sub", "customer.subscription.updated", FEB_1, i),
                     event("evt_fail", "invoice.payment_failed", FEB_1 + DAY, failed))  # fmt: skip
    assert await books.mrr("2026-02-02") == 15_000
    books.clock.advance(32 * DAY + 1)  # the grace ends 30 days after the failure: 2026-03-04
    await books.applier.apply_due()
    assert await books.mrr("2026-03-03") == 15_000
    assert await books.mrr("2026-03-04") == 0
    moved = await books.service.movements(dt.date(2026, 3, 1), dt.date(2026, 3, 31))
    assert [(m["customer"], m["kind"], m["amount_cents"], m["causes"]) for m in moved] == [
        ("cus_I", "churn", -15_000, ["schedule"])]
    paid = dict(failed, status="paid", amount_paid=15_000)
    await books.post(event("evt_paid", "invoice.paid", FEB_1 + 35 * DAY, paid),
                     event("evt_ok", "customer.subscription.updated", FEB_1 + 35 * DAY, dict(i, status="active")))  # fmt: skip
    assert await books.mrr("2026-03-31") == 15_000


async def test_a_customer_discount_applies_to_subscriptions_without_their_own(engine: AsyncEngine) -> None:
    books = Books(engine)
    a = subscriptions()["A_seats"]
    coupon = {"id": "HALF", "object": "coupon", "percent_off": 50.0, "duration": "forever", "amount_off": None}
    discount = {"id": "di_cus_A", "object": "discount", "customer": "cus_A", "subscription": None,
                "subscription_item": None, "start": int(FEB_1), "end": None,
                "source": {"type": "coupon", "coupon": coupon}}  # fmt: skip
    await books.post(event("evt_sub", "customer.subscription.created", FEB_1, a),
                     event("evt_disc", "customer.discount.created", FEB_1 + DAY, discount))  # fmt: skip
    assert await books.mrr() == 14_700 // 2
    await books.post(event("evt_undisc", "customer.discount.deleted", FEB_1 + 2 * DAY, discount))
    assert await books.mrr() == 14_700
    moved = await books.service.movements(dt.date(2026, 2, 1), dt.date(2026, 2, 28))
    assert [(m["kind"], m["amount_cents"]) for m in moved] == [("new", 14_700), ("contraction", -7_350),
                                                               ("expansion", 7_350)]  # fmt: skip


async def test_two_appliers_apply_one_event_once(engine: AsyncEngine) -> None:
    first, second = Books(engine), Books(engine)
    a = subscriptions()["A_seats"]
    e = event("evt_once", "customer.subscription.created", FEB_1, a)
    assert await first.store.record(e, FEB_1)
    assert not await second.store.record(e, FEB_1)  # a duplicate id changes nothing
    await asyncio.gather(first.applier.drain(), second.applier.drain())
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(sa.func.count()).select_from(mrr_ledger))).scalar()
    assert rows == 1
    assert await first.mrr() == 14_700


async def test_a_coupon_named_by_id_is_read_from_stripe_or_kept_from_its_event(engine: AsyncEngine,
                                                                                fake: FakeStripe) -> None:  # fmt: skip
    """Since API 2025-09-30.clover a discount names its coupon by id: postroom reads it once from
    Stripe (or keeps it from a coupon.* event) and values the discount with it."""
    f = copy.deepcopy(subscriptions()["F_percent_forever"])
    coupon = f["discounts"][0]["source"]["coupon"]
    f["discounts"][0]["source"]["coupon"] = coupon["id"]
    fake.put_subscription(subscriptions()["F_percent_forever"])
    books = Books(engine)
    await books.post(event("evt_f_1", "customer.subscription.created", FEB_1, f))
    assert (await books.statuses())["evt_f_1"] == "flagged"  # no API key, no coupon: flagged, not guessed
    reader = StripeReader(API_KEY, api_base=fake.url, max_network_retries=0)
    try:
        books = Books(engine, reader)
        await books.post(event("evt_f_2", "customer.subscription.updated", FEB_1 + 1, f))
    finally:
        await reader.aclose()
    assert (await books.statuses())["evt_f_2"] == "applied"
    assert await books.mrr() == 8_000
    assert [s.path for s in fake.requests] == ["/v1/coupons/FOREVER20"]
    half = {**coupon, "id": "HALF", "percent_off": 50.0}
    g = copy.deepcopy(f)
    g["id"], g["customer"] = "sub_F2", "cus_F2"
    g["discounts"][0] = {**g["discounts"][0], "id": "di_F2", "customer": "cus_F2", "source": {"type": "coupon",
                                                                                              "coupon": "HALF"}}  # fmt: skip
    books = Books(engine)
    await books.post(event("evt_coupon", "coupon.created", FEB_1 + 2, half),
                     event("evt_g", "customer.subscription.created", FEB_1 + 3, g))  # fmt: skip
    assert (await books.statuses())["evt_g"] == "applied"
    assert await books.mrr() == 8_000 + 5_000


async def test_a_reconciliation_read_before_an_event_does_not_undo_it(engine: AsyncEngine) -> None:
    """Stripe was read at T0; a cancellation created at T0+300 was applied before the read was
    stored: the older read never brings the subscription back."""
    books = Books(engine)
    a = subscriptions()["A_seats"]
    await books.post(event("evt_new", "customer.subscription.created", FEB_1, a))
    await books.post(event("evt_gone", "customer.subscription.deleted", FEB_1 + 300, dict(a, status="canceled")))
    await books.store.keep(subscriptions=[a], seen_at=FEB_1 + 100, now=FEB_1 + 400)
    drift = await books.store.settle(["cus_A"], FEB_1 + 400, FEB_1 + 400)
    assert drift == [] and await books.mrr() == 0


async def test_a_chunk_is_kept_and_settled_in_a_few_statements(engine: AsyncEngine) -> None:
    books = Books(engine)
    subs = list(subscriptions().values())
    customers = sorted({str(s["customer"]) for s in subs})
    statements = [0]

    def count(*_args: Any) -> None:
        statements[0] += 1

    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        await books.store.keep(subscriptions=subs, seen_at=FEB_1, now=FEB_1)
        opened = await books.store.settle(customers, FEB_1, FEB_1)
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
    # Per chunk, not per object: 15 subscriptions of 15 customers, ~20 statements each before.
    assert statements[0] <= 20
    assert {c.customer for c in opened} == set(customers) - {"cus_H", "cus_J", "cus_L"}  # trialing, unpaid, paused
    async with engine.begin() as conn:
        await conn.execute(mrr_positions.update().where(mrr_positions.c.customer == "cus_M")
                           .values(scheduled_churn_cents=1))  # fmt: skip
        await conn.execute(billing_subscriptions.update().where(billing_subscriptions.c.id == "sub_A")
                           .values(mrr="0"))  # fmt: skip
    assert await books.store.settle(customers, FEB_1 + DAY, FEB_1 + DAY) == []  # no drift in the holdings
    async with engine.connect() as conn:
        churn = (await conn.execute(sa.select(mrr_positions.c.scheduled_churn_cents)
                                    .where(mrr_positions.c.customer == "cus_M"))).scalar()  # fmt: skip
        value = (await conn.execute(sa.select(billing_subscriptions.c.mrr)
                                    .where(billing_subscriptions.c.id == "sub_A"))).scalar()  # fmt: skip
    assert churn == 8_000  # M's scheduled cancellation, rewritten though its MRR did not move
    assert value != "0"
