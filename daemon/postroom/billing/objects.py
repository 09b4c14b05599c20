"""Reading Stripe's objects as they come (webhook snapshots, API answers), pure: ids, timestamps,
what makes a subscription one postroom can value, an invoice's subscription and tax-inclusive net
shares, and what tells a backfill a customer paid before."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from postroom.mrr.valuation import Malformed

Json = Mapping[str, Any]


def id_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def timestamp(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def checked_subscription(obj: Json) -> tuple[str, str]:
    sub_id, customer = id_of(obj), id_of(obj.get("customer"))
    if not sub_id or obj.get("object") not in (None, "subscription"):
        raise Malformed("the event's object is not a subscription")
    if not customer:
        raise Malformed(f"subscription {sub_id} names no customer")
    if not isinstance(obj.get("status"), str) or not isinstance(obj.get("currency"), str):
        raise Malformed(f"subscription {sub_id} has no status or currency")
    items = obj.get("items")
    if not isinstance(items, Mapping) or not isinstance(items.get("data"), list):
        raise Malformed(f"subscription {sub_id} has no items list")
    for item in items["data"]:
        if not isinstance(item, Mapping) or not isinstance(item.get("price"), Mapping):
            raise Malformed(f"subscription {sub_id} has an item without a price object")
    return sub_id, customer


def invoice_subscription(invoice: Json) -> str | None:
    parent = invoice.get("parent")
    if isinstance(parent, Mapping):
        details = parent.get("subscription_details")
        if isinstance(details, Mapping):
            return id_of(details.get("subscription"))
    return id_of(invoice.get("subscription"))  # API versions before basil


def net_shares(invoice: Json) -> dict[str, str]:
    """Net / gross of each tax-inclusive subscription item on an invoice's lines (MRR.md S-4)."""
    shares: dict[str, str] = {}
    lines = invoice.get("lines")
    for line in (lines.get("data") if isinstance(lines, Mapping) else None) or []:
        taxes = [t for t in line.get("taxes") or [] if t.get("tax_behavior") == "inclusive"]
        parent = line.get("parent") or {}
        details = parent.get("subscription_item_details") if isinstance(parent, Mapping) else None
        item = id_of(details.get("subscription_item")) if isinstance(details, Mapping) else None
        amount = line.get("amount")
        if taxes and item and isinstance(amount, int) and amount > 0:
            taxable = sum(int(t.get("taxable_amount") or 0) for t in taxes)
            shares[item] = str(Decimal(taxable) / Decimal(amount))
    return shares


@dataclass
class PaidEvidence:
    """What tells a backfill a customer paid before the ledger began: a subscription in a status
    reached only after paying (past_due, unpaid), a canceled one that outlived its trial, or a
    paid invoice with money in it."""

    customers: set[str] = field(default_factory=set)

    def see_subscription(self, sub: Json) -> None:
        status, customer = sub.get("status"), id_of(sub.get("customer"))
        if not customer:
            return
        trial_end, ended = timestamp(sub.get("trial_end")), timestamp(sub.get("ended_at"))
        if status in ("past_due", "unpaid", "active") or (
                status == "canceled" and ended is not None and (trial_end is None or ended > trial_end)):  # fmt: skip
            self.customers.add(customer)

    def see_invoice(self, invoice: Json) -> None:
        customer = id_of(invoice.get("customer"))
        if customer and invoice.get("status") == "paid" and int(invoice.get("amount_paid") or 0) > 0:
            self.customers.add(customer)
