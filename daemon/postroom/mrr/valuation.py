"""What one subscription is worth per month, in its own currency, at a moment (MRR.md S-1..S-6).

Input is the subscription as Stripe sends it (a snapshot: webhook payload or API object), plus what
a snapshot may only reference: discount objects by id, prices with their tiers, the net share of
tax-inclusive items from the latest invoice, and when dunning began. The result is unrounded:
rounding happens once per customer (`round_minor` over the customer's sum).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from postroom.mrr.policies import ChurnRecognition, DiscountPolicy, PausePolicy, Policies

COUNTING_STATUSES = frozenset({"active", "past_due"})
ZERO = Decimal(0)

Json = Mapping[str, Any]


class Malformed(ValueError):
    """The object is not a subscription postroom can value (a field missing or of the wrong type)."""


class NeedsExpansion(LookupError):
    """The snapshot references something it does not carry (a discount id, a tiered price without
    tiers, a coupon id) and postroom has no local copy: re-fetch it. `coupon` names a coupon to
    fetch (Stripe stopped expanding a discount's coupon in API version 2025-09-30.clover)."""

    def __init__(self, message: str, coupon: str | None = None):
        super().__init__(message)
        self.coupon = coupon


@dataclass(frozen=True)
class Context:
    """What a snapshot can reference but not carry."""

    discounts: Mapping[str, Json] = field(default_factory=dict)  # discount id -> Discount object
    prices: Mapping[str, Json] = field(default_factory=dict)  # price id -> Price with tiers
    customer_discount: Json | None = None  # Customer.discount, for subscriptions with none of their own
    net_shares: Mapping[str, Decimal] = field(default_factory=dict)  # item id -> net / gross, tax inclusive
    dunning_since: dt.datetime | None = None  # first failed payment of the open invoice
    coupons: Mapping[str, Json] = field(default_factory=dict)  # coupon id -> Coupon


@dataclass(frozen=True)
class Value:
    """A subscription's monthly value in `currency` (unrounded minor units)."""

    currency: str
    mrr: Decimal
    counting: bool  # its status counts (before discounts): a 0 here with counting=True is free
    scheduled_churn: Decimal = ZERO  # value that leaves at the period end (churn_recognition=at_end)
    reason: str = ""  # why it is 0, when it is


def factor(interval: str, count: int, policies: Policies) -> Decimal:
    """Monthly normalisation of `count` `interval`s (S-3)."""
    if count < 1:
        raise Malformed(f"interval_count {count} is not a positive whole number")
    per_interval = {"month": Decimal(1), "year": Decimal(1) / Decimal(12),
                    "week": policies.week_factor, "day": policies.day_factor}  # fmt: skip
    if interval not in per_interval:
        raise Malformed(f"unknown recurring interval {interval!r}")
    return per_interval[interval] / Decimal(count)


def _decimal(amount: Any, decimal_text: Any) -> Decimal:
    if decimal_text is not None:
        return Decimal(str(decimal_text))
    return Decimal(int(amount)) if amount is not None else ZERO


def _quantity(item: Json, price: Json) -> int:
    raw = item.get("quantity")
    quantity = 1 if raw is None else int(raw)
    if quantity < 0:
        raise Malformed(f"item {item.get('id')} has a negative quantity")
    transform = price.get("transform_quantity")
    if transform:
        divided = Decimal(quantity) / Decimal(int(transform["divide_by"]))
        quantity = math.ceil(divided) if transform.get("round") == "up" else math.floor(divided)
    return quantity


def _tiered(price: Json, quantity: int, context: Context) -> Decimal:
    tiers = price.get("tiers") or context.prices.get(str(price.get("id")), {}).get("tiers")
    if not tiers:
        raise NeedsExpansion(f"price {price.get('id')} is tiered but its tiers were not expanded")
    if price.get("tiers_mode") == "volume":
        for tier in tiers:
            if tier.get("up_to") is None or quantity <= int(tier["up_to"]):
                flat = _decimal(tier.get("flat_amount"), tier.get("flat_amount_decimal"))
                return flat + _decimal(tier.get("unit_amount"), tier.get("unit_amount_decimal")) * quantity
        return ZERO
    total, lower = ZERO, 0
    for tier in tiers:  # graduated: each tier prices the units that fall in it
        upper = quantity if tier.get("up_to") is None else min(quantity, int(tier["up_to"]))
        units = upper - lower
        if units > 0:
            total += _decimal(tier.get("flat_amount"), tier.get("flat_amount_decimal"))
            total += _decimal(tier.get("unit_amount"), tier.get("unit_amount_decimal")) * units
        if tier.get("up_to") is None or quantity <= int(tier["up_to"]):
            break
        lower = int(tier["up_to"])
    return total


def _inclusive_share(item: Json, price: Json, subscription: Json, context: Context) -> Decimal:
    """Net share of a tax-inclusive price (S-4): from the latest invoice's line, else the rate."""
    if price.get("tax_behavior") != "inclusive":
        return Decimal(1)
    if str(item.get("id")) in context.net_shares:
        return context.net_shares[str(item["id"])]
    rates = [r for r in (item.get("tax_rates") or subscription.get("default_tax_rates") or [])
             if isinstance(r, Mapping) and r.get("inclusive")]  # fmt: skip
    percent = sum((Decimal(str(r.get("percentage") or 0)) for r in rates), ZERO)
    return Decimal(1) / (1 + percent / 100)


def item_value(item: Json, subscription: Json, context: Context, policies: Policies) -> Decimal:
    """One item's monthly value before discounts (S-2..S-4). Metered prices are worth 0."""
    price = item.get("price")
    if not isinstance(price, Mapping):
        raise Malformed(f"item {item.get('id')} has no price object")
    recurring = price.get("recurring")
    if not isinstance(recurring, Mapping):
        return ZERO  # one-off or pay-what-you-want prices are not recurring revenue
    if recurring.get("usage_type") == "metered":
        return ZERO
    quantity = _quantity(item, price)
    if price.get("billing_scheme") == "tiered":
        amount = _tiered(price, quantity, context)
    else:
        amount = _decimal(price.get("unit_amount"), price.get("unit_amount_decimal")) * quantity
    monthly = amount * factor(str(recurring.get("interval")), int(recurring.get("interval_count") or 1), policies)
    return monthly * _inclusive_share(item, price, subscription, context)


def _discount(ref: Any, context: Context) -> Json:
    if isinstance(ref, Mapping):
        return ref
    if isinstance(ref, str) and ref in context.discounts:
        return context.discounts[ref]
    raise NeedsExpansion(f"discount {ref} is referenced but not known")


def _coupon(discount: Json, context: Context) -> Json:
    """The discount's coupon: carried in it (API versions before clover, the fixtures), or by id
    from the local copy of coupons."""
    source = discount.get("source")
    coupon = source.get("coupon") if isinstance(source, Mapping) else discount.get("coupon")
    if isinstance(coupon, str):
        if coupon in context.coupons:
            return context.coupons[coupon]
        raise NeedsExpansion(f"discount {discount.get('id')} names coupon {coupon}, which is not known", coupon)
    if not isinstance(coupon, Mapping):
        raise NeedsExpansion(f"discount {discount.get('id')} carries no coupon")
    return coupon


def discount_applies(discount: Json, at: dt.datetime, policies: Policies, context: Context | None = None) -> bool:
    """Whether a discount reduces MRR at `at` (S-5): forever coupons always; once and repeating
    ones only under `all_active`, between the discount's start and end."""
    coupon = _coupon(discount, context or Context())
    if coupon.get("duration") == "forever":
        return discount.get("end") is None or int(discount["end"]) > at.timestamp()
    if policies.discounts is not DiscountPolicy.ALL_ACTIVE:
        return False
    start, end = discount.get("start"), discount.get("end")
    return (start is None or int(start) <= at.timestamp()) and (end is None or int(end) > at.timestamp())


def _applies_to(coupon: Json, item: Json) -> bool:
    applies = coupon.get("applies_to")
    products = applies.get("products") if isinstance(applies, Mapping) else None
    if not products:
        return True
    price = item.get("price")
    product = price.get("product") if isinstance(price, Mapping) else None
    product_id = product.get("id") if isinstance(product, Mapping) else product
    return product_id in products


def _reduce(values: list[Decimal], chosen: Sequence[int], coupon: Json, currency: str,
            month_factor: Decimal) -> None:  # fmt: skip
    """Apply one coupon to the chosen items of `values`, in place, never below 0."""
    if coupon.get("percent_off") is not None:
        keep = 1 - Decimal(str(coupon["percent_off"])) / 100
        for i in chosen:
            values[i] = max(ZERO, values[i] * keep)
        return
    amount_off = coupon.get("amount_off")
    if str(coupon.get("currency") or currency).lower() != currency:
        options = coupon.get("currency_options") or {}
        option = options.get(currency) if isinstance(options, Mapping) else None
        amount_off = option.get("amount_off") if isinstance(option, Mapping) else None
    if amount_off is None:
        return  # an amount in another currency without a price for this one: Stripe would refuse it
    subtotal = sum((values[i] for i in chosen), ZERO)
    if subtotal <= 0:
        return
    off = min(subtotal, Decimal(int(amount_off)) * month_factor)
    for i in chosen:  # spread in proportion, so the items' sum falls by exactly `off`
        values[i] -= values[i] * off / subtotal


def value(subscription: Json, at: dt.datetime, context: Context, policies: Policies) -> Value:
    """The subscription's MRR at `at` under `policies` (S-1..S-6)."""
    try:
        currency = str(subscription["currency"]).lower()
        status = str(subscription["status"])
        items = list(subscription["items"]["data"])
    except (KeyError, TypeError) as exc:
        raise Malformed(f"subscription {subscription.get('id')}: missing {exc}") from None
    counting = status in COUNTING_STATUSES
    reason = "" if counting else f"status {status}"
    if counting and subscription.get("pause_collection") and policies.pause is PausePolicy.ZERO:
        counting, reason = False, "collection paused"
    if counting and status == "past_due" and policies.past_due_grace_days is not None and context.dunning_since:
        if at >= context.dunning_since + dt.timedelta(days=policies.past_due_grace_days):
            counting, reason = False, f"past_due over {policies.past_due_grace_days} days"
    scheduled = bool(subscription.get("cancel_at_period_end") or subscription.get("cancel_at"))
    if counting and scheduled and policies.churn_recognition is ChurnRecognition.AT_REQUEST:
        counting, reason = False, "cancellation requested"
    if not counting:
        return Value(currency, ZERO, False, reason=reason)

    values = [item_value(item, subscription, context, policies) for item in items]
    gross = sum(values, ZERO)
    licensed = [item for item in items if (item.get("price") or {}).get("recurring")]
    recurring: Json = licensed[0]["price"]["recurring"] if licensed else {"interval": "month", "interval_count": 1}
    month_factor = factor(str(recurring.get("interval")), int(recurring.get("interval_count") or 1), policies)
    for i, item in enumerate(items):
        for ref in item.get("discounts") or []:
            discount = _discount(ref, context)
            if discount_applies(discount, at, policies, context):
                _reduce(values, [i], _coupon(discount, context), currency, month_factor)
    own = [_discount(ref, context) for ref in subscription.get("discounts") or []]
    customer = context.customer_discount
    for discount in own or ([customer] if customer and not customer.get("subscription") else []):
        if discount_applies(discount, at, policies, context):
            coupon = _coupon(discount, context)
            chosen = [i for i, item in enumerate(items) if _applies_to(coupon, item)]
            _reduce(values, chosen, coupon, currency, month_factor)
    total = sum(values, ZERO)
    scheduled_churn = total if scheduled else ZERO
    if gross <= 0:  # nothing licensed (metered only): not a free customer, just no recurring revenue
        return Value(currency, ZERO, False, reason="no licensed items")
    return Value(currency, total, True, scheduled_churn, "" if total else "discounted to 0")


def next_change(subscription: Json, after: dt.datetime, context: Context, policies: Policies) -> dt.datetime | None:
    """The next moment the value changes with no event from Stripe: a discount ending (under
    `all_active`, or a forever discount with an end) or the past_due grace running out."""
    moments: list[dt.datetime] = []
    refs = list(subscription.get("discounts") or [])
    for item in (subscription.get("items") or {}).get("data") or []:
        refs.extend(item.get("discounts") or [])
    if context.customer_discount:
        refs.append(context.customer_discount)
    for ref in refs:
        try:
            discount = _discount(ref, context)
        except NeedsExpansion:
            continue
        for edge in (discount.get("start"), discount.get("end")):
            if edge is not None:
                moments.append(dt.datetime.fromtimestamp(int(edge), dt.UTC))
    if subscription.get("status") == "past_due" and policies.past_due_grace_days is not None and context.dunning_since:
        moments.append(context.dunning_since + dt.timedelta(days=policies.past_due_grace_days))
    later = [m for m in moments if m > after]
    return min(later) if later else None
