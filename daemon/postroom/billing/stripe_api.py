"""Reading Stripe's billing state (subscriptions, customers, invoices) through the official SDK.

`StripeReader` owns one `stripe.StripeClient` and one `requests.Session`; every call runs the
synchronous SDK in a worker thread, so the event loop only waits, and every answer comes back as a
plain JSON-like dict (no `StripeObject`). Decimal-encoded fields (`unit_amount_decimal`,
`flat_amount_decimal`, `amount_decimal`, `quantity_decimal`) come back as **fixed-point strings**,
exactly as Stripe's JSON and webhook payloads carry them (the SDK turns them into `Decimal`; we turn
them back with `format(d, "f")`, never `str(d)`, which would give `"1E-7"`). Callers do
`Decimal(value)`.

Retries: the SDK retries connection errors, 409 and 5xx with its own backoff (`max_network_retries`),
but retries a 429 only when Stripe sends `Stripe-Should-Retry: true` (lock timeouts), so plain rate
limiting is retried here with exponential backoff (`rate_limit_retries`). A listing interrupted by a
429 resumes after the last object it yielded. SDK errors are translated at this boundary: callers see
only `StripeApiError` and its subclasses.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import requests
import stripe

from postroom.core.errors import PostroomError

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_API_BASE = "https://api.stripe.com"
SUBSCRIPTION_EXPAND = ["discounts", "items.data.discounts", "items.data.price.tiers"]
_MAX_RATE_LIMIT_DELAY = 30.0


class StripeApiError(PostroomError):
    """Stripe did not give us what we asked for; `reason` is safe to log (never the API key)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class StripeUnavailable(StripeApiError):
    """Stripe could not be reached, or kept answering 5xx / 429 after every retry: try later."""


class StripeAuthFailed(StripeApiError):
    """Stripe refused the API key (401) or the key lacks permission to read (403): fix the config."""


class StripeNotFound(StripeApiError):
    """The object asked for does not exist in this Stripe account (404)."""


class StripeRefused(StripeApiError):
    """Stripe refused the request itself (400 and other 4xx): a defect on our side, not transient."""


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

    # --- subscriptions -------------------------------------------------------------------------

    def subscriptions(self) -> AsyncIterator[dict[str, Any]]:
        """Every subscription of the account, any status, with discounts and price tiers expanded."""
        service = self._client.v1.subscriptions
        expand = [f"data.{path}" for path in SUBSCRIPTION_EXPAND]

        def page(after: str | None) -> Iterator[Any]:
            if after is None:
                first = service.list({"status": "all", "limit": self._page_size, "expand": expand})
            else:
                first = service.list(
                    {"status": "all", "limit": self._page_size, "expand": expand, "starting_after": after}
                )
            return iter(first.auto_paging_iter())

        return self._listing(page)

    async def subscription(self, subscription_id: str) -> dict[str, Any]:
        """One subscription, with discounts and price tiers expanded."""
        service = self._client.v1.subscriptions
        return await self._retrieve(lambda: service.retrieve(subscription_id, {"expand": SUBSCRIPTION_EXPAND}))

    # --- customers -----------------------------------------------------------------------------

    def customers(self) -> AsyncIterator[dict[str, Any]]:
        """Every customer of the account (Stripe's listing leaves deleted customers out).

        `customer.discount` is always a full Discount object (it is not expandable)."""
        service = self._client.v1.customers

        def page(after: str | None) -> Iterator[Any]:
            if after is None:
                first = service.list({"limit": self._page_size})
            else:
                first = service.list({"limit": self._page_size, "starting_after": after})
            return iter(first.auto_paging_iter())

        return self._listing(page)

    async def customer(self, customer_id: str) -> dict[str, Any]:
        """One customer; a deleted one comes back as `{"id", "object": "customer", "deleted": True}`."""
        service = self._client.v1.customers
        return await self._retrieve(lambda: service.retrieve(customer_id))

    # --- invoices ------------------------------------------------------------------------------

    def invoices(self, since: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every invoice, or those created at or after `since` (unix seconds), newest first."""
        service = self._client.v1.invoices

        def page(after: str | None) -> Iterator[Any]:
            params: stripe.params.InvoiceListParams = {"limit": self._page_size}
            if since is not None:
                params["created"] = {"gte": since}
            if after is not None:
                params["starting_after"] = after
            return iter(service.list(params).auto_paging_iter())

        return self._listing(page)

    async def invoice(self, invoice_id: str) -> dict[str, Any]:
        service = self._client.v1.invoices
        return await self._retrieve(lambda: service.retrieve(invoice_id))

    # --- the machinery -------------------------------------------------------------------------

    async def _retrieve(self, fetch: Callable[[], stripe.StripeObject]) -> dict[str, Any]:
        return await self._call(lambda: plain(fetch()))

    async def _listing(self, page: Callable[[str | None], Iterator[Any]]) -> AsyncIterator[dict[str, Any]]:
        """Drain an auto-paging iterator a page at a time in a worker thread (one thread hop per
        page, not per object). After a 429 outlasting the SDK, restart after the last yielded id."""
        last_id: str | None = None
        pages: Iterator[Any] | None = None
        rate_limited = 0
        while True:
            try:
                if pages is None:
                    after = last_id
                    pages = await self._in_thread(lambda: page(after))
                pending = pages
                chunk = await self._in_thread(lambda: [plain(obj) for obj in itertools.islice(pending, self._page_size)])
            except stripe.RateLimitError as exc:
                rate_limited += 1
                await self._wait_out_rate_limit(rate_limited, exc)
                pages = None
                continue
            rate_limited = 0
            if not chunk:
                return
            for obj in chunk:
                yield obj
            last_id = str(chunk[-1]["id"])

    async def _call(self, fn: Callable[[], T]) -> T:
        rate_limited = 0
        while True:
            try:
                return await self._in_thread(fn)
            except stripe.RateLimitError as exc:
                rate_limited += 1
                await self._wait_out_rate_limit(rate_limited, exc)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except stripe.RateLimitError:
            raise  # retried by the caller, which knows where to resume
        except stripe.StripeError as exc:
            raise translate_error(exc) from exc

    async def _wait_out_rate_limit(self, attempt: int, exc: stripe.RateLimitError) -> None:
        if attempt > self._rate_limit_retries:
            raise StripeUnavailable(f"rate limited (429) after {attempt - 1} retries") from exc
        # Full exponential backoff with jitter in [d/2, d], as the SDK does for 5xx.
        delay = min(self._rate_limit_backoff * 2 ** (attempt - 1), _MAX_RATE_LIMIT_DELAY)
        delay *= 0.5 * (1 + random.random())
        logger.warning("stripe rate limited (429); retry %d in %.2fs", attempt, delay)
        await asyncio.sleep(delay)


def translate_error(exc: stripe.StripeError) -> StripeApiError:
    """An SDK error as ours. The reason carries Stripe's error type/code, not its message, for
    401/403 (which may echo part of the key)."""
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
    if status is not None and status >= 500 or isinstance(exc, stripe.APIError) and status is None:
        return StripeUnavailable(f"Stripe answered HTTP {status}{code} after retries")
    if status == 404:
        return StripeNotFound(f"not found (HTTP 404){code}: {exc.user_message or ''}".rstrip(": "))
    return StripeRefused(f"Stripe refused the request (HTTP {status}){code}: {exc.user_message or ''}".rstrip(": "))


def plain(obj: stripe.StripeObject) -> dict[str, Any]:
    """A `StripeObject` as plain dicts and lists, Decimals as fixed-point strings."""
    return _undecimal(obj.to_dict(recursive=True))  # type: ignore[no-any-return]


def _undecimal(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _undecimal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_undecimal(item) for item in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    return value
