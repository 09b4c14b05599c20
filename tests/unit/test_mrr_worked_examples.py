"""MRR.md section 1.4: each fixture subscription's MRR, the total, and the policy variants."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from postroom.billing.objects import net_shares
from postroom.mrr.money import FxTable
from postroom.mrr.movements import holdings
from postroom.mrr.policies import DiscountPolicy, PausePolicy, Policies
from postroom.mrr.valuation import Context, value
from tests.stripe_fixtures import invoice_n, subscriptions

FEB_1 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
FX = FxTable.of("usd", {"eur": Decimal("1.08")})

EXPECTED = {
    "A_seats": 14_700, "B_annual": 10_000, "C_quarterly": 9_000, "D_weekly": 4_333,
    "E_multi_item_with_metered": 19_900, "F_percent_forever": 8_000, "G_amount_repeating": 50_000,
    "H_trialing": 0, "I_past_due": 15_000, "J_unpaid": 0, "K_eur": 9_720, "L_pause_collection": 0,
    "M_cancel_at_period_end": 8_000, "N_tax_inclusive_annual": 4_167, "O_tiered_graduated": 14_000,
}  # fmt: skip


def _context(name: str) -> Context:
    if name == "N_tax_inclusive_annual":
        return Context(net_shares={k: Decimal(v) for k, v in net_shares(invoice_n()).items()})
    return Context()


def _usd(name: str, sub: dict[str, object], policies: Policies, at: dt.datetime = FEB_1) -> int:
    (currency, holding), = holdings([value(sub, at, _context(name), policies)]).items() or [("usd", None)]  # type: ignore[list-item]
    return FX.convert(holding.cents, currency, at.date()) if holding else 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_fixture_is_worth_what_the_spec_says(name: str) -> None:
    assert _usd(name, subscriptions()[name], Policies()) == EXPECTED[name]


def test_the_total_is_166_820_with_12_paying_customers() -> None:
    worth = {name: _usd(name, sub, Policies()) for name, sub in subscriptions().items()}
    assert sum(worth.values()) == 166_820
    assert sum(1 for cents in worth.values() if cents > 0) == 12


def test_weekly_at_4_33_is_4_330() -> None:
    assert _usd("D_weekly", subscriptions()["D_weekly"], Policies(week_factor=Decimal("4.33"))) == 4_330


def test_all_active_discounts_give_156_820() -> None:
    policies = Policies(discounts=DiscountPolicy.ALL_ACTIVE)
    assert sum(_usd(name, sub, policies) for name, sub in subscriptions().items()) == 156_820


def test_chartmogul_like_variant_gives_186_820() -> None:
    policies = Policies(discounts=DiscountPolicy.ALL_ACTIVE, pause=PausePolicy.COUNT)
    assert _usd("L_pause_collection", subscriptions()["L_pause_collection"], policies) == 30_000
    assert sum(_usd(name, sub, policies) for name, sub in subscriptions().items()) == 186_820


def test_g_coupon_counts_until_its_end_under_all_active() -> None:
    g = subscriptions()["G_amount_repeating"]
    policies = Policies(discounts=DiscountPolicy.ALL_ACTIVE)
    end = dt.datetime.fromtimestamp(g["discounts"][0]["end"], dt.UTC)
    assert _usd("G", g, policies, end - dt.timedelta(seconds=1)) == 40_000
    assert _usd("G", g, policies, end) == 50_000


def test_n_without_an_invoice_uses_the_inclusive_rate() -> None:
    n = dict(subscriptions()["N_tax_inclusive_annual"])
    item = dict(n["items"]["data"][0], tax_rates=[{"id": "txr_vat20", "inclusive": True, "percentage": 20.0}])
    n["items"] = {"data": [item]}
    assert holdings([value(n, FEB_1, Context(), Policies())])["usd"].cents == 4_167
