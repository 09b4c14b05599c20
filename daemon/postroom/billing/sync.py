"""Backfill and reconcile: read everything from Stripe's API and bring the local state and the
MRR ledger to it. The backfill dates each customer's opening at its subscriptions' start dates;
afterwards the same pass records any difference as a `reconciliation` change (MRR.md 1.3.6)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from postroom.billing.objects import PaidEvidence
from postroom.billing.store import SqlBillingStore
from postroom.mrr.movements import Cause, Change

logger = logging.getLogger(__name__)

Json = Mapping[str, Any]
CHUNK = 500  # objects stored per transaction; customers settled per transaction


class StripeSource(Protocol):
    def coupons(self) -> AsyncIterator[dict[str, Any]]: ...
    async def coupon(self, coupon_id: str) -> dict[str, Any]: ...
    async def price(self, price_id: str) -> dict[str, Any]: ...
    def customers(self) -> AsyncIterator[dict[str, Any]]: ...
    def invoices(self, since: int | None = None) -> AsyncIterator[dict[str, Any]]: ...
    def subscriptions(self) -> AsyncIterator[dict[str, Any]]: ...
    async def subscription(self, subscription_id: str) -> dict[str, Any]: ...


Progress = Callable[[str, int], None]  # (stage, objects so far)


def no_progress(stage: str, count: int) -> None:
    return None


@dataclass
class SyncSummary:
    customers: int = 0
    subscriptions: int = 0
    invoices: int = 0
    opened: int = 0  # customers whose history the ledger opened (backfill)
    drift: list[Change] = field(default_factory=list)  # reconciliation changes

    def as_json(self) -> dict[str, Any]:
        return {"customers": self.customers, "subscriptions": self.subscriptions, "invoices": self.invoices,
                "opened_customers": self.opened,
                "drift": [{"customer": c.customer, "currency": c.currency, "before_cents": c.before.cents,
                           "after_cents": c.after.cents, "delta_cents": c.after.cents - c.before.cents}
                          for c in self.drift]}  # fmt: skip


async def synchronise(reader: StripeSource, store: SqlBillingStore, now: float,
                      progress: Progress = no_progress, invoices_since: int | None = None) -> SyncSummary:  # fmt: skip
    """Read customers, subscriptions (all statuses) and invoices and settle every customer seen.
    Objects are stored as of `now`: an event created before it is older than what was read."""
    summary = SyncSummary()
    evidence = PaidEvidence()
    touched: dict[str, None] = {}
    batch: list[dict[str, Any]] = []

    async def flush(kind: str) -> None:
        if batch:
            await store.keep(**{kind: list(batch)}, seen_at=now, now=now)
            batch.clear()

    # Coupons first: discounts name them by id (API 2025-09-30.clover and later).
    coupons = [coupon async for coupon in reader.coupons()]
    await store.keep_coupons(coupons, now)
    progress("coupons", len(coupons))
    async for customer in reader.customers():
        batch.append(customer)
        touched[str(customer["id"])] = None
        summary.customers += 1
        if len(batch) >= CHUNK:
            await flush("customers")
            progress("customers", summary.customers)
    await flush("customers")
    async for subscription in reader.subscriptions():
        batch.append(subscription)
        evidence.see_subscription(subscription)
        owner = subscription.get("customer")
        touched[str(owner.get("id") if isinstance(owner, Mapping) else owner)] = None
        summary.subscriptions += 1
        if len(batch) >= CHUNK:
            await flush("subscriptions")
            progress("subscriptions", summary.subscriptions)
    await flush("subscriptions")
    # After the subscriptions: an invoice's tax-inclusive shares are kept on its subscription.
    async for invoice in reader.invoices(invoices_since):
        batch.append(invoice)
        evidence.see_invoice(invoice)
        summary.invoices += 1
        if len(batch) >= CHUNK:
            await flush("invoices")
            progress("invoices", summary.invoices)
    await flush("invoices")
    # Listings cannot expand a price's tiers (Stripe expands four levels at most): read each
    # tiered price postroom has no tiers of.
    prices = [await reader.price(price_id) for price_id in await store.tiered_prices_missing()]
    await store.keep_prices(prices, now)
    names = list(touched)
    for start in range(0, len(names), CHUNK):
        changes = await store.settle(names[start:start + CHUNK], now, now, evidence.customers)
        summary.opened += len({c.customer for c in changes if c.cause is Cause.OPENING})
        summary.drift += [c for c in changes if c.cause is Cause.RECONCILIATION]
        progress("customers settled", min(start + CHUNK, len(names)))
    drift: dict[str, int] = {}
    for change in summary.drift:
        drift[change.currency] = drift.get(change.currency, 0) + change.after.cents - change.before.cents
    await store.record_sync(now, summary.subscriptions, summary.opened, drift)
    for change in summary.drift:
        logger.warning("MRR reconciliation: customer %s %s %d -> %d (%+d)", change.customer, change.currency.upper(),
                       change.before.cents, change.after.cents, change.after.cents - change.before.cents)  # fmt: skip
    return summary
