"""MRR.md section 1.6: the test matrix over the pure engine, on small Stripe-shaped subscriptions
(the shapes of shared/data/stripe/realistic/subscriptions). Expected figures are worked by hand
from the spec's constants, never by asking the engine. Duplicate and out-of-order events are the
billing store's concern and are tested there."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from postroom.mrr.money import FxTable, UnknownRate, exponent
from postroom.mrr.movements import Cause, Change, Holding, Kind, Movement, customer_movements, holdings, snapshot
from postroom.mrr.policies import ChurnRecognition, DiscountPolicy, FreeCustomer, PausePolicy, Policies
from postroom.mrr.revalue import Held, Position, revalue
from postroom.mrr.valuation import Context, NeedsExpansion, next_change, value

Json = dict[str, Any]

AT = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
T = int(AT.timestamp())
DAY = 86_400
FX = FxTable.of("usd", {"eur": Decimal("1.08"), "jpy": Decimal("0.0067")})


# -- builders: the Stripe shapes the fixtures use ---------------------------------------------


def price(amount: int | str = 10_000, *, interval: str = "month", count: int = 1, usage: str = "licensed",
          tiers: list[Json] | None = None, mode: str | None = None, transform: Json | None = None,
          tax: str = "exclusive", product: str = "prod_core", currency: str = "usd", pid: str = "price_1") -> Json:  # fmt: skip
    return {
        "id": pid, "object": "price", "type": "recurring", "currency": currency, "product": product,
        "billing_scheme": "tiered" if tiers is not None or mode else "per_unit",
        "recurring": {"interval": interval, "interval_count": count, "usage_type": usage, "meter": None},
        "unit_amount": None if tiers is not None or mode else int(Decimal(str(amount))),
        "unit_amount_decimal": None if tiers is not None or mode else str(amount),
        "tiers": tiers, "tiers_mode": mode, "transform_quantity": transform, "tax_behavior": tax,
    }  # fmt: skip


def item(p: Json, quantity: int | None = 1, *, discounts: Sequence[Json] = (), iid: str = "si_1",
         tax_rates: Sequence[Json] = ()) -> Json:  # fmt: skip
    out: Json = {"id": iid, "object": "subscription_item", "price": p, "discounts": list(discounts),
                 "tax_rates": list(tax_rates)}  # fmt: skip
    if quantity is not None:  # metered items carry no quantity
        out["quantity"] = quantity
    return out


def coupon(*, percent: float | None = None, amount: int | None = None, currency: str | None = "usd",
           duration: str = "forever", months: int | None = None, products: Sequence[str] | None = None,
           options: Mapping[str, Json] | None = None) -> Json:  # fmt: skip
    out: Json = {"id": "co_1", "object": "coupon", "percent_off": percent, "amount_off": amount,
                 "currency": currency if amount is not None else None, "duration": duration,
                 "duration_in_months": months, "applies_to": {"products": list(products)} if products else None}  # fmt: skip
    if options:
        out["currency_options"] = dict(options)
    return out


def discount(c: Json, *, start: int = T - 10 * DAY, end: int | None = None, did: str = "di_1",
             subscription: str | None = "sub_1") -> Json:  # fmt: skip
    return {"id": did, "object": "discount", "customer": "cus_1", "subscription": subscription,
            "subscription_item": None, "start": start, "end": end,
            "source": {"type": "coupon", "coupon": c}}  # fmt: skip


def sub(items: Sequence[Json], *, status: str = "active", currency: str = "usd", discounts: Sequence[Json] = (),
        customer: str = "cus_1", sid: str = "sub_1", cancel_at_period_end: bool = False, cancel_at: int | None = None,
        pause_collection: Json | None = None) -> Json:  # fmt: skip
    return {"id": sid, "object": "subscription", "customer": customer, "currency": currency, "status": status,
            "items": {"object": "list", "data": list(items), "has_more": False}, "discounts": list(discounts),
            "cancel_at_period_end": cancel_at_period_end, "cancel_at": cancel_at,
            "pause_collection": pause_collection, "default_tax_rates": [], "start_date": T - 30 * DAY}  # fmt: skip


def monthly(amount: int = 10_000, **kw: Any) -> Json:
    """A one-item subscription at `amount` a month."""
    return sub([item(price(amount, currency=kw.get("currency", "usd")))], **kw)


def cents(s: Json, policies: Policies | None = None, context: Context | None = None, at: dt.datetime = AT) -> int:
    """The subscription's rounded MRR in its own currency (0 when it holds nothing)."""
    v = value(s, at, context or Context(), policies or Policies())
    held = holdings([v])
    return held[v.currency].cents if v.currency in held else 0


def half_even(x: Fraction) -> int:
    return round(x)  # Fraction.__round__ rounds ties to even


# -- normalisation (S-3) -----------------------------------------------------------------------

# 120 000 cents per `count` `interval`s, by hand: month /n; year /12n; week x52/12 /n; day x365/12 /n.
NORMALISED = {
    ("month", 1): 120_000, ("month", 3): 40_000, ("month", 6): 20_000, ("month", 12): 10_000,
    ("year", 1): 10_000, ("year", 3): 3_333, ("year", 6): 1_667, ("year", 12): 833,
    ("week", 1): 520_000, ("week", 3): 173_333, ("week", 6): 86_667, ("week", 12): 43_333,
    ("day", 1): 3_650_000, ("day", 3): 1_216_667, ("day", 6): 608_333, ("day", 12): 304_167,
}  # fmt: skip


@pytest.mark.parametrize(("interval", "count"), sorted(NORMALISED))
def test_each_interval_and_count_normalises_to_a_month(interval: str, count: int) -> None:
    assert cents(sub([item(price(120_000, interval=interval, count=count))])) == NORMALISED[(interval, count)]


@pytest.mark.parametrize(("interval", "count", "amount", "expected"), [
    ("day", 1, 30, 912),  # 30 x 365/12 = 912.5: the tie goes to the even 912
    ("day", 1, 6, 182),  # 182.5
    ("month", 6, 2_991, 498),  # $29.91 every 6 months = 498.5
    ("month", 6, 3, 0),  # 0.5
    ("week", 2, 9, 20),  # 9 x 52/12 / 2 = 19.5
    ("year", 2, 84, 4),  # 3.5
    ("year", 3, 234, 6),  # 6.5
])  # fmt: skip
def test_exact_ties_round_half_even(interval: str, count: int, amount: int, expected: int) -> None:
    per = {"day": Fraction(365, 12), "week": Fraction(52, 12), "month": Fraction(1), "year": Fraction(1, 12)}
    assert half_even(amount * per[interval] / count) == expected  # the hand figure is a true tie
    assert cents(sub([item(price(amount, interval=interval, count=count))])) == expected


def test_week_and_day_factors_are_configurable() -> None:
    assert cents(sub([item(price(1_000, interval="week"))]), Policies(week_factor=Decimal("4.33"))) == 4_330
    assert cents(sub([item(price(100, interval="day"))]), Policies(day_factor=Decimal(30))) == 3_000


def test_sub_cent_unit_amount_decimal_is_kept_until_the_customer_rounds() -> None:
    # 0.4 cents x 1000 units = 400; two items of 0.25 cents each x 1 = 0.5 -> 0 (even)
    assert cents(sub([item(price("0.4"), 1_000)])) == 400
    assert cents(sub([item(price("0.25", pid="p_a"), 1, iid="si_a"), item(price("0.25", pid="p_b"), 1, iid="si_b")])) == 0
    assert cents(sub([item(price("0.75", pid="p_a"), 1, iid="si_a"), item(price("0.75", pid="p_b"), 1, iid="si_b")])) == 2


# -- quantity, transform_quantity, tiers (S-2) ------------------------------------------------


@pytest.mark.parametrize(("quantity", "expected"), [(0, 0), (1, 4_900), (7, 34_300), (None, 4_900)])
def test_quantity_multiplies_the_unit_amount(quantity: int | None, expected: int) -> None:
    assert cents(sub([item(price(4_900), quantity)])) == expected


@pytest.mark.parametrize(("quantity", "rounding", "expected"), [
    (21, "up", 3 * 500), (21, "down", 2 * 500), (20, "up", 2 * 500), (20, "down", 2 * 500),
    (1, "up", 500), (1, "down", 0), (0, "up", 0),
])  # fmt: skip
def test_transform_quantity_divides_then_rounds(quantity: int, rounding: str, expected: int) -> None:
    p = price(500, transform={"divide_by": 10, "round": rounding})
    assert cents(sub([item(p, quantity)])) == expected


TIERS: list[Json] = [
    {"up_to": 10, "unit_amount": 1_000, "unit_amount_decimal": "1000", "flat_amount": 2_000, "flat_amount_decimal": "2000"},
    {"up_to": 20, "unit_amount": 800, "unit_amount_decimal": "800", "flat_amount": 1_000, "flat_amount_decimal": "1000"},
    {"up_to": None, "unit_amount": 500, "unit_amount_decimal": "500", "flat_amount": None, "flat_amount_decimal": None},
]  # fmt: skip


@pytest.mark.parametrize(("mode", "quantity", "expected"), [
    ("volume", 5, 2_000 + 5 * 1_000),
    ("volume", 10, 2_000 + 10 * 1_000),
    ("volume", 15, 1_000 + 15 * 800),  # every unit at the tier the quantity falls in
    ("volume", 25, 25 * 500),
    ("graduated", 0, 0),
    ("graduated", 5, 2_000 + 5 * 1_000),
    ("graduated", 10, 2_000 + 10 * 1_000),
    ("graduated", 11, 2_000 + 10 * 1_000 + 1_000 + 1 * 800),  # the second tier's flat fee once a unit lands in it
    ("graduated", 15, 2_000 + 10 * 1_000 + 1_000 + 5 * 800),
    ("graduated", 25, 2_000 + 10 * 1_000 + 1_000 + 10 * 800 + 5 * 500),
])  # fmt: skip
def test_volume_and_graduated_tiers_with_flat_amounts(mode: str, quantity: int, expected: int) -> None:
    assert cents(sub([item(price(tiers=TIERS, mode=mode), quantity)])) == expected


def test_tiers_from_the_price_table_when_the_snapshot_has_none() -> None:
    bare = price(tiers=None, mode="graduated")
    s = sub([item(bare, 15)])
    assert cents(s, context=Context(prices={"price_1": {"id": "price_1", "tiers": TIERS}})) == 17_000
    with pytest.raises(NeedsExpansion):
        cents(s)


def test_tiered_annual_is_normalised_after_the_tiers() -> None:
    assert cents(sub([item(price(tiers=TIERS, mode="graduated", interval="year"), 15)])) == half_even(Fraction(17_000, 12))


# -- metered ----------------------------------------------------------------------------------


def test_metered_items_are_worth_nothing_beside_licensed_ones() -> None:
    s = sub([item(price(9_900, pid="p_base"), 1, iid="si_base"), item(price(2_000, pid="p_addon"), 5, iid="si_add"),
             item(price(25, usage="metered", pid="p_api"), None, iid="si_api")])  # fmt: skip
    assert cents(s) == 9_900 + 5 * 2_000


def test_a_metered_only_customer_is_not_paying_and_makes_no_movement() -> None:
    s = sub([item(price(25, usage="metered"), None)])
    v = value(s, AT, Context(), Policies())
    assert v.mrr == 0
    held = holdings([v])
    assert all(h.cents == 0 for h in held.values())
    positions = {("cus_1", c): h for c, h in held.items()}
    assert snapshot(AT, positions, FX, AT.date()).paying_customers == 0
    book = Book()
    book.put(T, s)
    assert book.movements() == []


def test_going_from_licensed_to_metered_only_is_churn() -> None:
    book = Book()
    book.put(T, monthly(5_000))
    book.put(T + DAY, sub([item(price(25, usage="metered"), None)]))
    assert kinds(book.movements()) == [(Kind.NEW, 5_000), (Kind.CHURN, -5_000)]


# -- discounts (S-5) --------------------------------------------------------------------------

REPEATING_END = T + 30 * DAY


@pytest.mark.parametrize("policy", list(DiscountPolicy))
@pytest.mark.parametrize("duration", ["once", "repeating", "forever"])
@pytest.mark.parametrize("shape", ["percent", "amount"])
def test_discount_duration_against_policy(shape: str, duration: str, policy: DiscountPolicy) -> None:
    c = coupon(percent=25 if shape == "percent" else None, amount=2_500 if shape == "amount" else None,
               duration=duration, months=3 if duration == "repeating" else None)  # fmt: skip
    # Stripe sets `end` only for repeating discounts (once and forever: null)
    d = discount(c, end=REPEATING_END if duration == "repeating" else None)
    reduces = duration == "forever" or policy is DiscountPolicy.ALL_ACTIVE
    assert cents(monthly(10_000, discounts=[d]), Policies(discounts=policy)) == (7_500 if reduces else 10_000)


def test_a_repeating_discount_stops_at_its_end_and_next_change_says_when() -> None:
    d = discount(coupon(percent=25, duration="repeating", months=1), end=REPEATING_END)
    s = monthly(10_000, discounts=[d])
    policies = Policies(discounts=DiscountPolicy.ALL_ACTIVE)
    end = dt.datetime.fromtimestamp(REPEATING_END, dt.UTC)
    assert cents(s, policies, at=end - dt.timedelta(seconds=1)) == 7_500
    assert cents(s, policies, at=end) == 10_000
    assert next_change(s, AT, Context(), policies) == end


def test_a_discount_not_yet_started_does_not_reduce() -> None:
    d = discount(coupon(percent=25, duration="repeating", months=1), start=T + DAY, end=T + 31 * DAY)
    assert cents(monthly(10_000, discounts=[d]), Policies(discounts=DiscountPolicy.ALL_ACTIVE)) == 10_000


def test_a_forever_discount_with_an_end_stops_there() -> None:
    d = discount(coupon(percent=25), end=T + DAY)
    s = monthly(10_000, discounts=[d])
    assert cents(s) == 7_500
    assert cents(s, at=AT + dt.timedelta(days=1)) == 10_000


def two_items(*, a_discounts: Sequence[Json] = (), **kw: Any) -> Json:
    """prod_a at 6 000 and prod_b at 4 000 a month."""
    return sub([item(price(6_000, product="prod_a", pid="p_a"), 1, iid="si_a", discounts=a_discounts),
                item(price(4_000, product="prod_b", pid="p_b"), 1, iid="si_b")], **kw)  # fmt: skip


def test_item_level_discount_reduces_only_its_item() -> None:
    assert cents(two_items(a_discounts=[discount(coupon(percent=50))])) == 3_000 + 4_000


def test_subscription_level_discount_reduces_every_item() -> None:
    assert cents(two_items(discounts=[discount(coupon(percent=50))])) == 5_000


def test_customer_discount_applies_only_to_subscriptions_without_their_own() -> None:
    customer = discount(coupon(percent=50), subscription=None, did="di_cus")
    assert cents(two_items(), context=Context(customer_discount=customer)) == 5_000
    own = [discount(coupon(percent=10))]
    assert cents(two_items(discounts=own), context=Context(customer_discount=customer)) == 9_000
    tied = discount(coupon(percent=50), subscription="sub_other", did="di_other")
    assert cents(two_items(), context=Context(customer_discount=tied)) == 10_000


def test_discount_ids_resolve_through_the_context() -> None:
    d = discount(coupon(percent=50), did="di_ref")
    s = monthly(10_000, discounts=[])
    s["discounts"] = ["di_ref"]
    assert cents(s, context=Context(discounts={"di_ref": d})) == 5_000
    with pytest.raises(NeedsExpansion):
        cents(s)


def test_applies_to_products_restricts_the_discount() -> None:
    only_a = {"products": ["prod_a"]}
    pct = discount(coupon(percent=50, products=only_a["products"]))
    assert cents(two_items(discounts=[pct])) == 3_000 + 4_000
    amt = discount(coupon(amount=2_500, products=only_a["products"]))
    assert cents(two_items(discounts=[amt])) == 3_500 + 4_000
    too_much = discount(coupon(amount=8_000, products=only_a["products"]))
    assert cents(two_items(discounts=[too_much])) == 0 + 4_000  # prod_a floors at 0, prod_b untouched


def test_amount_off_is_per_invoice_and_normalised_with_the_interval() -> None:
    annual = sub([item(price(120_000, interval="year"))], discounts=[discount(coupon(amount=12_000))])
    assert cents(annual) == 10_000 - 1_000
    quarterly = sub([item(price(30_000, interval="month", count=3))], discounts=[discount(coupon(amount=3_000))])
    assert cents(quarterly) == 10_000 - 1_000


def test_amount_off_in_another_currency_needs_a_currency_option() -> None:
    plain = discount(coupon(amount=1_000, currency="usd"))
    assert cents(monthly(9_000, currency="eur", discounts=[plain])) == 9_000
    option = discount(coupon(amount=1_000, currency="usd", options={"eur": {"amount_off": 900}}))
    assert cents(monthly(9_000, currency="eur", discounts=[option])) == 8_100


@pytest.mark.parametrize(("order", "expected"), [
    (("pct50", "amt2000"), 3_000),  # 10 000 x 0.5 - 2 000
    (("amt2000", "pct50"), 4_000),  # (10 000 - 2 000) x 0.5
    (("pct50", "pct50"), 2_500),  # percentages compound
    (("amt2000", "amt9000"), 0),  # floored at 0, never negative
])  # fmt: skip
def test_stacked_discounts_apply_in_array_order(order: tuple[str, str], expected: int) -> None:
    make = {"pct50": coupon(percent=50), "amt2000": coupon(amount=2_000), "amt9000": coupon(amount=9_000)}
    ds = [discount(make[name], did=f"di_{i}") for i, name in enumerate(order)]
    assert cents(monthly(10_000, discounts=ds)) == expected


def test_item_discounts_come_before_subscription_discounts() -> None:
    s = two_items(a_discounts=[discount(coupon(percent=50), did="di_item")],
                  discounts=[discount(coupon(amount=1_000), did="di_sub")])  # fmt: skip
    assert cents(s) == 3_000 + 4_000 - 1_000


def test_a_full_discount_makes_a_free_customer() -> None:
    v = value(monthly(10_000, discounts=[discount(coupon(percent=100))]), AT, Context(), Policies())
    assert v.counting and v.mrr == 0
    assert holdings([v]) == {"usd": Holding(0, free=True)}


@pytest.mark.parametrize(("free", "lose", "regain"), [
    (FreeCustomer.CHURN, Kind.CHURN, Kind.REACTIVATION),
    (FreeCustomer.CONTRACTION, Kind.CONTRACTION, Kind.EXPANSION),
])  # fmt: skip
def test_a_100_percent_discount_is_churn_or_contraction_by_policy(free: FreeCustomer, lose: Kind, regain: Kind) -> None:
    book = Book(Policies(free_customer=free))
    book.put(T, monthly(10_000))
    book.put(T + DAY, monthly(10_000, discounts=[discount(coupon(percent=100))]))
    book.put(T + 2 * DAY, monthly(10_000))
    assert kinds(book.movements()) == [(Kind.NEW, 10_000), (lose, -10_000), (regain, 10_000)]


# -- statuses, dunning, pause (S-1) -----------------------------------------------------------


@pytest.mark.parametrize(("status", "expected"), [
    ("active", 10_000), ("past_due", 10_000), ("trialing", 0), ("incomplete", 0), ("incomplete_expired", 0),
    ("unpaid", 0), ("canceled", 0), ("paused", 0),
])  # fmt: skip
def test_only_active_and_past_due_count(status: str, expected: int) -> None:
    v = value(monthly(10_000, status=status), AT, Context(), Policies())
    assert round(v.mrr) == expected
    assert v.counting is (expected > 0)


def test_past_due_counts_until_the_grace_period_ends() -> None:
    since = AT - dt.timedelta(days=10)
    grace_end = since + dt.timedelta(days=30)
    policies, context = Policies(past_due_grace_days=30), Context(dunning_since=since)
    s = monthly(15_000, status="past_due")
    assert cents(s, policies, context) == 15_000
    assert cents(s, policies, context, at=grace_end - dt.timedelta(seconds=1)) == 15_000
    assert cents(s, policies, context, at=grace_end) == 0
    assert next_change(s, AT, context, policies) == grace_end
    assert next_change(s, grace_end, context, policies) is None
    # without a grace period (the default) past_due counts for ever and nothing is scheduled
    assert cents(s, Policies(), context, at=AT + dt.timedelta(days=400)) == 15_000
    assert next_change(s, AT, context, Policies()) is None
    # dunning on an active subscription changes nothing
    assert next_change(monthly(15_000), AT, context, policies) is None


def test_the_grace_running_out_is_a_scheduled_churn() -> None:
    since = AT - dt.timedelta(days=10)
    book = Book(Policies(past_due_grace_days=30))
    context = Context(dunning_since=since)
    book.put(T, monthly(15_000, status="past_due"), context)
    grace_end = (since + dt.timedelta(days=30)).timestamp()
    book.revalue(grace_end, Cause.SCHEDULE)
    assert kinds(book.movements()) == [(Kind.NEW, 15_000), (Kind.CHURN, -15_000)]
    assert book.ledger[-1].cause is Cause.SCHEDULE


@pytest.mark.parametrize(("pause", "expected"), [(PausePolicy.ZERO, 0), (PausePolicy.COUNT, 30_000)])
def test_pause_collection_by_policy(pause: PausePolicy, expected: int) -> None:
    s = monthly(30_000, pause_collection={"behavior": "mark_uncollectible", "resumes_at": None})
    assert cents(s, Policies(pause=pause)) == expected
    assert cents(monthly(30_000, status="paused"), Policies(pause=pause)) == 0  # the status never counts


# -- cancellation timing (S-6) ----------------------------------------------------------------


def test_cancel_at_period_end_set_then_unset_makes_no_movement_at_end() -> None:
    book = Book()
    book.put(T, monthly(8_000))
    r = book.put(T + DAY, monthly(8_000, cancel_at_period_end=True))
    assert r.scheduled_churn == {"usd": 8_000}
    assert r.changes == []
    r = book.put(T + 2 * DAY, monthly(8_000))
    assert r.scheduled_churn == {} and r.changes == []
    book.put(T + 3 * DAY, monthly(8_000, cancel_at_period_end=True))
    book.put(T + 10 * DAY, monthly(8_000, status="canceled", cancel_at_period_end=True))
    assert kinds(book.movements()) == [(Kind.NEW, 8_000), (Kind.CHURN, -8_000)]


def test_cancel_at_period_end_under_at_request_churns_then_reactivates() -> None:
    book = Book(Policies(churn_recognition=ChurnRecognition.AT_REQUEST))
    book.put(T, monthly(8_000))
    r = book.put(T + DAY, monthly(8_000, cancel_at_period_end=True))
    assert r.scheduled_churn == {}  # already gone, nothing left to leave at the end
    book.put(T + 2 * DAY, monthly(8_000))
    assert kinds(book.movements()) == [(Kind.NEW, 8_000), (Kind.CHURN, -8_000), (Kind.REACTIVATION, 8_000)]


def test_cancel_one_of_two_under_at_request_is_contraction_then_expansion() -> None:
    book = Book(Policies(churn_recognition=ChurnRecognition.AT_REQUEST))
    book.put(T, monthly(8_000, sid="sub_a"))
    book.put(T + DAY, monthly(2_000, sid="sub_b"))
    book.put(T + 2 * DAY, monthly(8_000, sid="sub_a", cancel_at_period_end=True))
    book.put(T + 3 * DAY, monthly(8_000, sid="sub_a"))
    assert kinds(book.movements()) == [(Kind.NEW, 8_000), (Kind.EXPANSION, 2_000), (Kind.CONTRACTION, -8_000),
                                       (Kind.EXPANSION, 8_000)]  # fmt: skip


@pytest.mark.parametrize(("recognition", "expected", "scheduled"), [
    (ChurnRecognition.AT_END, 8_000, 8_000), (ChurnRecognition.AT_REQUEST, 0, 0),
])  # fmt: skip
def test_cancel_at_timestamp(recognition: ChurnRecognition, expected: int, scheduled: int) -> None:
    v = value(monthly(8_000, cancel_at=T + 10 * DAY), AT, Context(), Policies(churn_recognition=recognition))
    assert round(v.mrr) == expected
    assert round(v.scheduled_churn) == scheduled


# -- currencies (S-7) -------------------------------------------------------------------------


def test_eur_converts_at_the_rate_of_the_day() -> None:
    fx = FxTable.of("usd", {"eur": Decimal("1.08")}, [("eur", dt.date(2026, 2, 10), Decimal("1.10"))])
    assert cents(monthly(9_000, currency="eur")) == 9_000  # native cents
    assert fx.convert(9_000, "eur", dt.date(2026, 2, 9)) == 9_720  # static before the first dated rate
    assert fx.convert(9_000, "eur", dt.date(2026, 2, 10)) == 9_900
    assert fx.convert(9_000, "eur", dt.date(2026, 3, 1)) == 9_900  # the latest on or before the day
    with pytest.raises(UnknownRate):
        fx.convert(100, "gbp", AT.date())


def test_jpy_is_zero_decimal_and_converts_through_both_exponents() -> None:
    assert exponent("jpy") == 0 and exponent("usd") == 2 and exponent("kwd") == 3
    assert cents(monthly(5_000, currency="jpy")) == 5_000  # 5 000 yen, not 50.00
    assert cents(sub([item(price(10_000, interval="year", currency="jpy"))], currency="jpy")) == 833  # whole yen
    assert FX.convert(5_000, "jpy", AT.date()) == 3_350  # 5 000 x 0.0067 USD = $33.50
    to_yen = FxTable.of("jpy", {"usd": Decimal(150)})
    assert to_yen.convert(10_000, "usd", AT.date()) == 15_000  # $100.00 = 15 000 yen
    assert FxTable.of("usd", {"kwd": Decimal("3.25")}).convert(1_000, "kwd", AT.date()) == 325  # 1.000 KWD


def test_a_jpy_customer_moves_in_yen_and_reports_in_cents() -> None:
    book = Book()
    book.put(T, monthly(5_000, currency="jpy"))
    (m,) = book.movements()
    assert (m.kind, m.currency, m.native_cents, m.cents) == (Kind.NEW, "jpy", 5_000, 3_350)


def test_a_jpy_amount_off_is_whole_yen() -> None:
    d = discount(coupon(amount=500, currency="jpy"))
    assert cents(monthly(5_000, currency="jpy", discounts=[d])) == 4_500


# -- tax (S-4) --------------------------------------------------------------------------------


def test_inclusive_tax_is_removed_exclusive_is_left() -> None:
    vat = [{"id": "txr_vat20", "inclusive": True, "percentage": 20.0}]
    inclusive = sub([item(price(60_000, interval="year", tax="inclusive"), tax_rates=vat)])
    assert cents(inclusive) == half_even(Fraction(60_000, 12) / Fraction(6, 5))  # 4 166.67 -> 4 167
    assert cents(inclusive, context=Context(net_shares={"si_1": Decimal("0.8")})) == 4_000  # the invoice wins
    exclusive = sub([item(price(60_000, interval="year", tax="exclusive"), tax_rates=vat)])
    assert cents(exclusive) == 5_000


# -- one customer's subscriptions over time (S-10) -------------------------------------------


class Book:
    """One customer's subscriptions, valued and fed forward as the billing store does: every
    revaluation starts from the positions the last one left."""

    def __init__(self, policies: Policies | None = None, customer: str = "cus_1"):
        self.policies = policies or Policies()
        self.customer = customer
        self.subs: dict[str, Held] = {}
        self.positions: dict[str, Position] = {}
        self.ledger: list[Change] = []

    def put(self, at: float, snapshot: Json, context: Context | None = None) -> Any:
        self.subs[snapshot["id"]] = Held(snapshot["id"], snapshot, context or Context(), snapshot.get("start_date"))
        return self.revalue(at, Cause.EVENT, snapshot["id"])

    def revalue(self, at: float, cause: Cause, subscription: str | None = None) -> Any:
        result = revalue(self.customer, list(self.subs.values()), self.positions, at, self.policies, cause,
                         f"evt_{len(self.ledger)}", subscription)  # fmt: skip
        for change in result.changes:
            assert change.before == (self.positions[change.currency].holding if change.currency in self.positions
                                     else Holding())  # fmt: skip
            self.positions[change.currency] = Position(change.after, change.occurred_at.timestamp())
        self.ledger.extend(result.changes)
        return result

    def movements(self, ever_paid: bool = False, paid_before: dt.datetime | None = None) -> list[Movement]:
        return customer_movements({}, ever_paid, self.ledger, FX, self.policies, paid_before)


def kinds(movements: Sequence[Movement]) -> list[tuple[Kind, int]]:
    return [(m.kind, m.native_cents) for m in movements]


def test_second_subscription_expands_cancelling_one_contracts_cancelling_both_churns() -> None:
    book = Book()
    book.put(T, monthly(10_000, sid="sub_a"))
    book.put(T + DAY, monthly(5_000, sid="sub_b"))
    book.put(T + 2 * DAY, monthly(10_000, sid="sub_a", status="canceled"))
    book.put(T + 3 * DAY, monthly(5_000, sid="sub_b", status="canceled"))
    assert kinds(book.movements()) == [(Kind.NEW, 10_000), (Kind.EXPANSION, 5_000), (Kind.CONTRACTION, -10_000),
                                       (Kind.CHURN, -5_000)]  # fmt: skip


def test_new_versus_reactivation() -> None:
    book = Book()
    book.put(T, monthly(10_000))
    assert kinds(book.movements()) == [(Kind.NEW, 10_000)]
    assert kinds(book.movements(ever_paid=True)) == [(Kind.REACTIVATION, 10_000)]
    # a backfill learnt the customer paid before the ledger began, before this change ...
    assert kinds(book.movements(paid_before=AT - dt.timedelta(days=1))) == [(Kind.REACTIVATION, 10_000)]
    # ... or only after it
    assert kinds(book.movements(paid_before=AT + dt.timedelta(days=1))) == [(Kind.NEW, 10_000)]


def test_trial_start_is_nothing_and_its_conversion_is_new() -> None:
    book = Book()
    r = book.put(T, monthly(20_000, status="trialing"))
    assert r.changes == []
    book.put(T + 14 * DAY, monthly(20_000))
    assert kinds(book.movements()) == [(Kind.NEW, 20_000)]


def test_churn_then_return_is_reactivation() -> None:
    book = Book()
    book.put(T, monthly(10_000))
    book.put(T + DAY, monthly(10_000, status="canceled"))
    book.put(T + 40 * DAY, monthly(12_000, sid="sub_2"))
    assert kinds(book.movements()) == [(Kind.NEW, 10_000), (Kind.CHURN, -10_000), (Kind.REACTIVATION, 12_000)]


@pytest.mark.parametrize(("new_amount", "kind"), [(15_000, Kind.EXPANSION), (6_000, Kind.CONTRACTION)])
def test_plan_swap_inside_the_window_is_one_movement(new_amount: int, kind: Kind) -> None:
    book = Book()
    book.put(T - DAY, monthly(10_000, sid="sub_old"))
    book.put(T, monthly(10_000, sid="sub_old", status="canceled"))
    book.put(T + 600, monthly(new_amount, sid="sub_new"))
    moves = book.movements()
    assert kinds(moves) == [(Kind.NEW, 10_000), (kind, new_amount - 10_000)]
    assert moves[-1].event_ids == (book.ledger[1].event_id, book.ledger[2].event_id)
    assert moves[-1].occurred_at == AT + dt.timedelta(minutes=10)


def test_plan_swap_at_the_same_price_inside_the_window_is_no_movement() -> None:
    book = Book()
    book.put(T - DAY, monthly(10_000, sid="sub_old"))
    book.put(T, monthly(10_000, sid="sub_old", status="canceled"))
    book.put(T + 600, monthly(10_000, sid="sub_new"))
    assert kinds(book.movements()) == [(Kind.NEW, 10_000)]


@pytest.mark.parametrize(("window", "gap"), [(60, 3_600), (60, 7_200), (5, 600)])
def test_plan_swap_outside_the_window_is_churn_then_reactivation(window: int, gap: int) -> None:
    book = Book(Policies(grouping_window_minutes=window))
    book.put(T - DAY, monthly(10_000, sid="sub_old"))
    book.put(T, monthly(10_000, sid="sub_old", status="canceled"))
    book.put(T + gap, monthly(15_000, sid="sub_new"))
    # the customer had paid before the swap, so its return is a reactivation (S-10), not new
    assert kinds(book.movements()) == [(Kind.NEW, 10_000), (Kind.CHURN, -10_000), (Kind.REACTIVATION, 15_000)]


def test_a_window_is_measured_from_its_first_change() -> None:
    book = Book(Policies(grouping_window_minutes=60))
    book.put(T, monthly(1_000))
    book.put(T + 1_800, monthly(2_000))
    book.put(T + 3_500, monthly(3_000))  # still inside: 58 min after the first
    book.put(T + 3_700, monthly(4_000))  # 61 min after the first: a new group
    assert kinds(book.movements()) == [(Kind.NEW, 3_000), (Kind.EXPANSION, 1_000)]


def test_a_customer_in_two_currencies_moves_in_each() -> None:
    book = Book()
    book.put(T, monthly(10_000, sid="sub_usd"))
    book.put(T + DAY, monthly(9_000, sid="sub_eur", currency="eur"))
    book.put(T + 2 * DAY, monthly(10_000, sid="sub_usd", status="canceled"))
    moves = book.movements()
    assert [(m.kind, m.currency, m.native_cents, m.cents) for m in moves] == [
        (Kind.NEW, "usd", 10_000, 10_000), (Kind.EXPANSION, "eur", 9_000, 9_720),
        (Kind.CONTRACTION, "usd", -10_000, -10_000)]  # fmt: skip


def test_a_customer_is_rounded_once_not_per_subscription() -> None:
    weekly = [value(sub([item(price(1_000, interval="week"))], sid=sid), AT, Context(), Policies()) for sid in "ab"]
    assert holdings(weekly) == {"usd": Holding(half_even(2 * Fraction(1_000 * 52, 12)))}  # 8 666.67 -> 8 667
    assert half_even(Fraction(1_000 * 52, 12)) * 2 == 8_666  # what rounding each would have given


def test_a_late_revaluation_is_dated_after_the_customers_latest_change() -> None:
    book = Book()
    book.put(T + DAY, monthly(10_000))
    r = book.put(T, monthly(12_000))  # valued at an earlier moment than the ledger's latest row
    (change,) = r.changes
    assert change.occurred_at == AT + dt.timedelta(days=1)
    assert (change.before, change.after) == (Holding(10_000), Holding(12_000))
