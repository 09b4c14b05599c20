"""Deterministic generated Stripe objects for the fake and the 100,000-subscription benchmark.

`generate_subscriptions(n, seed)` returns customers and subscriptions in Stripe's current (basil+)
shapes, fully expanded (Discount objects with `source.coupon`, tiered prices with `tiers`): intervals
month x {1,3,6,12}, week and day x {1,3,6,12}, year x 1 (Stripe allows at most one year); usd, eur and
jpy (zero-decimal); quantities 1..50; ~4% tiered (volume or graduated) items, ~6% with an extra
metered item, ~10% with a subscription discount and ~2% with an item discount; every status. The
same (n, seed) always gives the same objects. Prices are shallow copies of a shared catalogue: their
nested parts (`recurring`, `tiers`) are shared, so replace them rather than change them in place."""

from __future__ import annotations

import gc
import random
from typing import Any

T0 = 1767225600  # 2026-01-01T00:00Z, the scenario clock of the realistic fixtures
_SECONDS = {"day": 86400, "week": 7 * 86400, "month": 2629746, "year": 31556952}
_INTERVALS = [(unit, count) for unit in ("month", "week", "day") for count in (1, 3, 6, 12)] + [("year", 1)]
_INTERVAL_WEIGHTS = [50, 10, 6, 8, 3, 1, 1, 1, 2, 1, 1, 1, 20]
_CURRENCIES = ["usd", "eur", "jpy"]
_CURRENCY_WEIGHTS = [70, 22, 8]
_STATUSES = ["active", "trialing", "past_due", "canceled", "unpaid", "incomplete", "incomplete_expired", "paused"]
_STATUS_WEIGHTS = [70, 8, 5, 10, 2, 2, 1, 2]
_AMOUNTS = {"usd": [500, 900, 1900, 2900, 4900, 9900, 19900], "eur": [500, 900, 1900, 2900, 4900, 9900],
            "jpy": [500, 1000, 3000, 5000, 10000]}  # fmt: skip


def customer_for(customer_id: str, created: int) -> dict[str, Any]:
    """A Customer object (shape of Stripe's openapi fixture) for a subscription's customer id."""
    return {
        "address": None, "balance": 0, "created": created, "currency": None, "default_source": None,
        "delinquent": False, "description": None, "discount": None, "email": f"{customer_id}@example.test",
        "id": customer_id, "invoice_prefix": customer_id.upper()[-8:],
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                             "rendering_options": None},
        "livemode": False, "metadata": {}, "name": None, "next_invoice_sequence": 1, "object": "customer",
        "phone": None, "preferred_locales": [], "shipping": None, "tax_exempt": "none", "test_clock": None,
    }  # fmt: skip


def _price(price_id: str, currency: str, interval: str, count: int, *, unit: int | None, usage: str = "licensed",
           decimal: str | None = None, tiers: list[dict[str, Any]] | None = None,
           tiers_mode: str | None = None) -> dict[str, Any]:  # fmt: skip
    price: dict[str, Any] = {
        "active": True, "billing_scheme": "tiered" if tiers else "per_unit", "created": T0 - 400 * 86400,
        "currency": currency, "custom_unit_amount": None, "id": price_id, "livemode": False, "lookup_key": None,
        "metadata": {}, "nickname": None, "object": "price", "product": f"prod_{usage}",
        "recurring": {"interval": interval, "interval_count": count, "meter": None, "trial_period_days": None,
                      "usage_type": usage},
        "tax_behavior": "exclusive", "tiers_mode": tiers_mode, "transform_quantity": None, "type": "recurring",
        "unit_amount": unit,
        "unit_amount_decimal": decimal if decimal is not None else (None if unit is None else str(unit)),
    }  # fmt: skip
    if tiers:
        price["tiers"] = tiers
    return price


def _tiers() -> list[dict[str, Any]]:
    rows = [(10, 1000, None), (50, 800, None), (None, 600, 5000)]  # minor units; plausible in yen too
    return [{"flat_amount": flat, "flat_amount_decimal": None if flat is None else str(flat), "unit_amount": unit,
             "unit_amount_decimal": str(unit), "up_to": up_to} for up_to, unit, flat in rows]  # fmt: skip


def _catalogue() -> dict[tuple[str, str, int], dict[str, list[dict[str, Any]]]]:
    prices: dict[tuple[str, str, int], dict[str, list[dict[str, Any]]]] = {}
    for currency in _CURRENCIES:
        for unit_name, count in _INTERVALS:
            key = (currency, unit_name, count)
            tag = f"{currency}_{unit_name}{count}"
            prices[key] = {
                "flat": [_price(f"price_{tag}_{a}", currency, unit_name, count, unit=a) for a in _AMOUNTS[currency]],
                "tiered": [_price(f"price_{tag}_{mode}", currency, unit_name, count, unit=None,
                                  tiers=_tiers(), tiers_mode=mode) for mode in ("volume", "graduated")],
                "metered": [_price(f"price_{tag}_metered", currency, unit_name, count, unit=None, usage="metered",
                                   decimal="0.25")],
            }  # fmt: skip
    return prices


def _discount(discount_id: str, customer: str, subscription: str, start: int, currency: str, percent: bool,
              item: str | None = None) -> dict[str, Any]:  # fmt: skip
    coupon: dict[str, Any]
    if percent:
        coupon = {"amount_off": None, "currency": None, "duration": "forever", "duration_in_months": None,
                  "id": "PCT20", "name": "PCT20", "percent_off": 20.0}  # fmt: skip
        end = None
    else:
        amount = 1000  # minor units: $10, 10 EUR, 1000 JPY
        coupon = {"amount_off": amount, "currency": currency, "duration": "repeating", "duration_in_months": 3,
                  "id": f"OFF{amount}{currency.upper()}", "name": "three months off", "percent_off": None}  # fmt: skip
        end = start + 3 * _SECONDS["month"]
    coupon.update({"created": T0 - 500 * 86400, "livemode": False, "max_redemptions": None, "metadata": {},
                   "object": "coupon", "redeem_by": None, "times_redeemed": 1, "valid": True})  # fmt: skip
    return {"checkout_session": None, "customer": customer, "customer_account": None, "end": end, "id": discount_id,
            "invoice": None, "invoice_item": None, "object": "discount", "promotion_code": None,
            "source": {"coupon": coupon, "type": "coupon"}, "start": start, "subscription": subscription,
            "subscription_item": item}  # fmt: skip


def generate_subscriptions(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(customers, subscriptions): `n` subscriptions over about 0.9 n customers."""
    # The objects are acyclic; without this the cyclic collector rescans them and takes most of the time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _generate(n, seed)
    finally:
        if collecting:
            gc.enable()


def _generate(n: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    catalogue = _catalogue()
    intervals = rng.choices(_INTERVALS, _INTERVAL_WEIGHTS, k=n)
    currencies = rng.choices(_CURRENCIES, _CURRENCY_WEIGHTS, k=n)
    statuses = rng.choices(_STATUSES, _STATUS_WEIGHTS, k=n)
    customers: list[dict[str, Any]] = []
    subscriptions: list[dict[str, Any]] = []
    customer = ""
    for i in range(n):
        sub_id = f"sub_g{seed}x{i:07d}"
        created = T0 - rng.randrange(3 * 365 * 86400)
        if not customer or rng.random() >= 0.1:  # one in ten customers has a second subscription
            customer = f"cus_g{seed}x{i:07d}"
            customers.append(customer_for(customer, created))
        currency, (unit_name, count), status = currencies[i], intervals[i], statuses[i]
        prices = catalogue[(currency, unit_name, count)]
        length = _SECONDS[unit_name] * count
        period_start = T0 - rng.randrange(length)
        roll = rng.random()
        price = dict(rng.choice(prices["tiered"] if roll < 0.04 else prices["flat"]))
        items = [_item(f"si_g{seed}x{i:07d}a", sub_id, created, period_start, length, price, rng.randint(1, 50))]
        if rng.random() < 0.06:
            items.append(_item(f"si_g{seed}x{i:07d}b", sub_id, created, period_start, length,
                               dict(prices["metered"][0]), None))  # fmt: skip
        if rng.random() < 0.02:
            items[0]["discounts"] = [_discount(f"di_g{seed}x{i:07d}i", customer, sub_id, created, currency, True,
                                               items[0]["id"])]  # fmt: skip
        discounts = []
        if rng.random() < 0.10:
            discounts = [_discount(f"di_g{seed}x{i:07d}", customer, sub_id, created, currency, rng.random() < 0.5)]
        ended = status in ("canceled", "incomplete_expired")
        trialing = status == "trialing"
        subscriptions.append({
            "application": None, "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": created, "billing_cycle_anchor_config": None, "billing_mode": {"type": "flexible"},
            "billing_thresholds": None, "cancel_at": None,
            "cancel_at_period_end": status == "active" and rng.random() < 0.03,
            "canceled_at": period_start if ended else None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically", "created": created, "currency": currency,
            "customer": customer, "days_until_due": None, "default_payment_method": "pm_card_visa",
            "default_source": None, "default_tax_rates": [], "description": None, "discounts": discounts,
            "ended_at": period_start if ended else None, "id": sub_id,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "items": {"data": items, "has_more": False, "object": "list", "total_count": len(items),
                      "url": f"/v1/subscription_items?subscription={sub_id}"},
            "latest_invoice": f"in_g{seed}x{i:07d}", "livemode": False, "metadata": {},
            "next_pending_invoice_item_invoice": None, "object": "subscription", "on_behalf_of": None,
            "pause_collection": {"behavior": "void", "resumes_at": None}
            if status == "active" and rng.random() < 0.01 else None,
            "payment_settings": {"payment_method_options": None, "payment_method_types": None,
                                 "save_default_payment_method": "off"},
            "pending_invoice_item_interval": None, "pending_setup_intent": None, "pending_update": None,
            "schedule": None, "start_date": created, "status": status, "test_clock": None, "transfer_data": None,
            "trial_end": period_start + 14 * 86400 if trialing else None,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": period_start if trialing else None,
        })  # fmt: skip
    return customers, subscriptions


def _item(item_id: str, sub_id: str, created: int, period_start: int, length: int, price: dict[str, Any],
          quantity: int | None) -> dict[str, Any]:  # fmt: skip
    item: dict[str, Any] = {
        "billing_thresholds": None, "created": created, "current_period_end": period_start + length,
        "current_period_start": period_start, "discounts": [], "id": item_id, "metadata": {},
        "object": "subscription_item", "price": price, "subscription": sub_id, "tax_rates": [],
    }  # fmt: skip
    if quantity is not None:  # metered items carry no quantity
        item["quantity"] = quantity
    return item
