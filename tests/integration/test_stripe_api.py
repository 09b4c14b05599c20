"""StripeReader against the Stripe fake on 127.0.0.1: pagination, expansions, retries through 429 and
5xx, error translation, and the answers equal to the fixture files."""

from __future__ import annotations

import json
import copy
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from postroom.billing.stripe_api import (
    StripeAuthFailed,
    StripeNotFound,
    StripeReader,
    StripeRefused,
    StripeUnavailable,
)
from tests.stripe_fake import API_KEY, FakeStripe, fake_stripe, fixture_folder, read_fixture_subscriptions
from tests.stripe_generate import generate_subscriptions

EXPANSIONS = ["data.discounts", "data.items.data.discounts"]  # a listing cannot reach tiers (4 levels)


@pytest.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    async with fake_stripe() as fake:
        yield fake


def reader(fake: FakeStripe, **options: Any) -> StripeReader:
    options.setdefault("max_network_retries", 0)
    options.setdefault("rate_limit_backoff", 0.01)
    return StripeReader(options.pop("api_key", API_KEY), api_base=fake.url, **options)


async def fixtures_loaded(fake: FakeStripe) -> list[dict[str, Any]]:
    if not fixture_folder().is_dir():
        pytest.skip(f"Stripe fixtures not found at {fixture_folder()} (set POSTROOM_TEST_DATA)")
    return fake.load_fixtures()


def as_stripe_sends(sub: dict[str, Any], tiers: bool) -> dict[str, Any]:
    """A fixture as Stripe answers it (API 2025-09-30.clover and later): a discount's coupon as its
    id; a price's tiers only where they could be expanded."""
    shaped = json.loads(json.dumps(sub))
    for discount in [*shaped["discounts"], *(d for i in shaped["items"]["data"] for d in i["discounts"])]:
        discount["source"]["coupon"] = discount["source"]["coupon"]["id"]
    if not tiers:
        for item in shaped["items"]["data"]:
            item["price"].pop("tiers", None)
    return dict(shaped)


async def test_fixture_subscriptions_come_back_as_stripe_sends_them(fake: FakeStripe) -> None:
    files = await fixtures_loaded(fake)
    async with reader(fake) as stripe:
        listed = [sub async for sub in stripe.subscriptions()]
        retrieved = await stripe.subscription("sub_O")
        price = await stripe.price("price_tiered_m")
        coupons = {c["id"]: c async for c in stripe.coupons()}
        forever = await stripe.coupon("FOREVER20")

    assert len(files) == 15
    assert sorted(listed, key=lambda s: s["id"]) == sorted((as_stripe_sends(f, tiers=False) for f in files),
                                                           key=lambda s: s["id"])  # fmt: skip
    assert retrieved == as_stripe_sends(next(f for f in files if f["id"] == "sub_O"), tiers=True)
    assert [(t["up_to"], t["unit_amount_decimal"]) for t in price["tiers"]] == [(10, "1000"), (None, "800")]
    assert set(coupons) == {"FOREVER20", "LAUNCH100X3"} and forever["percent_off"] == 20.0
    assert [seen.expand for seen in fake.requests[:1]] == [EXPANSIONS]
    assert fake.requests[0].query["status"] == "all" and fake.requests[0].query["limit"] == "100"
    assert fake.requests[1].expand == ["discounts", "items.data.discounts", "items.data.price.tiers"]


async def test_stripe_refuses_expansions_deeper_than_four_levels(fake: FakeStripe) -> None:
    await fixtures_loaded(fake)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{fake.url}/v1/subscriptions",
                            params={"expand[]": "data.items.data.price.tiers"}) as response:  # fmt: skip
            assert response.status == 400
            assert "more than 4 levels" in (await response.json())["error"]["message"]


async def test_the_fake_answers_ids_and_no_tiers_without_expansions(fake: FakeStripe) -> None:
    await fixtures_loaded(fake)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{fake.url}/v1/subscriptions/sub_F") as response:
            bare_f = await response.json()
        async with http.get(f"{fake.url}/v1/subscriptions", params={"status": "all", "limit": "100"}) as response:
            bare_list = {sub["id"]: sub for sub in (await response.json())["data"]}
        async with http.get(f"{fake.url}/v1/customers/cus_A", params={"expand[]": "discount"}) as response:
            refused = response.status, await response.json()

    assert bare_f["discounts"] == ["di_F"]
    assert "tiers" not in bare_list["sub_O"]["items"]["data"][0]["price"]
    assert fake.subscriptions["sub_F"]["discounts"][0]["id"] == "di_F"  # the store keeps the full objects
    assert refused[0] == 400 and refused[1]["error"]["type"] == "invalid_request_error"


async def test_auto_pagination_across_pages(fake: FakeStripe) -> None:
    fake.add_generated(250, seed=7)
    async with reader(fake) as stripe:
        ids = [sub["id"] async for sub in stripe.subscriptions()]

    assert len(ids) == 250 and set(ids) == set(fake.subscriptions)
    created = [fake.subscriptions[i]["created"] for i in ids]
    assert created == sorted(created, reverse=True)  # newest first, as Stripe lists
    assert [seen.query.get("starting_after") for seen in fake.requests] == [None, ids[99], ids[199]]
    assert all(seen.expand == EXPANSIONS for seen in fake.requests)


async def test_two_429s_are_retried_then_the_answer_comes(fake: FakeStripe) -> None:
    await fixtures_loaded(fake)
    fake.fail(429, times=2)
    async with reader(fake) as stripe:
        sub = await stripe.subscription("sub_A")

    assert sub["id"] == "sub_A"
    assert len(fake.requests) == 3


async def test_a_listing_resumes_after_the_last_object_when_rate_limited(fake: FakeStripe) -> None:
    fake.add_generated(250, seed=3)
    ids: list[str] = []
    async with reader(fake) as stripe:
        async for sub in stripe.subscriptions():
            ids.append(sub["id"])
            if len(ids) == 100:  # page 2 is fetched only when the 101st object is asked for
                fake.fail(429, times=2)

    assert len(ids) == 250 and len(set(ids)) == 250
    assert [seen.query.get("starting_after") for seen in fake.requests] == [None, ids[99], ids[99], ids[99], ids[199]]
    assert all(seen.expand == EXPANSIONS for seen in fake.requests)


async def test_rate_limited_for_good_is_unavailable(fake: FakeStripe) -> None:
    await fixtures_loaded(fake)
    fake.failing = FakeStripe.fault(429)
    async with reader(fake, rate_limit_retries=2) as stripe:
        with pytest.raises(StripeUnavailable, match="429"):
            await stripe.subscription("sub_A")

    assert len(fake.requests) == 3


async def test_the_sdk_retries_5xx_and_429_it_is_told_to_retry(fake: FakeStripe) -> None:
    await fixtures_loaded(fake)
    fake.fail(500)
    fake.fail(429, should_retry=True)
    async with reader(fake, max_network_retries=2, rate_limit_retries=0) as stripe:
        sub = await stripe.subscription("sub_B")

    assert sub["id"] == "sub_B"
    assert len(fake.requests) == 3


async def test_persistent_500_is_unavailable(fake: FakeStripe) -> None:
    await fixtures_loaded(fake)
    fake.failing = FakeStripe.fault(500)
    async with reader(fake, max_network_retries=1) as stripe:
        with pytest.raises(StripeUnavailable, match="500"):
            [sub async for sub in stripe.subscriptions()]

    assert len(fake.requests) == 2  # the first try and the SDK's one retry


async def test_wrong_key_is_auth_failed_and_the_reason_hides_the_key(fake: FakeStripe) -> None:
    await fixtures_loaded(fake)
    async with reader(fake, api_key="sk_test_wrong_key_1234567890") as stripe:
        with pytest.raises(StripeAuthFailed) as failed:
            await stripe.customer("cus_A")
        with pytest.raises(StripeAuthFailed):
            [sub async for sub in stripe.subscriptions()]

    assert "401" in failed.value.reason and "sk_test" not in failed.value.reason
    assert fake.requests[0].authorization == "Bearer sk_test_wrong_key_1234567890"


async def test_unreachable_and_slow_stripe_are_unavailable(fake: FakeStripe) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with StripeReader(API_KEY, api_base=f"http://127.0.0.1:{port}", max_network_retries=0) as stripe:
        with pytest.raises(StripeUnavailable, match="cannot reach"):
            await stripe.subscription("sub_A")

    fake.delay = 0.5
    async with reader(fake, timeout=0.1) as stripe:
        started = time.monotonic()
        with pytest.raises(StripeUnavailable, match="cannot reach"):
            await stripe.subscription("sub_A")
        assert time.monotonic() - started < 0.45


async def test_missing_objects_and_refused_requests(fake: FakeStripe) -> None:
    await fixtures_loaded(fake)
    async with reader(fake) as stripe:
        with pytest.raises(StripeNotFound):
            await stripe.subscription("sub_nope")
        with pytest.raises(StripeNotFound):
            await stripe.invoice("in_nope")
    fake.fail(400)
    async with reader(fake) as stripe:
        with pytest.raises(StripeRefused):
            await stripe.customer("cus_A")


async def test_customers_and_invoices(fake: FakeStripe) -> None:
    await fixtures_loaded(fake)
    invoice = fake.invoices["in_N"]
    for n, created in enumerate([100, 200, 300]):
        fake.put_invoice({**copy.deepcopy(invoice), "id": f"in_{n}", "created": created})
    fake.customers["cus_B"]["deleted"] = True
    async with reader(fake) as stripe:
        customers = [c["id"] async for c in stripe.customers()]
        recent = [i["id"] async for i in stripe.invoices(since=200)]
        every = [i["id"] async for i in stripe.invoices()]
        deleted = await stripe.customer("cus_B")
        one = await stripe.invoice("in_N")

    assert sorted(customers) == sorted(f"cus_{c}" for c in "ACDEFGHIJKLMNO")
    assert recent == ["in_N", "in_2", "in_1"]
    assert every == ["in_N", "in_2", "in_1", "in_0"]
    assert deleted == {"id": "cus_B", "object": "customer", "deleted": True}
    assert one == invoice
    assert [s.query.get("created[gte]") for s in fake.requests if s.path == "/v1/invoices"] == ["200", None]


async def test_decimal_fields_come_back_as_the_strings_stripe_sent(fake: FakeStripe) -> None:
    files = await fixtures_loaded(fake)
    tiny = copy.deepcopy(next(f for f in files if f["id"] == "sub_E"))
    tiny["id"] = "sub_tiny"
    tiny["items"]["data"][2]["price"]["unit_amount_decimal"] = "0.0000001"
    tiny["items"]["data"][1]["price"]["unit_amount_decimal"] = "2000.50"
    fake.put_subscription(tiny)
    async with reader(fake) as stripe:
        sub = await stripe.subscription("sub_tiny")

    decimals = [item["price"]["unit_amount_decimal"] for item in sub["items"]["data"]]
    assert decimals == ["9900", "2000.50", "0.0000001"]
    assert Decimal(decimals[2]) == Decimal("1E-7")


def test_generated_subscriptions_are_deterministic_and_varied() -> None:
    customers, subs = generate_subscriptions(2000, seed=5)
    again = generate_subscriptions(2000, seed=5)
    other = generate_subscriptions(2000, seed=6)

    assert (customers, subs) == again and subs != other[1]
    assert {s["customer"] for s in subs} == {c["id"] for c in customers}
    prices = [item["price"] for s in subs for item in s["items"]["data"]]
    assert {(p["recurring"]["interval"], p["recurring"]["interval_count"]) for p in prices} >= {
        ("month", 1), ("month", 3), ("month", 6), ("month", 12), ("year", 1), ("week", 1), ("day", 1)}
    assert {p["currency"] for p in prices} == {"usd", "eur", "jpy"}
    assert {p["billing_scheme"] for p in prices} == {"per_unit", "tiered"}
    assert any(p["recurring"]["usage_type"] == "metered" for p in prices)
    assert any(s["discounts"] for s in subs) and any(s["items"]["data"][0]["discounts"] for s in subs)
    assert {s["status"] for s in subs} >= {"active", "trialing", "past_due", "canceled", "unpaid", "paused"}
