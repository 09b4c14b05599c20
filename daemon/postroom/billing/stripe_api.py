"""Reading Stripe's billing state (subscriptions, customers, invoices) through the official SDK.

`StripeReader` owns one `stripe.StripeClient` (auth, API version, parameter encoding, retries) over
one `requests.Session`. Each GET runs the synchronous SDK in a worker thread so the event loop only
waits; concurrent calls from several tasks are fine (the session's connection pool is thread-safe).

Answers are the parsed JSON as Stripe sent it, not `StripeObject`s: we go through
`StripeClient.raw_request` because building `StripeObject`s costs about 2 ms of CPU per expanded
subscription: 100,000 took 216 s against a local fake, 40 s this way. So dicts (the SDK
parses into `OrderedDict`, a dict subclass) and lists, and Decimal-encoded fields (`unit_amount_decimal`,
`flat_amount_decimal`, `amount_decimal`, `quantity_decimal`) are **strings, exactly as on the wire**
and in webhook payloads (the typed SDK would give `Decimal`). Callers do `Decimal(value)`.
Listings follow Stripe's cursor (`starting_after` the last id while `has_more`), 100 a page.

Retries: the SDK retries connection errors, timeouts, 409 and 5xx with its own backoff
(`max_network_retries`; 0.5 s doubling to 5 s, jittered), but retries a 429 only when Stripe sends
`Stripe-Should-Retry: true` (lock timeouts). Plain rate limiting is retried here with exponential
backoff (`rate_limit_retries`, `rate_limit_backoff`); a listing retries the page it was on. SDK
errors are translated at this boundary: callers see only `StripeApiError` and its subclasses.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import requests
import stripe

from postroom.billing.stripe_errors import (
    StripeApiError,
    StripeAuthFailed,
    StripeNotFound,
    StripeRefused,
    StripeUnavailable,
)
from postroom.core.errors import PostroomError

logger = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.stripe.com"
# Stripe expands at most four levels: a listing (`data.` first) cannot reach a price's tiers, which
# `price()` reads instead. A discount's coupon comes as its id (API 2025-09-30.clover and later):
# `coupons()` and `coupon()` read them.
SUBSCRIPTION_EXPAND = ["discounts", "items.data.discounts", "items.data.price.tiers"]
LISTING_EXPAND = ["data.discounts", "data.items.data.discounts"]
_MAX_RATE_LIMIT_DELAY = 30.0

__all__ = ["StripeApiError", "StripeAuthFailed", "StripeNotFound", "StripeReader", "StripeRefused",
           "StripeUnavailable", "translate_error"]


class StripeReader:
    """Reads subscriptions, customers and invoices from Stripe as plain dicts."""

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str = DEFAULT_API_BASE,
        max_network_retries: int = 3,
        timeout: float = 30.0,
        rate_limit_retries: int = 5,
        rate_limit_backoff: float = 1.0,
        page_size: int = 100,
    ) -> None:
        self._session = requests.Session()
        http_client = stripe.RequestsClient(timeout=timeout, session=self._session)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")},
            max_network_retries=max_network_retries,
            http_client=http_client,
        )
        self._rate_limit_retries = rate_limit_retries
        self._rate_limit_backoff = rate_limit_backoff
        self._page_size = page_size

    async def aclose(self) -> None:
        await asyncio.to_thread(self._session.close)

    async def __aenter__(self) -> StripeReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def subscriptions(self) -> AsyncIterator[dict[str, Any]]:
        """Every subscription of the account, any status, with its discounts expanded (a tiered
        price comes without its tiers: see `price`)."""
        return self._listing("/v1/subscriptions", {"status": "all", "expand": LISTING_EXPAND})

    async def price(self, price_id: str) -> dict[str, Any]:
        """One price with its tiers."""
        return await self._get(f"/v1/prices/{_segment(price_id)}", {"expand": ["tiers"]})

    def coupons(self) -> AsyncIterator[dict[str, Any]]:
        """Every coupon of the account (discounts name theirs by id)."""
        return self._listing("/v1/coupons", {})

    async def coupon(self, coupon_id: str) -> dict[str, Any]:
        return await self._get(f"/v1/coupons/{_segment(coupon_id)}", {})

    async def subscription(self, subscription_id: str) -> dict[str, Any]:
        """One subscription, with discounts and price tiers expanded."""
        return await self._get(f"/v1/subscriptions/{_segment(subscription_id)}", {"expand": SUBSCRIPTION_EXPAND})

    def customers(self) -> AsyncIterator[dict[str, Any]]:
        """Every customer of the account (Stripe's listing leaves deleted customers out).
        `customer.discount` is always a full Discount object: it is not expandable."""
        return self._listing("/v1/customers", {})

    async def customer(self, customer_id: str) -> dict[str, Any]:
        """One customer; a deleted one comes back as `{"id", "object": "customer", "deleted": True}`."""
        return await self._get(f"/v1/customers/{_segment(customer_id)}", {})

    def invoices(self, since: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every invoice, or those created at or after `since` (unix seconds), newest first."""
        return self._listing("/v1/invoices", {} if since is None else {"created": {"gte": since}})

    async def invoice(self, invoice_id: str) -> dict[str, Any]:
        return await self._get(f"/v1/invoices/{_segment(invoice_id)}", {})

    async def _listing(self, path: str, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stripe's cursor pagination: `starting_after` the last id while `has_more`."""
        after: str | None = None
        while True:
            query = {**params, "limit": self._page_size}
            if after is not None:
                query["starting_after"] = after
            page = await self._get(path, query)
            data: list[dict[str, Any]] = page["data"]
            for obj in data:
                yield obj
            if not page.get("has_more") or not data:
                return
            after = str(data[-1]["id"])

    async def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """One GET through the SDK (auth, API version, encoding, retries), in a worker thread,
        retrying 429s the SDK gives up on. The answer is the parsed JSON, not a `StripeObject`."""
        rate_limited = 0
        while True:
            try:
                return await asyncio.to_thread(self._request, path, params)
            except stripe.RateLimitError as exc:
                rate_limited += 1
                if rate_limited > self._rate_limit_retries:
                    raise StripeUnavailable(f"rate limited (429) after {rate_limited - 1} retries") from exc
                # Exponential backoff with jitter in [d/2, d], as the SDK backs off from 5xx.
                delay = min(self._rate_limit_backoff * 2 ** (rate_limited - 1), _MAX_RATE_LIMIT_DELAY)
                delay *= 0.5 * (1 + random.random())
                logger.warning("stripe rate limited (429) on %s; retry %d in %.2fs", path, rate_limited, delay)
                await asyncio.sleep(delay)
            except stripe.StripeError as exc:
                raise translate_error(exc) from exc

    def _request(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        response = self._client.raw_request("get", path, **params)
        data = response.data
        if not isinstance(data, dict):
            raise StripeUnavailable(f"Stripe answered {path} with JSON that is not an object")
        return data


def translate_error(exc: stripe.StripeError) -> StripeApiError:
    """An SDK error as ours. For 401/403 the reason leaves out Stripe's message, which echoes part
    of the key."""
    status = exc.http_status
    code = f" ({exc.code})" if exc.code else ""
    if isinstance(exc, stripe.APIConnectionError):
        return StripeUnavailable("cannot reach Stripe (connection error or timeout after retries)")
    if isinstance(exc, stripe.AuthenticationError):
        return StripeAuthFailed(f"Stripe refused the API key (HTTP {status}){code}")
    if isinstance(exc, stripe.PermissionError):
        return StripeAuthFailed(f"the API key may not read this resource (HTTP {status}){code}")
    if isinstance(exc, stripe.RateLimitError):
        return StripeUnavailable(f"rate limited (HTTP {status}){code}")
    if (status is not None and status >= 500) or (isinstance(exc, stripe.APIError) and status is None):
        return StripeUnavailable(f"Stripe answered HTTP {status}{code} after retries")
    if status == 404:
        return StripeNotFound(f"not found (HTTP 404){code}: {exc.user_message or ''}".rstrip(": "))
    return StripeRefused(f"Stripe refused the request (HTTP {status}){code}: {exc.user_message or ''}".rstrip(": "))


def _segment(object_id: str) -> str:
    """An object id as one URL path segment (ids come from webhooks and config, not only Stripe)."""
    return quote(object_id, safe="")
