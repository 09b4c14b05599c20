"""The revenue exports (`postroom export KIND`, `GET /v1/exports/{kind}`): MRR movements as
`mrr movements` lists them, and the local copy of Stripe's subscriptions, customers and invoices."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.exports.model import DateRange, ExportKind, Row, RowSource, columns
from postroom.exports.sql_kinds import PAGE_SIZE, moment, nothing_more, paged, within
from postroom.mrr.service import MrrService
from postroom.store.tables import billing_customers, billing_invoices, billing_subscriptions, mrr_positions


MOVEMENT_COLUMNS = columns(
    ("occurred_at", "when the movement took effect (the date range filters on this)"),
    ("customer", "the Stripe customer id"),
    ("kind", "new, expansion, contraction, churn, reactivation or reconciliation"),
    ("amount_cents", "signed, in minor units of the reporting currency at the rate of its day"),
    ("currency", "the reporting currency"),
    ("native_amount_cents", "signed, in minor units of the customer's own currency"),
    ("native_currency", "the customer's currency"),
    ("event_ids", "the Stripe events it nets (a JSON list; empty for openings, schedule and reconciliation)"),
    ("causes", "what wrote its ledger changes: event, opening, schedule, reconciliation (a JSON list)"),
)


def movement_rows(service: MrrService) -> RowSource:
    """Movements are read per period (grouping and valuation need the whole period), so the range
    is taken in whole UTC days: from the day of `since` (default the ledger's first) to the day
    before `until` (default today); rows outside the exact range are left out."""

    async def rows(span: DateRange) -> AsyncIterator[Row]:
        first = (dt.datetime.fromtimestamp(span.since, dt.UTC).date() if span.since is not None
                 else await service.first_day())  # fmt: skip
        if first is None:
            return
        last = (dt.datetime.fromtimestamp(span.until, dt.UTC) - dt.timedelta(microseconds=1)).date() \
            if span.until is not None else dt.datetime.now(dt.UTC).date()
        if last < first:
            return
        for m in await service.movements(first, last):
            at = dt.datetime.fromisoformat(m["occurred_at"].replace("Z", "+00:00"))
            if span.contains(at.timestamp()):
                yield (at, m["customer"], m["kind"], m["amount_cents"], m["currency"], m["native_amount_cents"],
                       m["native_currency"], m["event_ids"], m["causes"])  # fmt: skip

    return rows


SUBSCRIPTION_COLUMNS = columns(
    ("id", "the Stripe subscription id"),
    ("customer", "the Stripe customer id"),
    ("status", "as Stripe last described it"),
    ("currency", "the subscription's currency"),
    ("mrr", "its monthly value in minor units of its currency, unrounded (customers are rounded once)"),
    ("scheduled_churn", "the value that leaves at the period end (cancellation scheduled, churn at end)"),
    ("items", "price, product, quantity, interval, interval_count, usage_type of each item (a JSON list)"),
    ("start_date", "Stripe's start_date (the date range filters on this)"),
    ("canceled_at", "when its cancellation was requested"),
    ("ended_at", "when it ended"),
    ("cancel_at_period_end", "true while it is set to end with its period"),
    ("dunning_since", "the first failed payment of its open invoice"),
    ("state_at", "the `created` of the newest Stripe state applied"),
)


def _items(snapshot: Any) -> list[dict[str, Any]]:
    out = []
    for item in (snapshot.get("items") or {}).get("data") or []:
        price = item.get("price") or {}
        recurring = price.get("recurring") or {}
        product = price.get("product")
        out.append({"price": price.get("id"), "product": product.get("id") if isinstance(product, dict) else product,
                    "quantity": item.get("quantity"), "interval": recurring.get("interval"),
                    "interval_count": recurring.get("interval_count"), "usage_type": recurring.get("usage_type")})  # fmt: skip
    return out


def subscription_rows(engine: AsyncEngine, page_size: int = PAGE_SIZE) -> RowSource:
    s = billing_subscriptions
    query = sa.select(s.c.id, s.c.customer, s.c.status, s.c.currency, s.c.mrr, s.c.scheduled_churn, s.c.snapshot,
                      s.c.start_date, s.c.canceled_at, s.c.ended_at, s.c.cancel_at_period_end, s.c.dunning_since,
                      s.c.last_event_created)  # fmt: skip

    async def rows(span: DateRange) -> AsyncIterator[Row]:
        async for page, _ in paged(engine, "reading subscriptions", page_size, query.where(*within(s.c.start_date, span)),
                                   s.c.id, "", nothing_more):  # fmt: skip
            for r in page:
                yield (r.id, r.customer, r.status, r.currency, Decimal(r.mrr), Decimal(r.scheduled_churn),
                       _items(r.snapshot), moment(r.start_date), moment(r.canceled_at), moment(r.ended_at),
                       bool(r.cancel_at_period_end), moment(r.dunning_since), moment(r.last_event_created))  # fmt: skip

    return rows


CUSTOMER_COLUMNS = columns(
    ("id", "the Stripe customer id"),
    ("email", "as Stripe has it"),
    ("name", "as Stripe has it"),
    ("currency", "the customer's currency"),
    ("mrr", "MRR now per currency in minor units (a JSON object; rounded once per customer)"),
    ("discount", "the coupon id of the customer-level discount"),
    ("deleted", "true once deleted in Stripe"),
    ("paid_before_at", "when a backfill found it had paid before the ledger began"),
    ("created", "Stripe's created (the date range filters on this)"),
)


async def _customer_mrr(conn: AsyncConnection, page: Sequence[Any]) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    query = sa.select(mrr_positions).where(mrr_positions.c.customer.in_([r.id for r in page]))
    for r in (await conn.execute(query)).all():
        if r.cents:
            found.setdefault(r.customer, {})[r.currency] = int(r.cents)
    return found


def _coupon(discount: Any) -> str | None:
    if not isinstance(discount, dict):
        return None
    source = discount.get("source") or {}
    coupon = source.get("coupon") if isinstance(source, dict) else None
    coupon = coupon or discount.get("coupon")
    return str(coupon.get("id")) if isinstance(coupon, dict) else None


def customer_rows(engine: AsyncEngine, page_size: int = PAGE_SIZE) -> RowSource:
    c = billing_customers
    query = sa.select(c.c.id, c.c.email, c.c.name, c.c.currency, c.c.discount, c.c.deleted, c.c.paid_before_at,
                      c.c.created)  # fmt: skip

    async def rows(span: DateRange) -> AsyncIterator[Row]:
        async for page, mrr in paged(engine, "reading customers", page_size, query.where(*within(c.c.created, span)),
                                     c.c.id, "", _customer_mrr):  # fmt: skip
            for r in page:
                yield (r.id, r.email, r.name, r.currency, mrr.get(r.id, {}), _coupon(r.discount), bool(r.deleted),
                       moment(r.paid_before_at), moment(r.created))  # fmt: skip

    return rows


INVOICE_COLUMNS = columns(
    ("id", "the Stripe invoice id"),
    ("customer", "the Stripe customer id"),
    ("subscription", "the subscription it bills (empty: none)"),
    ("status", "draft, open, paid, uncollectible, void"),
    ("billing_reason", "subscription_create, subscription_cycle, manual, ..."),
    ("currency", "the invoice's currency"),
    ("amount_due", "minor units"),
    ("amount_paid", "minor units"),
    ("total", "minor units"),
    ("attempt_count", "payment attempts"),
    ("created", "Stripe's created (the date range filters on this)"),
    ("paid_at", "when it was paid"),
    ("failed_at", "when its last payment failed"),
)


def invoice_rows(engine: AsyncEngine, page_size: int = PAGE_SIZE) -> RowSource:
    i = billing_invoices
    query = sa.select(i.c.id, i.c.customer, i.c.subscription, i.c.status, i.c.billing_reason, i.c.currency,
                      i.c.amount_due, i.c.amount_paid, i.c.total, i.c.attempt_count, i.c.created, i.c.paid_at,
                      i.c.failed_at)  # fmt: skip

    async def rows(span: DateRange) -> AsyncIterator[Row]:
        async for page, _ in paged(engine, "reading invoices", page_size, query.where(*within(i.c.created, span)),
                                   i.c.id, "", nothing_more):  # fmt: skip
            for r in page:
                yield (r.id, r.customer, r.subscription, r.status, r.billing_reason, r.currency, int(r.amount_due),
                       int(r.amount_paid), int(r.total), int(r.attempt_count), moment(r.created), moment(r.paid_at),
                       moment(r.failed_at))  # fmt: skip

    return rows


def revenue_kinds(engine: AsyncEngine, service: MrrService, page_size: int = PAGE_SIZE) -> list[ExportKind]:
    return [
        ExportKind("mrr-movements", "MRR movements with the events that caused them, as `mrr movements` lists them",
                   MOVEMENT_COLUMNS, "occurred_at", movement_rows(service)),
        ExportKind("subscriptions", "Stripe subscriptions as postroom holds them, with their monthly value",
                   SUBSCRIPTION_COLUMNS, "start_date", subscription_rows(engine, page_size)),
        ExportKind("customers", "Stripe customers with their MRR now", CUSTOMER_COLUMNS, "created",
                   customer_rows(engine, page_size)),
        ExportKind("invoices", "Stripe invoices as postroom holds them (amounts, status, dunning)",
                   INVOICE_COLUMNS, "created", invoice_rows(engine, page_size)),
    ]  # fmt: skip
