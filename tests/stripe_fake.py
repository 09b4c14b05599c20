"""A fake of Stripe's read API (v1 subscriptions, customers, invoices) on 127.0.0.1 for tests and
the MRR benchmark. It holds mutable in-memory dicts of objects keyed by id, answers list and retrieve
requests the way Stripe does (newest first, `limit`/`starting_after`/`has_more`, `status` filter,
`created[...]` ranges, `expand[]`), checks the Bearer key, records every request and can be told to
fail or slow down.

Expansion: objects are stored fully expanded (Discount objects with `source.coupon`, prices with
`tiers`). An answer without `expand[]=discounts` / `items.data.discounts` carries discount ids instead,
and without `items.data.price.tiers` a price has no `tiers` key, as real Stripe does. An expansion
the fake does not know is refused with 400, as Stripe refuses a property that cannot be expanded.

Faults: `fail(status, times)` makes the next `times` requests answer `status` (429 and 5xx with
Stripe's error body; `should_retry` adds `Stripe-Should-Retry`), `failing` fails every request until
reset, `delay` slows every answer. Faults apply before the key is checked."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.stripe_generate import customer_for, generate_subscriptions

API_KEY = "sk_test_fake_postroom"
_EXPAND_KEY = re.compile(r"^expand\[\d*\]$")
_CREATED_KEY = re.compile(r"^created\[(gt|gte|lt|lte)\]$")
SUBSCRIPTION_EXPANSIONS = frozenset({"discounts", "items.data.discounts", "items.data.price.tiers"})  # retrieve
_ENDED = frozenset({"canceled", "incomplete_expired"})


def data_root() -> Path:
    """The shared test data folder: $POSTROOM_TEST_DATA, or ../shared/data beside the repository."""
    root = os.environ.get("POSTROOM_TEST_DATA")
    return Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "data"


def fixture_folder() -> Path:
    return data_root() / "stripe" / "realistic" / "subscriptions"


def read_fixture_subscriptions(folder: Path | None = None) -> list[dict[str, Any]]:
    """The realistic subscription fixtures, sorted by file name (A_seats ... O_tiered_graduated)."""
    folder = folder or fixture_folder()
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


@dataclass(frozen=True)
class Seen:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]  # as sent: "expand[0]", "created[gte]", ...
    authorization: str | None

    @property
    def expand(self) -> list[str]:
        return [value for key, value in self.query.items() if _EXPAND_KEY.match(key)]


@dataclass(frozen=True)
class Fault:
    status: int
    should_retry: bool | None = None  # sets Stripe-Should-Retry: true/false when not None
    delay: float = 0.0


class StripeError(Exception):
    """Answered as Stripe's error JSON: `{"error": {"type", "message", "code"?, "param"?}}`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.body = status, {"type": type_, "message": message}
        if code:
            self.body["code"] = code
        if param:
            self.body["param"] = param


def _fault_error(status: int) -> StripeError:
    if status == 429:
        return StripeError(429, "Request rate limit exceeded. Learn more about rate limits here "
                           "https://stripe.com/docs/rate-limits.", code="rate_limit")  # fmt: skip
    if status >= 500:
        return StripeError(status, "An unknown error occurred", type_="api_error")
    return StripeError(status, f"Injected failure {status}")


@dataclass
class _Collection:
    """Objects of one kind, keyed by id, with their newest-first order computed when it is stale."""

    name: str
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    _order: list[str] = field(default_factory=list)
    _position: dict[str, int] = field(default_factory=dict)
    _stale: bool = True

    def put(self, obj: dict[str, Any]) -> None:
        if obj["id"] not in self.objects:
            self._stale = True
        self.objects[obj["id"]] = obj

    def remove(self, object_id: str) -> None:
        self.objects.pop(object_id, None)
        self._stale = True

    def touch(self) -> None:
        """Re-sort before the next listing (after changing `created` of a stored object in place)."""
        self._stale = True

    def ordered(self) -> tuple[list[str], dict[str, int]]:
        if self._stale or len(self._order) != len(self.objects):
            keyed = sorted(self.objects.values(), key=lambda o: (o.get("created", 0), o["id"]), reverse=True)
            self._order = [o["id"] for o in keyed]
            self._position = {object_id: i for i, object_id in enumerate(self._order)}
            self._stale = False
        return self._order, self._position


class FakeStripe:
    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.url = ""  # http://127.0.0.1:PORT, the reader's api_base
        self._customers = _Collection("customer")
        self._subscriptions = _Collection("subscription")
        self._invoices = _Collection("invoice")
        self.requests: list[Seen] = []
        self.faults: deque[Fault] = deque()
        self.failing: Fault | None = None  # fail every request with this until set back to None
        self.delay = 0.0  # seconds before every answer

    # --- state ---------------------------------------------------------------------------------

    @property
    def customers(self) -> dict[str, dict[str, Any]]:
        return self._customers.objects

    @property
    def subscriptions(self) -> dict[str, dict[str, Any]]:
        return self._subscriptions.objects

    @property
    def invoices(self) -> dict[str, dict[str, Any]]:
        return self._invoices.objects

    def put_subscription(self, subscription: dict[str, Any]) -> None:
        """Add or replace a subscription (fully expanded); synthesize its customer if unknown."""
        self._subscriptions.put(subscription)
        customer_id = subscription.get("customer")
        if isinstance(customer_id, str) and customer_id not in self.customers:
            self._customers.put(customer_for(customer_id, subscription.get("created", 0)))

    def put_customer(self, customer: dict[str, Any]) -> None:
        self._customers.put(customer)

    def put_invoice(self, invoice: dict[str, Any]) -> None:
        self._invoices.put(invoice)

    def remove(self, object_id: str) -> None:
        for collection in (self._subscriptions, self._customers, self._invoices):
            collection.remove(object_id)

    def touch(self) -> None:
        """Call after changing `created` of stored objects in place."""
        for collection in (self._subscriptions, self._customers, self._invoices):
            collection.touch()

    def load_fixtures(self, folder: Path | None = None) -> list[dict[str, Any]]:
        """Load the 15 realistic subscriptions (deep copies), their customers and the tax-inclusive
        invoice; returns the subscriptions as read from the files."""
        subscriptions = read_fixture_subscriptions(folder)
        for subscription in subscriptions:
            self.put_subscription(copy.deepcopy(subscription))
        invoice = (folder or fixture_folder()).parent / "invoice_N_tax_inclusive.json"
        if invoice.is_file():
            self.put_invoice(json.loads(invoice.read_text()))
        return subscriptions

    def add_generated(self, n: int, seed: int = 0) -> None:
        """Add `n` generated subscriptions (see `tests.stripe_generate`) and their customers."""
        customers, subscriptions = generate_subscriptions(n, seed)
        for customer in customers:
            self._customers.put(customer)
        for subscription in subscriptions:
            self._subscriptions.put(subscription)

    # --- faults --------------------------------------------------------------------------------

    @staticmethod
    def fault(status: int, *, should_retry: bool | None = None, delay: float = 0.0) -> Fault:
        """For `failing`: `fake.failing = FakeStripe.fault(500)`."""
        return Fault(status, should_retry, delay)

    def fail(self, status: int, times: int = 1, *, should_retry: bool | None = None, delay: float = 0.0) -> None:
        self.faults.extend(Fault(status, should_retry, delay) for _ in range(times))

    # --- HTTP ----------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path, dict(request.query),
                                  request.headers.get("Authorization")))  # fmt: skip
        fault = self.faults.popleft() if self.faults else self.failing
        delay = self.delay + (fault.delay if fault else 0.0)
        if delay:
            await asyncio.sleep(delay)
        headers = {"Request-Id": f"req_fake{len(self.requests)}"}
        try:
            if fault is not None:
                if fault.should_retry is not None:
                    headers["Stripe-Should-Retry"] = "true" if fault.should_retry else "false"
                raise _fault_error(fault.status)
            self._authenticate(request)
            body = await handler(request)
        except StripeError as exc:
            return web.json_response({"error": exc.body}, status=exc.status, headers=headers)
        return web.Response(body=json.dumps(body).encode(), content_type="application/json", headers=headers)

    def _authenticate(self, request: web.Request) -> None:
        given = request.headers.get("Authorization", "")
        if given != f"Bearer {self.api_key}":
            key = given.removeprefix("Bearer ")
            shown = f"{key[:8]}{'*' * 12}{key[-4:]}" if len(key) > 12 else key
            raise StripeError(401, f"Invalid API Key provided: {shown}")

    def _list(self, collection: _Collection, request: web.Request, keep: Any = None) -> dict[str, Any]:
        query = request.query
        try:
            limit = int(query.get("limit", "10"))
        except ValueError:
            raise StripeError(400, "Invalid integer: limit", param="limit") from None
        if not 1 <= limit <= 100:
            raise StripeError(400, "This value must be between 1 and 100.", param="limit")
        order, position = collection.ordered()
        start = 0
        after = query.get("starting_after")
        if after is not None:
            if after not in position:
                raise StripeError(400, f"No such {collection.name}: '{after}'", code="resource_missing",
                                  param="starting_after")  # fmt: skip
            start = position[after] + 1
        bounds = {m.group(1): int(v) for k, v in query.items() if (m := _CREATED_KEY.match(k))}
        page: list[dict[str, Any]] = []
        has_more = False
        for object_id in _from(order, start):
            obj = collection.objects[object_id]
            if keep is not None and not keep(obj):
                continue
            if not _created_within(obj.get("created", 0), bounds):
                continue
            if len(page) == limit:
                has_more = True
                break
            page.append(obj)
        return {"object": "list", "data": page, "has_more": has_more, "url": f"/v1/{collection.name}s"}

    async def _list_subscriptions(self, request: web.Request) -> dict[str, Any]:
        expand = _expansions(request, "data.", SUBSCRIPTION_EXPANSIONS)
        status = request.query.get("status")
        customer = request.query.get("customer")

        def keep(sub: dict[str, Any]) -> bool:
            if customer is not None and sub.get("customer") != customer:
                return False
            if status is None:
                return bool(sub.get("status") != "canceled")
            if status == "all":
                return True
            if status == "ended":
                return sub.get("status") in _ENDED
            return bool(sub.get("status") == status)

        answer = self._list(self._subscriptions, request, keep)
        answer["data"] = [_shaped_subscription(sub, expand) for sub in answer["data"]]
        return answer

    async def _get_subscription(self, request: web.Request) -> dict[str, Any]:
        expand = _expansions(request, "", SUBSCRIPTION_EXPANSIONS)
        return _shaped_subscription(self._find(self._subscriptions, request), expand)

    async def _list_customers(self, request: web.Request) -> dict[str, Any]:
        _expansions(request, "data.", frozenset())
        return self._list(self._customers, request, lambda c: not c.get("deleted"))

    async def _get_customer(self, request: web.Request) -> dict[str, Any]:
        _expansions(request, "", frozenset())
        customer = self._find(self._customers, request)
        if customer.get("deleted"):
            return {"id": customer["id"], "object": "customer", "deleted": True}
        return customer

    async def _list_invoices(self, request: web.Request) -> dict[str, Any]:
        _expansions(request, "data.", frozenset())
        return self._list(self._invoices, request)

    async def _get_invoice(self, request: web.Request) -> dict[str, Any]:
        _expansions(request, "", frozenset())
        return self._find(self._invoices, request)

    def _coupons(self) -> _Collection:
        found = _Collection("coupon")
        for coupon in coupons_of(self.subscriptions.values()).values():
            found.put(coupon)
        return found

    async def _list_coupons(self, request: web.Request) -> dict[str, Any]:
        _expansions(request, "data.", frozenset())
        return self._list(self._coupons(), request)

    async def _get_coupon(self, request: web.Request) -> dict[str, Any]:
        _expansions(request, "", frozenset())
        return self._find(self._coupons(), request)

    async def _get_price(self, request: web.Request) -> dict[str, Any]:
        """A price of the stored subscriptions; its tiers only with `expand[]=tiers`."""
        expand = _expansions(request, "", frozenset({"tiers"}))
        wanted = request.match_info["id"]
        for sub in self.subscriptions.values():
            for item in (sub.get("items") or {}).get("data") or []:
                price = item.get("price")
                if isinstance(price, dict) and price.get("id") == wanted:
                    return price if "tiers" in expand else {k: v for k, v in price.items() if k != "tiers"}
        raise StripeError(404, f"No such price: '{wanted}'", code="resource_missing", param="id")

    def _find(self, collection: _Collection, request: web.Request) -> dict[str, Any]:
        object_id = request.match_info["id"]
        try:
            return collection.objects[object_id]
        except KeyError:
            raise StripeError(404, f"No such {collection.name}: '{object_id}'", code="resource_missing",
                              param="id") from None  # fmt: skip

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for path, handler in [
            ("/v1/subscriptions", self._list_subscriptions),
            ("/v1/subscriptions/{id}", self._get_subscription),
            ("/v1/customers", self._list_customers),
            ("/v1/customers/{id}", self._get_customer),
            ("/v1/invoices", self._list_invoices),
            ("/v1/invoices/{id}", self._get_invoice),
            ("/v1/coupons", self._list_coupons),
            ("/v1/coupons/{id}", self._get_coupon),
            ("/v1/prices/{id}", self._get_price),
        ]:
            app.router.add_get(path, handler)  # type: ignore[arg-type]  # the middleware serialises
        return app


def _from(order: list[str], start: int) -> Iterable[str]:
    return (order[i] for i in range(start, len(order)))


def _created_within(created: int, bounds: dict[str, int]) -> bool:
    tests = {"gt": created.__gt__, "gte": created.__ge__, "lt": created.__lt__, "lte": created.__le__}
    return all(tests[op](bound) for op, bound in bounds.items())


MAX_EXPAND_DEPTH = 4  # "Expansions have a maximum depth of four levels" (Stripe's API reference)


def _expansions(request: web.Request, prefix: str, known: frozenset[str]) -> frozenset[str]:
    """The `expand[]` paths of a request without `prefix` ("data." for lists); 400 for others,
    and for paths deeper than Stripe allows."""
    paths = set()
    for key, value in request.query.items():
        if not _EXPAND_KEY.match(key):
            continue
        if len(value.split(".")) > MAX_EXPAND_DEPTH:
            raise StripeError(400, f"You cannot expand more than {MAX_EXPAND_DEPTH} levels of a property "
                                   f"({value}).", param="expand")  # fmt: skip
        path = value.removeprefix(prefix) if value.startswith(prefix) else None
        if path is None or path not in known:
            raise StripeError(400, f"This property cannot be expanded ({value}).", param="expand")
        paths.add(path)
    return frozenset(paths)


def _shaped_subscription(sub: dict[str, Any], expand: frozenset[str]) -> dict[str, Any]:
    """The stored (fully expanded) subscription as Stripe answers it for these expansions: ids
    where not expanded, and a discount's coupon always as its id (API 2025-09-30.clover and later)."""
    shaped = dict(sub)
    discounts = sub.get("discounts", [])
    shaped["discounts"] = _coupon_ids(discounts) if "discounts" in expand else _discount_ids(discounts)
    items = sub.get("items")
    if isinstance(items, dict):
        data = []
        for item in items.get("data", []):
            item = dict(item)
            item_discounts = item.get("discounts", [])
            item["discounts"] = (_coupon_ids(item_discounts) if "items.data.discounts" in expand
                                 else _discount_ids(item_discounts))  # fmt: skip
            price = item.get("price")
            if "items.data.price.tiers" not in expand and isinstance(price, dict) and "tiers" in price:
                item["price"] = {k: v for k, v in price.items() if k != "tiers"}
            data.append(item)
        shaped["items"] = {**items, "data": data}
    return shaped


def _discount_ids(discounts: list[Any]) -> list[Any]:
    return [d["id"] if isinstance(d, dict) else d for d in discounts]


def _coupon_ids(discounts: list[Any]) -> list[Any]:
    """Expanded discounts as Stripe sends them since 2025-09-30.clover: the coupon inside as its id."""
    shaped = []
    for discount in discounts:
        if isinstance(discount, dict) and isinstance(discount.get("source"), dict):
            coupon = discount["source"].get("coupon")
            if isinstance(coupon, dict):
                discount = {**discount, "source": {**discount["source"], "coupon": coupon["id"]}}
        shaped.append(discount)
    return shaped


def coupons_of(subscriptions: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every coupon the subscriptions' discounts carry, by id."""
    found: dict[str, dict[str, Any]] = {}
    for sub in subscriptions:
        discounts = list(sub.get("discounts") or [])
        for item in (sub.get("items") or {}).get("data") or []:
            discounts += item.get("discounts") or []
        for discount in discounts:
            coupon = (discount.get("source") or {}).get("coupon") if isinstance(discount, dict) else None
            if isinstance(coupon, dict):
                found[coupon["id"]] = coupon
    return found


@contextlib.asynccontextmanager
async def fake_stripe(api_key: str = API_KEY) -> AsyncIterator[FakeStripe]:
    """The fake on a free port of 127.0.0.1; `fake.url` is the reader's `api_base`."""
    fake = FakeStripe(api_key)
    runner = web.AppRunner(fake.application(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
